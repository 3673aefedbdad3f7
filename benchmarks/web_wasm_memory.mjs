// Does a bundle load in onnxruntime-web's WASM memory? (a 3B int4 bundle is about 1.9 GB: near WASM's 4 GB address space)
//
//   node benchmarks/web_wasm_memory.mjs BUNDLE              onnxruntime-web's WASM backend in Node
//   node benchmarks/web_wasm_memory.mjs --browser URL       the demo page in headless Chromium; first run
//                                                           `pgexport serve BUNDLE --port 8000` (URL http://127.0.0.1:8000/)
//
// What limits it: onnxruntime-web's WASM build is wasm32, so its heap is at most 4 GiB, and each graph's bytes
// (with its external data) are handed over as JS ArrayBuffers and copied into that heap; the browser adds its own
// per-tab limits. In Node this loads the graphs one at a time as the runtime does (sha256 checked first), prints
// the process's memory after each, then answers one prompt on a grey image. Each step prints one JSON line, and an
// error is printed as the step's result rather than thrown, so the output says how far it got.

import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// the runtime's dependencies live in runtimes/web/node_modules (npm ci there)
const fromRuntime = createRequire(new URL('../runtimes/web/package.json', import.meta.url));

const mb = (n) => Math.round(n / 2 ** 20);
const memory = () => {
  const m = process.memoryUsage();
  return { rss_mb: mb(m.rss), array_buffers_mb: mb(m.arrayBuffers) };
};
const say = (step, fields) => console.log(JSON.stringify({ step, ...fields }));

async function inNode(bundle) {
  const ort = await (await import('../runtimes/web/src/node.js')).onnxruntime('wasm');
  const { nodeFiles, sha256Hex } = await import('../runtimes/web/src/files_node.js');
  const { loadManifest } = await import('../runtimes/web/src/manifest.js');
  const { createSession } = await import('../runtimes/web/src/session.js');
  const { PaliGemma } = await import('../runtimes/web/src/pipeline.js');
  const files = await nodeFiles(bundle);
  delete files.path; // hand the WASM backend bytes, as in a browser
  let t = performance.now();
  const m = await loadManifest(files);
  const bytes = Object.values(m.graphs).flatMap((g) => [g.file, ...g.dataFiles]);
  const total = (await Promise.all(bytes.map((f) => files.size(f)))).reduce((a, b) => a + b, 0);
  say('manifest and sha256', { graph_bytes_mb: mb(total), ms: Math.round(performance.now() - t), ...memory() });
  for (const name of Object.keys(m.graphs)) { // each graph alone first: which one fails, if one does
    t = performance.now();
    try {
      const s = await createSession(ort, files, m.graphs[name], { executionProviders: ['wasm'] });
      say(`load ${name}`, { ok: true, ms: Math.round(performance.now() - t), ...memory() });
      await s.release();
    } catch (e) {
      say(`load ${name}`, { ok: false, error: String(e.message).split('\n')[0], ...memory() });
      return;
    }
  }
  t = performance.now();
  let pg;
  try {
    pg = await PaliGemma.load({ ort, files, sessionOptions: { executionProviders: ['wasm'] }, kvMode: 'handoff', verify: false,
      sha256: sha256Hex });
    say('load all graphs together', { ok: true, ms: Math.round(performance.now() - t), ...memory() });
  } catch (e) {
    say('load all graphs together', { ok: false, error: String(e.message).split('\n')[0], ...memory() });
    return;
  }
  const [h, w] = m.preprocessing.size;
  const image = { width: w, height: h, data: new Uint8Array(w * h * 4).fill(128) };
  t = performance.now();
  try {
    const [r] = await pg.generate([image], ['caption en'], { maxNewTokens: 8 });
    say('generate 8 tokens', { ok: true, ms: Math.round(performance.now() - t), text: r.text, ...memory() });
  } catch (e) {
    say('generate 8 tokens', { ok: false, error: String(e.message).split('\n')[0], ...memory() });
  }
}

async function inBrowser(url) {
  const pw = await import(pathToFileURL(fromRuntime.resolve('playwright-core')).href);
  const { chromium } = pw.chromium ? pw : pw.default; // a CommonJS module seen from ESM
  const profile = mkdtempSync(path.join(tmpdir(), 'pgexport-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.PGEXPORT_CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await ctx.newPage();
    const t = performance.now();
    await page.goto(url);
    await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout: 30 * 60_000 });
    say('browser: load the bundle', {
      status: await page.textContent('#status'), load: await page.evaluate(() => window.pgLoad ?? null),
      seconds: Math.round((performance.now() - t) / 1000),
    });
  } catch (e) {
    say('browser: load the bundle', { ok: false, error: String(e.message).split('\n')[0] });
  } finally {
    await ctx.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

const args = process.argv.slice(2);
if (args[0] === '--browser' && args[1]) await inBrowser(args[1]);
else if (args.length === 1) await inNode(args[0]);
else console.error('usage: web_wasm_memory.mjs BUNDLE | --browser URL');
