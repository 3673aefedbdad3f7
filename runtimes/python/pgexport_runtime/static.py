"""The "static" KV-cache layout: decoder graphs of fixed shape, as accelerators and onnxruntime's mobile builds
want them.

A static bundle has one decode graph (graphs.decoder: one token) and a prefill graph per prefix length the
manifest lists (graphs.prefill[n]); each takes batch 1, an attention mask and a cache buffer of the manifest's
max_len, and returns one row of logits. A token's cache row is its position - 1, so the graph can tell from
position_ids where to write and whom to attend. The callers of decoder.py speak the other layouts' language
(left-padded batches, a mask as long as what is cached); `run` translates, one batch row at a time, each row on
its own slice of the cache (kv_cache.py):
- this call's real tokens move to the front, followed by padding up to the graph's length. The padding is written
  to the cache but masked, and the answer's tokens overwrite it;
- the mask covers the whole buffer: 1 on the rows that hold this row's tokens;
- logits_index is re-pointed at the moved tokens.
"""

from __future__ import annotations

import numpy as np

from pgexport_runtime import io_names as io
from pgexport_runtime.errors import UserError
from pgexport_runtime.geometry import Geometry


def prefill_length(lengths: tuple[int, ...], tokens: int) -> int:
    """The shortest prefill graph that takes `tokens` tokens."""
    for n in lengths:
        if n >= tokens:
            return n
    raise UserError(f"the prompt takes {tokens} tokens and this static bundle's longest prefill graph "
                    f"{lengths[-1]}: shorten the prompt, or build with longer --prefill-lengths")


def run(graphs, g: Geometry, cache, ids, image_embeds, attention_mask, token_type_ids, logits_index) -> np.ndarray:
    """decoder.run for the static layout. -> logits [B, K, V]."""
    batch, seq = ids.shape
    total = attention_mask.shape[1]
    mask = attention_mask.astype(bool)
    cached = mask[:, :total - seq].sum(axis=1)  # each row's tokens already in the cache
    new = mask[:, total - seq:]
    width = 1 if seq == 1 else prefill_length(graphs.prefill_lengths, int(new.sum(axis=1).max()))
    if int(cached.max()) + width > graphs.max_len:  # past it, onnxruntime fails inside the graph (rotary tables)
        raise UserError(f"this static bundle's KV cache holds {graphs.max_len} tokens (--max-len at build): "
                        f"{int(cached.max())} cached + {width} new do not fit")
    session = graphs.decoder if width == 1 else graphs.prefill.get(width, graphs.decoder)
    if width == 1:  # decode: its tokens are never <image> slots (token type 1); the graph takes one zero row
        image_embeds = np.zeros((batch, 1, g.text_hidden), dtype=np.float32)
    rank = np.cumsum(new, axis=1) - 1  # a real token's index after the move
    keep = np.where(np.take_along_axis(new, logits_index, 1), np.take_along_axis(rank, logits_index, 1), 0)
    rows = np.arange(graphs.max_len)
    logits = np.empty((batch, logits_index.shape[1], g.vocab_size), dtype=np.float32)
    for b in range(batch):
        k = int(new[b].sum())
        row_ids = np.full((1, width), g.pad_token_id, dtype=np.int64)
        row_ids[0, :k] = ids[b, new[b]]
        types = np.zeros((1, width), dtype=np.int64)
        types[0, :k] = token_type_ids[b, new[b]]
        positions = (cached[b] + 1 + np.arange(width, dtype=np.int64))[None]
        feeds = {io.INPUT_IDS: row_ids, io.DECODER_IMAGE_EMBEDS: image_embeds[b:b + 1],
                 io.ATTENTION_MASK: (rows < cached[b] + k).astype(np.int64)[None], io.POSITION_IDS: positions,
                 io.TOKEN_TYPE_IDS: types, io.LOGITS_INDEX: keep[b:b + 1]}
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        cache.bind_row(binding, b)
        out = logits[b:b + 1]
        binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        session.run_with_iobinding(binding)
    cache.advance(seq)
    return logits
