"""The decoder graph's three uses — prefill, decode, score — and the only place its inputs are built.

One decoder graph serves all three (io_names.py). Its inputs, and the PaliGemma quirks they carry:
- position_ids are 1-based and skip left padding: the first real token is position 1 (transformers computes
  them as cumsum(attention_mask), and a padded slot gets 1, which nobody attends to);
- token_type_ids say prefix (0: image + <bos> + prompt + "\\n", attended bidirectionally) or suffix (1: the
  answer, causal), as transformers' PaliGemma reads them;
- logits_index picks the positions that go through the lm_head, so a prefill of thousands of tokens
  computes one row of vocabulary logits, not thousands;
- the cache (kv_cache.py) is the caller's: bound by pointer, read and written in place.
Generation, parity, the accuracy gate and bench all call these functions; none builds decoder inputs itself.
"""

from __future__ import annotations

import numpy as np

from pgexport_runtime import io_names as io
from pgexport_runtime import heap, static
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_cache import KVCache


def run(graphs, g: Geometry, cache: KVCache, ids, image_embeds, attention_mask, position_ids, token_type_ids,
        logits_index, session=None) -> np.ndarray:
    """One decoder call through IO binding: the cache is read and written in place. -> logits [B, K, V].
    `session`: a graph with the decoder's inputs and outputs to run instead (the int8 prefill graph)."""
    if graphs.kv_layout.fixed_shape:  # fixed-shape graphs: position_ids follow from the cache rows
        return static.run(graphs, g, cache, ids, image_embeds, attention_mask, token_type_ids, logits_index)
    session = session or graphs.decoder
    binding = session.io_binding()
    for name, value in ((io.INPUT_IDS, ids), (io.DECODER_IMAGE_EMBEDS, image_embeds),
                        (io.ATTENTION_MASK, attention_mask), (io.POSITION_IDS, position_ids),
                        (io.TOKEN_TYPE_IDS, token_type_ids), (io.LOGITS_INDEX, logits_index)):
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    cache.bind(binding, ids.shape[1])
    logits = np.empty((ids.shape[0], logits_index.shape[1], g.vocab_size), dtype=np.float32)
    binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
    session.run_with_iobinding(binding)
    cache.advance(ids.shape[1])
    return logits


def prefill(graphs, g: Geometry, cache: KVCache, input_ids: np.ndarray, image_embeds: np.ndarray,
            attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None,
            logits_index: np.ndarray | None = None) -> np.ndarray:
    """Left-padded prefixes [B, S] in one call, on the int8 prefill graph where SessionConfig.prefill chose it;
    logits at the last position unless logits_index says otherwise.

    token_type_ids default to all 0 (the whole prefix bidirectional); a 1 marks a causal suffix fed in the same
    call (teacher forcing, as in training)."""
    batch, seq = input_ids.shape
    positions = np.maximum(np.cumsum(attention_mask, axis=1), 1).astype(np.int64)
    types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    keep = np.full((batch, 1), seq - 1, dtype=np.int64) if logits_index is None else logits_index
    logits = run(graphs, g, cache, input_ids, image_embeds, attention_mask, positions, types, keep,
                 graphs.int8_prefill)
    if graphs.trim_heap:  # the prefill's activations are the largest buffers of a generation
        heap.release()
    return logits


def decode(graphs, g: Geometry, cache: KVCache, tokens: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """One new token per row ([B]), causal over everything cached. attention_mask covers the cache and the new
    token ([B, cached + 1]); the new token's position is its row's count of real tokens. -> logits [B, 1, V]."""
    batch = tokens.shape[0]
    positions = attention_mask.sum(axis=1, keepdims=True).astype(np.int64)
    no_image = np.zeros((batch, 0, g.text_hidden), dtype=np.float32)
    return run(graphs, g, cache, tokens.reshape(batch, 1).astype(np.int64), no_image, attention_mask, positions,
               np.ones((batch, 1), dtype=np.int64), np.zeros((batch, 1), dtype=np.int64))


def score(graphs, g: Geometry, prefix_ids: np.ndarray, image_embeds: np.ndarray, continuation: list[int]) -> np.ndarray:
    """Teacher forcing: log-probabilities [L, V] of each next token along a given continuation of one prefix
    ([1, S]), in ONE call: prefix (type 0) + continuation[:-1] (type 1, causal), logits at the prefix's last
    position and at every fed continuation position."""
    seq, n = prefix_ids.shape[1], len(continuation)
    if n == 0:
        return np.zeros((0, g.vocab_size), dtype=np.float32)
    if graphs.kv_layout.fixed_shape:  # graphs of one logits row: the prefix, then one fed token at a time
        cache = graphs.kv_cache(g, 1, seq + n)
        mask = np.ones_like(prefix_ids)
        rows = [prefill(graphs, g, cache, prefix_ids, image_embeds, mask)[0, -1]]
        for token in continuation[:-1]:
            mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
            rows.append(decode(graphs, g, cache, np.array([token], dtype=np.int64), mask)[0, -1])
        return log_softmax(np.stack(rows))
    ids = np.concatenate([prefix_ids, np.asarray(continuation[:-1], dtype=np.int64)[None]], axis=1)
    types = np.concatenate([np.zeros_like(prefix_ids), np.ones((1, n - 1), dtype=np.int64)], axis=1)
    keep = np.arange(seq - 1, seq - 1 + n, dtype=np.int64)[None]
    logits = prefill(graphs, g, graphs.kv_cache(g, 1, ids.shape[1]), ids, image_embeds,
                     np.ones_like(ids), types, keep)
    return log_softmax(logits[0])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)
