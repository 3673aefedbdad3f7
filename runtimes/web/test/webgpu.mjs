// The WebGPU test, run by tests/test_web.py: headless Chromium (Debian's, driven by playwright-core) on a software
// WebGPU adapter (SwiftShader, through Vulkan) opens the runtime's page served by `pgexport serve` with
// ?device=webgpu, then with ?device=wasm, and answers the same prompts about the same images on both (greedy). On
// WebGPU it watches every decoder call: where each past and present tensor lives, whether each past is the very
// tensor the previous call returned as its present, how many bytes the call reads back from the GPU, and whether
// every present is disposed once the generation ends. Prints one JSON line for the caller to judge.
//   node test/webgpu.mjs URL CASES.json
// CASES.json: [{image: a file, prompt, max_new_tokens}]. With no cases only the loads with ?device=webgpu and
// ?device=auto are reported (a bundle the WebGPU path refuses).

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, casesFile] = process.argv.slice(2);
const cases = JSON.parse(readFileSync(casesFile, 'utf8'));
const CHROMIUM = process.env.PGEXPORT_CHROMIUM || '/usr/bin/chromium';
// WebGPU on SwiftShader's Vulkan, without a display; navigator.gpu needs a secure context (the page on 127.0.0.1)
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader', '--disable-vulkan-surface'];
const profile = mkdtempSync(path.join(tmpdir(), 'pgexport-chromium-'));
const out = { failures: [] };
let browser = null;

/** The page with ?device=...: {backend, error (the page's status line when it did not load), browserAdapter (the
 *  adapter navigator.gpu gives), ortAdapter (the one onnxruntime-web took)}: each {vendor, architecture} or null. */
async function load(page, device) {
  const t0 = performance.now();
  await page.goto(`${url}/?device=${device}`);
  await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout: 120_000 });
  return { seconds: (performance.now() - t0) / 1000, ...await page.evaluate(async () => {
    const { ort } = await import('/src/browser.js');
    const describe = (a) => (a?.info ? { vendor: a.info.vendor, architecture: a.info.architecture } : null);
    const status = document.getElementById('status').textContent;
    return { backend: window.pg?.backend ?? null, error: window.pg ? null : status,
      browserAdapter: describe(await navigator.gpu?.requestAdapter()), ortAdapter: describe(ort.env.webgpu?.adapter) };
  }) };
}

/** Every case answered on the loaded page: {tokens, steps (WebGPU: one per decoder call), disposed}. */
function answerAll(page, watch) {
  const items = cases.map((c) => ({ bytes: [...readFileSync(c.image)], prompt: c.prompt, n: c.max_new_tokens }));
  return page.evaluate(async ({ items, watch }) => {
    const { decodeImage } = await import('/src/images_web.js');
    const pg = window.pg;
    const session = pg.graphs.decoder;
    const run = session.run.bind(session);
    let calls = [];
    let readBytes = 0;
    if (watch) {
      const mapAsync = GPUBuffer.prototype.mapAsync;
      GPUBuffer.prototype.mapAsync = function (mode, ...rest) { // every read back from the GPU goes through here
        if (mode & GPUMapMode.READ) readBytes += this.size;
        return mapAsync.call(this, mode, ...rest);
      };
      session.run = async (feeds, fetches) => {
        const pastNames = Object.keys(feeds).filter((n) => n.startsWith('past_key_values.'));
        const previous = calls.at(-1)?.presents ?? null;
        const past = pastNames.map((n) => ({ location: feeds[n].location,
          fromPrevious: previous?.get(n.replace('past_key_values.', 'present.')) === feeds[n] }));
        readBytes = 0;
        const result = await run(feeds, fetches);
        const presents = new Map(Object.entries(result).filter(([n]) => n.startsWith('present.')));
        calls.push({ past, presents, present: [...new Set([...presents.values()].map((t) => t.location))], readBytes,
          logitsBytes: result.logits.data.byteLength });
        return result;
      };
    }
    const answers = [];
    for (const { bytes, prompt, n } of items) {
      calls = [];
      const [row] = await pg.generate([await decodeImage(new Uint8Array(bytes))], [prompt], { maxNewTokens: n });
      const disposed = calls.every((c) => [...c.presents.values()].every((t) => t.location === 'none'));
      answers.push({ tokens: row.tokens, disposed, steps: calls.map((c) => ({
        past: [...new Set(c.past.map((p) => p.location))], pastFromPrevious: c.past.every((p) => p.fromPrevious),
        present: c.present, readBytes: c.readBytes, logitsBytes: c.logitsBytes })) });
    }
    return answers;
  }, { items, watch });
}

try {
  // a fresh profile in a temporary directory, removed afterwards
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', ...WEBGPU_ARGS, '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  for (const device of cases.length ? ['webgpu', 'wasm'] : ['webgpu', 'auto']) {
    out[device] = await load(page, device);
    if (!out[device].backend || !cases.length) continue; // the page says why in out[device].error
    const t0 = performance.now();
    out[device].items = await answerAll(page, device === 'webgpu');
    out[device].answerSeconds = (performance.now() - t0) / 1000;
  }
  if (errors.length) out.failures.push(`page errors: ${errors.join('; ')}`);
} catch (e) {
  out.failures.push(String(e.message).split('\n')[0]);
} finally {
  await browser?.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
process.exitCode = out.failures.length ? 1 : 0;
