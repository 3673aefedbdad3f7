// The browser entry point: a bundle served over HTTP, onnxruntime-web (WebGPU when available, else WASM with
// SIMD; threads only when the page is cross-origin isolated, since they need SharedArrayBuffer).

import * as ort from 'onnxruntime-web';
import { sha256Hex, webFiles } from './files_web.js';
import { DEFAULT_MAX_BYTES } from './image_cache.js';
import { PaliGemma } from './pipeline.js';

export { decodeImage } from './images_web.js';
export { PaliGemma } from './pipeline.js';
export { answerToJson } from './typed_answers.js';
export { sampling } from './sampling.js';
export { ort };

/**
 * @param {string} bundleUrl where manifest.json and the bundle's files are served
 * @param {{wasmPaths?: string, device?: 'auto'|'webgpu'|'wasm', imageCacheBytes?: number}} [options]
 *   imageCacheBytes bounds the image-feature cache (image_cache.js; default 64 MiB, 0 turns it off)
 */
export async function loadBundle(bundleUrl, { wasmPaths, device = 'auto', imageCacheBytes = DEFAULT_MAX_BYTES } = {}) {
  if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const gpu = device === 'webgpu' || (device === 'auto' && (await hasWebGpu()));
  const sessionOptions = { executionProviders: gpu ? ['webgpu', 'wasm'] : ['wasm'] };
  const pg = await PaliGemma.load({ ort, files: webFiles(bundleUrl), sessionOptions, kvMode: 'handoff', gpu,
    imageCacheBytes, sha256: sha256Hex });
  pg.backend = gpu ? 'webgpu' : `wasm (${ort.env.wasm.numThreads} thread${ort.env.wasm.numThreads > 1 ? 's' : ''})`;
  return pg;
}

async function hasWebGpu() {
  try {
    return Boolean(await navigator.gpu?.requestAdapter());
  } catch {
    return false;
  }
}
