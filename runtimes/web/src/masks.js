// Segmentation masks: 16 <seg> codes -> 64x64 mask (the bundle's mask_decoder graph) -> full-image mask
// (pgexport_runtime/masks.py). Pasting follows big_vision's evaluator: the raw 64x64 output (nominally in [-1, 1],
// not clipped) is resized to the box with PIL's bilinear filter on float pixels (resample.js) and thresholded at 0.
// The box is rounded to whole pixels first, half to even as Python's round().

import * as io from './io_names.js';
import { resize } from './resample.js';

export const MASK_SIZE = 64;

/** The bundle's mask decoder: codes (arrays of 16) -> Float32Array masks [N, 64, 64]. */
export class MaskDecoder {
  constructor(ort, session) {
    this.ort = ort;
    this.session = session;
  }

  async decode(codes) {
    if (!codes.length) return new Float32Array(0);
    const flat = BigInt64Array.from(codes.flat(), BigInt);
    const out = await this.session.run({ [io.SEG_CODES]: new this.ort.Tensor('int64', flat, [codes.length, 16]) });
    return /** @type {Float32Array} */ (out[io.MASKS].data);
  }
}

export function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** (x0, y0, x1, y1) float pixels -> whole, clamped, ordered pixel edges. */
export function boxPixels(box, width, height) {
  const [x0, y0, x1, y1] = box.map(roundHalfEven);
  const cx = (v) => Math.min(Math.max(v, 0), width);
  const cy = (v) => Math.min(Math.max(v, 0), height);
  const xs = [cx(x0), cx(x1)].sort((a, b) => a - b);
  const ys = [cy(y0), cy(y1)].sort((a, b) => a - b);
  return [xs[0], ys[0], xs[1], ys[1]];
}

/** A 64x64 decoder output and its box -> Uint8Array mask [height * width] (1 = object). */
export function pasteMask(mask64, box, width, height) {
  const [x0, y0, x1, y1] = boxPixels(box, width, height);
  const out = new Uint8Array(width * height);
  if (x1 - x0 < 1 || y1 - y0 < 1) return out;
  const w = x1 - x0;
  const resized = resize(Float32Array.from(mask64), MASK_SIZE, MASK_SIZE, 1, w, y1 - y0, 'bilinear');
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) out[y * width + x] = resized[(y - y0) * w + (x - x0)] > 0 ? 1 : 0;
  }
  return out;
}

/** COCO's uncompressed RLE: column-major runs, starting with a (possibly empty) run of zeros. */
export function maskToRle(mask, width, height) {
  const counts = [];
  let current = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const v = mask[y * width + x];
      if (v !== current) {
        counts.push(run);
        current = v;
        run = 0;
      }
      run += 1;
    }
  }
  counts.push(run);
  return { size: [height, width], counts };
}
