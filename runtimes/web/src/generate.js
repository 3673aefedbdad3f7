// The generation loop: vision -> projector -> prefill -> decode, one screen long (pgexport_runtime/generate.py).

import * as decoder from './decoder.js';
import * as io from './io_names.js';
import { KVCache } from './kv_cache.js';
import { Rng, choose } from './sampling.js';

/** pixel_values {data, dims} -> image embeddings, a flat Float32Array [B, N_img, D_text]. */
export async function encodeImage(ort, graphs, pixelValues) {
  // One image at a time, as in the Python runtime: a graph quantized with dynamic int8 (the int4 recipe's vision
  // encoder) takes one activation scale over its whole input, so images encoded together would change each
  // other's embeddings.
  const [batch, ...rest] = pixelValues.dims;
  const per = pixelValues.data.length / batch;
  const parts = [];
  for (let b = 0; b < batch; b++) {
    const pixels = new ort.Tensor('float32', pixelValues.data.slice(b * per, (b + 1) * per), [1, ...rest]);
    const features = (await graphs.vision.run({ [io.PIXEL_VALUES]: pixels }))[io.VISION_FEATURES];
    const embeds = (await graphs.projector.run({ [io.VISION_FEATURES]: features }))[io.IMAGE_EMBEDS];
    features.dispose();
    parts.push(/** @type {Float32Array} */ (embeds.data));
  }
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  parts.forEach((p, b) => out.set(p, b * p.length));
  return out;
}

/**
 * Greedy or sampled continuation of left-padded prefixes. Returns the new tokens of each row.
 * @param {{ids: BigInt64Array, mask: BigInt64Array, batch: number, width: number}} prefix from PromptTokenizer.batch
 * @param {(row: number, token: number) => void} [onToken] streaming: called for every token as it is chosen
 * @param {(row: number, tokens: number[]) => boolean} [shouldStop] a stop string has appeared
 */
export async function generate(ort, graphs, g, imageEmbeds, prefix, maxNewTokens, sampling, eosId, shouldStop, onToken) {
  const { batch, width } = prefix;
  const rng = new Rng(sampling.seed);
  const cache = new KVCache(ort, g, batch, width + maxNewTokens, graphs.kvMode, graphs.kvLayout);
  try {
    // 1. Prefill: the whole prefix (image + bos + prompt + "\n") in one call, bidirectional, padding masked;
    //    logits at the last position only.
    let logits = await decoder.prefill(ort, graphs.int8Prefill ?? graphs.decoder, g, cache, prefix.ids, imageEmbeds,
      prefix.mask, batch);
    const out = Array.from({ length: batch }, () => []);
    const done = new Array(batch).fill(false);
    let mask = prefix.mask;
    for (let step = 0; step < maxNewTokens; step++) {
      // 2. Choose the next token of each row; finished rows keep emitting pad, which nobody reads.
      const next = choose(logits.data, batch, sampling, rng).map((t, b) => (done[b] ? g.pad_token_id : t));
      for (let b = 0; b < batch; b++) {
        if (done[b]) continue;
        out[b].push(next[b]);
        onToken?.(b, next[b]);
        if (next[b] === eosId || shouldStop?.(b, out[b])) done[b] = true;
      }
      if (done.every(Boolean) || step === maxNewTokens - 1) break;
      // 3. Decode: one token per row, causal over everything cached (the mask grows by one column).
      mask = appendColumn(mask, batch);
      logits = await decoder.decode(ort, graphs.decoder, g, cache, BigInt64Array.from(next, BigInt), mask, batch);
    }
    return out;
  } finally {
    cache.release();
  }
}

function appendColumn(mask, batch) {
  const w = mask.length / batch;
  const out = new BigInt64Array(batch * (w + 1));
  for (let b = 0; b < batch; b++) {
    out.set(mask.subarray(b * w, (b + 1) * w), b * (w + 1));
    out[b * (w + 1) + w] = 1n;
  }
  return out;
}
