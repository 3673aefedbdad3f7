// The Node half of benchmarks/phone_memory.py: load a bundle with the JavaScript runtime (onnxruntime-node), answer
// one prompt, and print {load_s, peak_after_load_mb, peak_mb} as one JSON line (peaks: the process's max RSS).
//   node benchmarks/phone_memory_node.mjs BUNDLE IMAGE NEW_TOKENS THREADS

import { decodeImage, loadBundle } from '../runtimes/web/src/node.js';

const [bundle, image, newTokens, threads] = process.argv.slice(2);
const peakMb = () => (process.resourceUsage().maxRSS * 1024) / 1e6;
const start = performance.now();
const pg = await loadBundle(bundle, { threads: Number(threads) });
const loadS = (performance.now() - start) / 1000;
const afterLoad = peakMb();
await pg.generate([await decodeImage(image)], ['caption en'], { maxNewTokens: Number(newTokens) });
console.log(JSON.stringify({ load_s: loadS, peak_after_load_mb: afterLoad, peak_mb: peakMb() }));
