// The Node entry point: a bundle directory, onnxruntime-node (native CPU) or onnxruntime-web (WASM) in Node.

import { readFileSync } from 'node:fs';

import { nodeFiles, sha256Hex } from './files_node.js';
import { DEFAULT_MAX_BYTES } from './image_cache.js';
import { PaliGemma } from './pipeline.js';
import { UserError } from './errors.js';

export { decodeImage } from './images_node.js';
export { PREFILL_CHOICES, PaliGemma } from './pipeline.js';
export { answerToJson } from './typed_answers.js';
export { sampling } from './sampling.js';
export { BundleError, LimitError, UserError } from './errors.js';

/**
 * @param {string} bundle a bundle directory
 * @param {{backend?: 'node'|'wasm', threads?: number, verify?: boolean, imageCacheBytes?: number, request?: object,
 *   prefill?: 'auto'|'int8'|'decoder'}} [options]
 *   imageCacheBytes bounds the image-feature cache (image_cache.js; default 64 MiB, 0 turns it off); request, a
 *   request known before loading, is checked against the model before its graphs load (PaliGemma.load); prefill,
 *   the graph a bundle built with --int8-prefill prefills on: auto takes decoder_int8 where the CPU has int8 matrix
 *   units (node backend only), int8 always, decoder never
 */
export async function loadBundle(bundle, { backend = 'node', threads = 0, verify = true, imageCacheBytes = DEFAULT_MAX_BYTES,
  request = null, prefill = 'auto' } = {}) {
  const common = { imageCacheBytes, sha256: sha256Hex, request, prefill };
  if (backend === 'node') {
    const ort = await onnxruntime('node');
    // KleidiAI off (ARM64 only): the answers of onnxruntime's own kernels, which the x86 build's gate measured
    // (pgexport_runtime/session.py SessionConfig.kleidiai). x64quantprecision, on x86 without VNNI only: the int8
    // weights of dynamic int8 graphs become uint8 at load, so that no product saturates (pgexport_runtime/cpu.py)
    const extra = { mlas: { disable_kleidiai: '1' }, ...(int8WeightsSaturate() ? { session: { x64quantprecision: '1' } } : {}) };
    const sessionOptions = { extra, ...(threads ? { intraOpNumThreads: threads } : {}) };
    return PaliGemma.load({ ort, files: await nodeFiles(bundle), sessionOptions, verify, int8Units: int8MatrixUnits(),
      ...common });
  }
  if (backend === 'wasm') {
    if (prefill === 'int8') {
      throw new UserError("prefill 'int8' runs on onnxruntime-node's CPU kernels; the wasm backend has no int8 matrix units");
    }
    const ort = await onnxruntime('wasm');
    if (threads) ort.env.wasm.numThreads = threads;
    const files = await nodeFiles(bundle);
    delete files.path; // the WASM backend reads no files itself: hand it the bytes
    return PaliGemma.load({ ort, files, sessionOptions: { executionProviders: ['wasm'] }, kvMode: 'handoff', verify, ...common });
  }
  throw new UserError(`unknown backend ${backend} (use node or wasm)`);
}

/**
 * True unless this CPU is known to multiply uint8 by int8 exactly in onnxruntime's kernels: an x86 CPU without VNNI
 * (or whose flags cannot be read) saturates such products; other architectures do not.
 * @returns {boolean}
 */
export function int8WeightsSaturate(arch = process.arch, cpuinfo = readCpuinfo()) {
  if (arch !== 'x64' && arch !== 'ia32') return false;
  const line = cpuinfo?.split('\n').find((l) => l.split(':')[0].trim() === 'flags');
  if (!line) return true;
  const flags = new Set(line.split(':')[1].trim().split(/\s+/));
  return !(flags.has('avx512_vnni') || flags.has('avx_vnni'));
}

/**
 * True on an x86 CPU whose int8 matrix units (AMX) onnxruntime's int8 GEMM runs on: there a bundle's decoder_int8
 * graph prefills several times faster than its 4-bit decoder (pgexport_runtime/cpu.py int8_matrix_units).
 * @returns {boolean}
 */
export function int8MatrixUnits(arch = process.arch, cpuinfo = readCpuinfo()) {
  if (arch !== 'x64' && arch !== 'ia32') return false;
  const line = cpuinfo?.split('\n').find((l) => l.split(':')[0].trim() === 'flags');
  return Boolean(line) && line.split(':')[1].trim().split(/\s+/).includes('amx_int8');
}

function readCpuinfo() {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return null;
  }
}

/** onnxruntime-node ('node') or onnxruntime-web ('wasm'), resolved from this package's dependencies. */
export function onnxruntime(backend) {
  if (backend === 'node') {
    // onnxruntime-node's telemetry is off: it reads the whole command line (the prompts) when the first session is
    // created, and on Linux it overflows the 8 MB stack (a segfault, nothing on stderr) once that is over ~29 KB.
    // It is read once per process, before the first session.
    process.env.ORT_DISABLE_TELEMETRY = '1';
    return import('onnxruntime-node');
  }
  if (backend === 'wasm') return import('onnxruntime-web');
  throw new UserError(`unknown backend ${backend} (use node or wasm)`);
}
