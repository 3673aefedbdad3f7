// Pillow's resampling (libImaging/Resample.c), re-implemented so that a resize here gives PIL's pixels exactly.
//
// Separable, horizontal pass first, then vertical. Per axis, each output pixel xx has a window of input pixels
// around center = (xx + 0.5) * scale; when shrinking (scale > 1) the filter is stretched by the scale (the
// antialias rule: support = filter support * max(scale, 1), taps evaluated at distance / max(scale, 1)), and the
// taps are normalised to sum 1. 8-bit images use the taps as 22-bit fixed point with a uint8 intermediate
// (rounding and clipping after each pass, as PIL); float images ("F", the mask decoder's output) accumulate in
// double and store float32. An axis whose size does not change is not resampled at all, as in PIL.

const PRECISION_BITS = 32 - 8 - 2;

// Keys' cubic with a = -0.5 (PIL's BICUBIC), support 2; and the triangle (BILINEAR), support 1.
const FILTERS = {
  bicubic: {
    support: 2,
    weight(x) {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  bilinear: { support: 1, weight: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0) },
};

/** Per output index: the first input index, the tap count and the normalised taps (precompute_coeffs). */
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const taps = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0); // C's (int) truncates
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let sum = 0;
    for (let x = 0; x < n; x++) {
      const w = filter.weight((x + xmin - center + 0.5) / filterscale);
      taps[xx * ksize + x] = w;
      sum += w;
    }
    if (sum !== 0) for (let x = 0; x < n; x++) taps[xx * ksize + x] /= sum;
    start[xx] = xmin;
    count[xx] = n;
  }
  return { ksize, start, count, taps };
}

/** normalize_coeffs_8bpc: taps as fixed point, rounded half away from zero. */
function fixedPoint(taps) {
  const out = new Int32Array(taps.length);
  const one = 1 << PRECISION_BITS;
  for (let i = 0; i < taps.length; i++) out[i] = Math.trunc(taps[i] < 0 ? -0.5 + taps[i] * one : 0.5 + taps[i] * one);
  return out;
}

function clip8(acc) {
  const v = acc >> PRECISION_BITS; // |acc| < 2**31: PIL's INT32 accumulator
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Resize an interleaved image (Uint8Array/Uint8ClampedArray: 8-bit; Float32Array: PIL mode "F").
 * @returns {Uint8Array|Float32Array} outWidth * outHeight * channels values
 */
export function resize(src, width, height, channels, outWidth, outHeight, filterName) {
  const filter = FILTERS[filterName];
  if (!filter) throw new Error(`unknown resampling filter ${filterName}`);
  const eightBit = !(src instanceof Float32Array);
  const make = (n) => (eightBit ? new Uint8Array(n) : new Float32Array(n));
  let img = src;
  let w = width;
  if (outWidth !== width) { // horizontal pass: rows are lines, taps step by one pixel
    const c = coefficients(width, outWidth, filter);
    const out = make(outWidth * height * channels);
    horizontal(img, out, height, w, outWidth, channels, c, eightBit);
    img = out;
    w = outWidth;
  }
  if (outHeight !== height) { // vertical pass: columns, taps step by one row
    const c = coefficients(height, outHeight, filter);
    const out = make(w * outHeight * channels);
    vertical(img, out, w, outHeight, channels, c, eightBit);
    img = out;
  }
  return img === src ? (eightBit ? Uint8Array.from(src) : Float32Array.from(src)) : img;
}

function horizontal(src, dst, rows, inW, outW, channels, c, eightBit) {
  const taps = eightBit ? fixedPoint(c.taps) : c.taps;
  const half = eightBit ? 1 << (PRECISION_BITS - 1) : 0;
  for (let y = 0; y < rows; y++) {
    const rowIn = y * inW * channels;
    const rowOut = y * outW * channels;
    for (let xx = 0; xx < outW; xx++) {
      const k = xx * c.ksize;
      const first = rowIn + c.start[xx] * channels;
      for (let ch = 0; ch < channels; ch++) {
        let acc = half;
        for (let x = 0; x < c.count[xx]; x++) acc += src[first + x * channels + ch] * taps[k + x];
        dst[rowOut + xx * channels + ch] = eightBit ? clip8(acc) : acc;
      }
    }
  }
}

function vertical(src, dst, w, outH, channels, c, eightBit) {
  const taps = eightBit ? fixedPoint(c.taps) : c.taps;
  const half = eightBit ? 1 << (PRECISION_BITS - 1) : 0;
  const row = w * channels;
  for (let yy = 0; yy < outH; yy++) {
    const k = yy * c.ksize;
    const first = c.start[yy] * row;
    for (let i = 0; i < row; i++) {
      let acc = half;
      for (let y = 0; y < c.count[yy]; y++) acc += src[first + y * row + i] * taps[k + y];
      dst[yy * row + i] = eightBit ? clip8(acc) : acc;
    }
  }
}
