// The JavaScript runtime's half of benchmarks/web_bench.py: time to first token and decode speed of one image and
// prompt, on onnxruntime-node or onnxruntime-web's WASM backend in Node. Prints one JSON line.
//   node benchmarks/web_bench.mjs BUNDLE IMAGE PROMPT MAX_NEW_TOKENS REPEATS BACKEND THREADS

import { decodeImage, loadBundle } from '../runtimes/web/src/node.js';

const [bundle, imagePath, prompt, maxNew, repeats, backend, threads] = process.argv.slice(2);
const t0 = performance.now();
const pg = await loadBundle(bundle, { backend, threads: Number(threads) });
const loadMs = performance.now() - t0;
const runs = [];
for (let i = 0; i < Number(repeats) + 1; i++) { // the first run warms up and is not counted
  const start = performance.now();
  const image = await decodeImage(imagePath); // as a user would: decoding is part of the time to first token
  let first = null;
  const [r] = await pg.generate([image], [prompt], {
    maxNewTokens: Number(maxNew), onToken: () => { first ??= performance.now(); },
  });
  const end = performance.now();
  if (i > 0) runs.push({ ttft_ms: first - start, decode_tok_s: ((r.tokens.length - 1) * 1000) / (end - first), tokens: r.tokens });
}
console.log(JSON.stringify({ load_ms: loadMs, runs }));
await pg.release();
