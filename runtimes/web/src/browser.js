// The browser entry point: a bundle served over HTTP, onnxruntime-web (WebGPU when available, else WASM with
// SIMD; threads only when the page is cross-origin isolated, since they need SharedArrayBuffer).

import * as ort from 'onnxruntime-web';
import { UserError } from './errors.js';
import { repr } from './escape.js';
import { sha256Hex, webFiles } from './files_web.js';
import { DEFAULT_MAX_BYTES } from './image_cache.js';
import { loadManifest } from './manifest.js';
import { PaliGemma } from './pipeline.js';

export { decodeImage } from './images_web.js';
export { PaliGemma } from './pipeline.js';
export { answerToJson } from './typed_answers.js';
export { sampling } from './sampling.js';
export { ort };

const DEVICES = ['auto', 'webgpu', 'wasm'];

/**
 * @param {string} bundleUrl where manifest.json and the bundle's files are served
 * @param {{wasmPaths?: string, device?: 'auto'|'webgpu'|'wasm', imageCacheBytes?: number}} [options]
 *   device: 'auto' takes WebGPU where the browser gives an adapter and the bundle's KV-cache layout runs there, else
 *   WASM; 'webgpu' fails without an adapter, and on a layout WebGPU cannot take.
 *   imageCacheBytes bounds the image-feature cache (image_cache.js; default 64 MiB, 0 turns it off)
 */
export async function loadBundle(bundleUrl, { wasmPaths, device = 'auto', imageCacheBytes = DEFAULT_MAX_BYTES } = {}) {
  if (!DEVICES.includes(device)) {
    throw new UserError(`device must be one of ${DEVICES.join(', ')}, not ${repr(device)}`);
  }
  if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const files = webFiles(bundleUrl);
  let gpu = device !== 'wasm' && (await hasWebGpu());
  if (device === 'webgpu' && !gpu) throw new UserError('WebGPU is not available: this browser gives no WebGPU adapter');
  // 'auto' runs a KV-cache layout that WebGPU cannot take (written in place: pipeline.js) on WASM; 'webgpu' refuses it
  if (gpu && device === 'auto' && (await loadManifest(files, { verify: false })).kvLayout.inPlace) gpu = false;
  // WebGPU alone: with 'wasm' listed too, onnxruntime-web falls back to it, with only a console warning, when WebGPU
  // fails to start. Nodes onnxruntime keeps off the GPU (shape computations, for one) run on its CPU provider.
  const sessionOptions = { executionProviders: gpu ? ['webgpu'] : ['wasm'] };
  const pg = await PaliGemma.load({ ort, files, sessionOptions, kvMode: 'handoff', gpu,
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
