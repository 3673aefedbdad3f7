// Next-token choice: greedy, or sampling with temperature, top-k and top-p, applied in that order
// (pgexport_runtime/sampling.py). The random numbers come from a seeded xoshiro256** generator, not numpy's
// PCG64: the same seed draws the same tokens in every JS run, but not the tokens Python draws. Greedy choices
// are the same as Python's (the first index of the largest logit, as numpy's argmax).

import * as limits from './limits.js';

/** @typedef {{doSample: boolean, temperature: number, topK: number, topP: number, seed: number|bigint|null}} Sampling */

/** @returns {Readonly<Sampling>} */
export function sampling({ doSample = false, temperature = 1.0, topK = 0, topP = 1.0, seed = null } = {}) {
  const s = { doSample, temperature, topK, topP, seed };
  limits.checkSampling(s);
  return Object.freeze(s);
}

const MASK64 = (1n << 64n) - 1n;
const rotl = (x, k) => ((x << k) | (x >> (64n - k))) & MASK64;

/** xoshiro256** seeded through splitmix64 (its authors' recommendation); `next()` is a float in [0, 1). */
export class Rng {
  constructor(seed) {
    let x = BigInt(seed ?? Math.floor(Math.random() * 2 ** 53)) & MASK64;
    this.s = [0n, 0n, 0n, 0n].map(() => {
      x = (x + 0x9e3779b97f4a7c15n) & MASK64;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
      return z ^ (z >> 31n);
    });
  }

  next() {
    const s = this.s;
    const result = (rotl((s[1] * 5n) & MASK64, 7n) * 9n) & MASK64;
    const t = (s[1] << 17n) & MASK64;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45n);
    return Number(result >> 11n) / 2 ** 53; // the top 53 bits
  }
}

/** logits [B, V] (flat) -> token ids [B]. */
export function choose(logits, batch, s, rng) {
  const vocab = logits.length / batch;
  const out = [];
  for (let b = 0; b < batch; b++) {
    const row = logits.subarray(b * vocab, (b + 1) * vocab);
    out.push(s.doSample ? sampleRow(row, s, rng) : argmax(row));
  }
  return out;
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function sampleRow(row, s, rng) {
  const x = Float64Array.from(row, (v) => v / s.temperature);
  if (s.topK) { // keep the k largest (and any tied with the k-th)
    const kth = Float64Array.from(x).sort()[x.length - s.topK];
    for (let i = 0; i < x.length; i++) if (x[i] < kth) x[i] = -Infinity;
  }
  let max = -Infinity;
  for (const v of x) if (v > max) max = v; // no Math.max(...x): a 257k vocabulary overflows the call stack
  let p = x.map((v) => Math.exp(v - max));
  let sum = p.reduce((a, v) => a + v, 0);
  p = p.map((v) => v / sum);
  if (s.topP < 1) { // the smallest set whose mass reaches top_p; the most likely token is always kept
    const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]);
    let before = 0;
    for (const i of order) {
      const pi = p[i];
      if (before >= s.topP) p[i] = 0;
      before += pi;
    }
    sum = p.reduce((a, v) => a + v, 0);
    p = p.map((v) => v / sum);
  }
  const u = rng.next();
  let acc = 0;
  for (let i = 0; i < p.length; i++) {
    acc += p[i];
    if (u < acc) return i;
  }
  return p.findLastIndex((v) => v > 0);
}
