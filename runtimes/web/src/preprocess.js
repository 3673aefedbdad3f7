// Image preprocessing, what the Python runtime (and so transformers' SiglipImageProcessor with PIL) does:
// alpha composited onto white (PIL's alpha_composite arithmetic) -> bicubic resize to the model's size with PIL's
// kernel (resample.js; canvas resampling is not the same) -> uint8 * rescale_factor in float64, rounded to
// float32 -> (x - mean) / std in float32 -> [3, H, W]. Decoding is images_node.js / images_web.js; both hand over
// straight (not premultiplied) RGBA.

import * as typed_json from './typed_json.js';
import { BundleError } from './errors.js';
import { resize } from './resample.js';

/** @typedef {{width: number, height: number, data: Uint8Array|Uint8ClampedArray}} RgbaImage  straight RGBA */

const RESAMPLE = ['bicubic', 'bilinear'];

/** The manifest's `preprocessing` section. */
export function preprocessingFromDict(d) {
  const w = 'preprocessing';
  const size = typed_json.integers(d, 'size', w, 1, 8192);
  if (size.length !== 2) throw new BundleError(`${w}.size must be [height, width]`);
  return Object.freeze({
    size: [size[0], size[1]], // height, width
    resample: typed_json.text(d, 'resample', w, { optional: true, choices: RESAMPLE }) ?? 'bicubic',
    rescaleFactor: typed_json.number(d, 'rescale_factor', w, 0, 1),
    mean: typed_json.numbers(d, 'mean', w, -1e3, 1e3, 3),
    std: typed_json.numbers(d, 'std', w, 0, 1e3, 3),
  });
}

/**
 * RGBA -> RGB over white, as PIL's Image.alpha_composite(white, rgba).convert("RGB") (AlphaComposite.c: integer
 * arithmetic with 7 extra bits; an opaque pixel comes back unchanged, a transparent one white).
 * @returns {Uint8Array} width * height * 3
 */
export function toRgb(img) {
  const n = img.width * img.height;
  const out = new Uint8Array(n * 3);
  const src = img.data;
  const div255 = (a) => ((a >> 8) + a) >> 8; // SHIFTFORDIV255
  for (let i = 0; i < n; i++) {
    const a = src[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const s = src[i * 4 + c];
      if (a === 0) {
        out[i * 3 + c] = 255;
        continue;
      }
      const outA255 = a * 255 + 255 * (255 - a);
      const coef1 = Math.floor((a * 255 * 255 * 128) / outA255);
      const coef2 = 255 * 128 - coef1;
      out[i * 3 + c] = div255(s * coef1 + 255 * coef2 + 0x4000) >> 7;
    }
  }
  return out;
}

/**
 * Decoded images -> pixel_values [B, 3, H, W] float32 (a flat Float32Array and its dims).
 * @param {RgbaImage[]} images
 */
export function preprocess(images, p) {
  const [height, width] = p.size;
  const plane = height * width;
  const out = new Float32Array(images.length * 3 * plane);
  const mean = p.mean.map(Math.fround);
  const std = p.std.map(Math.fround);
  images.forEach((img, b) => {
    const rgb = resize(toRgb(img), img.width, img.height, 3, width, height, p.resample);
    for (let c = 0; c < 3; c++) {
      const base = (b * 3 + c) * plane;
      for (let i = 0; i < plane; i++) {
        // numpy: (uint8 as float64 * rescale) -> float32, then float32 (x - mean) / std, each op rounded to float32
        const x = Math.fround(rgb[i * 3 + c] * p.rescaleFactor);
        out[base + i] = Math.fround(Math.fround(x - mean[c]) / std[c]);
      }
    }
  });
  return { data: out, dims: [images.length, 3, height, width] };
}
