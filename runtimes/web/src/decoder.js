// The decoder graph's uses, prefill and decode, and the only place its inputs are built
// (pgexport_runtime/decoder.py). The PaliGemma quirks the inputs carry:
// - position_ids are 1-based and skip left padding: the first real token is position 1 (transformers computes
//   them as cumsum(attention_mask); a padded slot gets 1, which nobody attends to);
// - token_type_ids: 0 = prefix (image + <bos> + prompt + "\n", attended bidirectionally), 1 = suffix (causal);
// - logits_index picks the positions that go through the lm_head (one row per prefill, not thousands);
// - the KV cache (kv_cache.js) is the caller's.

import * as io from './io_names.js';

/** One decoder call. Inputs are flat typed arrays ([B, S] row-major). -> logits {data: Float32Array, dims: [B, K, V]} */
export async function run(ort, session, g, cache, { ids, imageEmbeds, imageTokens, mask, positions, types, keep }, batch) {
  const { Tensor } = ort;
  const seq = ids.length / batch;
  const feeds = {
    [io.INPUT_IDS]: new Tensor('int64', ids, [batch, seq]),
    [io.DECODER_IMAGE_EMBEDS]: new Tensor('float32', imageEmbeds, [batch, imageTokens, g.text_hidden]),
    [io.ATTENTION_MASK]: new Tensor('int64', mask, [batch, mask.length / batch]),
    [io.POSITION_IDS]: new Tensor('int64', positions, [batch, seq]),
    [io.TOKEN_TYPE_IDS]: new Tensor('int64', types, [batch, seq]),
    [io.LOGITS_INDEX]: new Tensor('int64', keep, [batch, keep.length / batch]),
  };
  const fetches = { [io.LOGITS]: null };
  cache.bind(feeds, fetches, seq);
  const out = await session.run(feeds, fetches);
  cache.advance(seq, out);
  const logits = out[io.LOGITS];
  return { data: /** @type {Float32Array} */ (logits.data), dims: logits.dims };
}

/** Left-padded prefixes [B, S] in one call, bidirectional over the prefix; logits at the last position. */
export function prefill(ort, session, g, cache, inputIds, imageEmbeds, attentionMask, batch) {
  const seq = inputIds.length / batch;
  const positions = new BigInt64Array(inputIds.length);
  for (let b = 0; b < batch; b++) {
    let count = 0n;
    for (let j = 0; j < seq; j++) {
      count += attentionMask[b * seq + j];
      positions[b * seq + j] = count > 1n ? count : 1n; // max(cumsum(mask), 1)
    }
  }
  return run(ort, session, g, cache, {
    ids: inputIds, imageEmbeds, imageTokens: imageEmbeds.length / (batch * g.text_hidden), mask: attentionMask,
    positions, types: new BigInt64Array(inputIds.length), keep: new BigInt64Array(batch).fill(BigInt(seq - 1)),
  }, batch);
}

/** One new token per row, causal over everything cached. attentionMask covers the cache and the new token
 *  ([B, cached + 1]); the new token's position is its row's count of real tokens. -> logits [B, 1, V] */
export function decode(ort, session, g, cache, tokens, attentionMask, batch) {
  const width = attentionMask.length / batch;
  const positions = new BigInt64Array(batch);
  for (let b = 0; b < batch; b++) {
    for (let j = 0; j < width; j++) positions[b] += attentionMask[b * width + j];
  }
  // image_embeds: one zero row per batch row, which no token reads (a decode step's tokens are suffix, token type
  // 1). Not an empty [B, 0, D]: onnxruntime-web's WebGPU kernels refuse zero-sized tensors (the graph's Pad).
  return run(ort, session, g, cache, {
    ids: tokens, imageEmbeds: new Float32Array(batch * g.text_hidden), imageTokens: 1, mask: attentionMask, positions,
    types: new BigInt64Array(batch).fill(1n), keep: new BigInt64Array(batch),
  }, batch);
}
