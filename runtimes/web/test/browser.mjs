// The browser test, run by tests/test_web.py: headless Chromium (Debian's, driven by playwright-core) opens the
// runtime's page served by `pgexport serve`, runs a caption and a detect prompt through the page's own form, and
// compares the answers with the Python runtime's; it also preprocesses the test images with the browser's own
// decoder. Prints one JSON line of results; exits non-zero on any mismatch.
//   node test/browser.mjs URL VECTORS_DIR SCREENSHOT.png [BUNDLE_KEY [TASKS]]
// BUNDLE_KEY is the served bundle's key in the vectors (fp32, int4); TASKS a comma-separated list (default
// caption,detect,segment). Writes SCREENSHOT-<task>.png for each task but caption.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

const [url, dir, screenshot, key = 'fp32', taskList = 'caption,detect,segment'] = process.argv.slice(2);
const v = JSON.parse(readFileSync(path.join(dir, 'vectors.json'), 'utf8'));
const CHROMIUM = process.env.PGEXPORT_CHROMIUM || '/usr/bin/chromium';
const profile = mkdtempSync(path.join(tmpdir(), 'pgexport-chromium-'));
const failures = [];
const out = {};
let browser = null;
try {
  // a fresh profile in a temporary directory, removed afterwards
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1100, height: 760 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url);
  await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout: 120_000 });
  out.load = await page.evaluate(() => window.pgLoad ?? document.getElementById('status').textContent);
  if (!out.load?.backend) throw new Error(`the page did not load the bundle: ${JSON.stringify(out.load)} ${errors.join('; ')}`);

  out.items = [];
  for (const task of taskList.split(',')) {
    const item = v.items.find((i) => i.task === task);
    await page.setInputFiles('#image', path.join(dir, item.image));
    await page.fill('#prompt', item.prompt);
    await page.fill('#max-new-tokens', String(item.max_new_tokens));
    await page.waitForSelector(`#view[data-image="${path.basename(item.image)}"]`); // decoded, not the previous one
    await page.click('#run');
    await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 120_000 });
    const got = await page.evaluate(() => window.lastAnswer ?? null);
    if (!got) throw new Error(`${item.id}: ${await page.textContent('#status')}`);
    const same = JSON.stringify(got.json.tokens) === JSON.stringify(item[key].tokens);
    const sameJson = JSON.stringify(got.json) === JSON.stringify(item[key]);
    if (task !== 'caption') await page.screenshot({ path: screenshot.replace(/\.png$/, `-${task}.png`), fullPage: true });
    const ref = item[key].tokens;
    const agree = got.json.tokens.filter((t, i) => t === ref[i]).length; // position-wise, over the longer list
    out.items.push({ bundle: key, id: item.id, prompt: item.prompt, text: got.json.text, tokens_identical: same,
      json_identical: sameJson, agree, of: Math.max(ref.length, got.json.tokens.length),
      objects: got.json.detections.length + got.json.segments.length, timings: got.timings });
    // fp32 must be identical; a quantized bundle's agreement is judged by the caller (tests/test_web.py)
    if (key !== 'fp32') continue;
    if (!same) failures.push(`${item.id}: tokens ${JSON.stringify(got.json.tokens)} != Python ${JSON.stringify(item[key].tokens)}`);
    else if (!sameJson) failures.push(`${item.id}: answer JSON differs from Python's`);
  }

  // preprocessing with the browser's own image decoders, against the Python runtime's pixel values
  out.preprocess = [];
  for (const img of v.images) {
    const bytes = [...readFileSync(path.join(dir, img.file))];
    const ref = readFileSync(path.join(dir, img.pixels));
    const refF32 = [...new Float32Array(ref.buffer.slice(ref.byteOffset, ref.byteOffset + ref.byteLength))];
    const max = await page.evaluate(async ({ bytes, refF32 }) => {
      const { decodeImage } = await import('/src/images_web.js');
      const { preprocess } = await import('/src/preprocess.js');
      const decoded = await decodeImage(new Uint8Array(bytes));
      const { data } = preprocess([decoded], window.pg.manifest.preprocessing);
      let m = 0;
      for (let i = 0; i < refF32.length; i++) m = Math.max(m, Math.abs(refF32[i] - data[i]));
      return data.length === refF32.length ? m : Infinity;
    }, { bytes, refF32 });
    out.preprocess.push({ file: img.file, max_abs_diff: max });
    // JPEG: the browser's decoder is its own (libjpeg-turbo with its own upsampling); only PNGs must be exact
    if (img.file.endsWith('.png') && !(max <= 1e-6)) failures.push(`${img.file}: browser pixel_values differ by ${max}`);
  }
  if (errors.length) failures.push(`page errors: ${errors.join('; ')}`);
} catch (e) {
  failures.push(String(e.message).split('\n')[0]);
} finally {
  await browser?.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify({ ...out, failures }));
process.exitCode = failures.length ? 1 : 0;
