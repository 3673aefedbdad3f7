"""The generation loop: vision -> projector -> prefill -> decode, one screen long."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from . import io_names as io
from .geometry import Geometry
from .kv_cache import KVCache
from .sampling import Sampling, choose


@dataclass
class Graphs:
    vision: ort.InferenceSession
    projector: ort.InferenceSession
    decoder: ort.InferenceSession
    device: str = "cpu"
    device_id: int = 0


def encode_image(graphs: Graphs, pixel_values: np.ndarray) -> np.ndarray:
    """pixel_values [B,3,H,W] -> image embeddings [B, N_img, D_text]."""
    (features,) = graphs.vision.run([io.VISION_FEATURES], {io.PIXEL_VALUES: pixel_values})
    (embeds,) = graphs.projector.run([io.IMAGE_EMBEDS], {io.VISION_FEATURES: features})
    return embeds


def decoder_step(graphs, g: Geometry, cache: KVCache, ids, image_embeds, attention_mask, position_ids,
                 token_type_ids, logits_index) -> np.ndarray:
    """One decoder call through IO binding: the cache is read and written in place. Returns logits."""
    binding = graphs.decoder.io_binding()
    for name, value in ((io.INPUT_IDS, ids), (io.DECODER_IMAGE_EMBEDS, image_embeds),
                        (io.ATTENTION_MASK, attention_mask), (io.POSITION_IDS, position_ids),
                        (io.TOKEN_TYPE_IDS, token_type_ids), (io.LOGITS_INDEX, logits_index)):
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    cache.bind(binding, ids.shape[1])
    logits = np.empty((ids.shape[0], logits_index.shape[1], g.vocab_size), dtype=np.float32)
    binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
    graphs.decoder.run_with_iobinding(binding)
    cache.advance(ids.shape[1])
    return logits


def generate(graphs: Graphs, g: Geometry, image_embeds: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
             max_new_tokens: int, sampling: Sampling, eos_ids: set[int],
             should_stop: Callable[[int, list[int]], bool] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Greedy or sampled continuation of left-padded prefixes. Returns the new tokens of each row."""
    batch, seq = input_ids.shape
    rng = np.random.default_rng(sampling.seed)
    cache = KVCache(g, batch, seq + max_new_tokens, graphs.device, graphs.device_id)
    # 1. Prefill: the whole prefix (image + bos + prompt + "\n") in one call, attending bidirectionally
    #    (token_type 0) with padding masked. Positions are 1-based and skip the left padding.
    positions = np.maximum(np.cumsum(attention_mask, axis=1), 1).astype(np.int64)
    logits = decoder_step(graphs, g, cache, input_ids, image_embeds, attention_mask, positions,
                          np.zeros_like(input_ids), np.full((batch, 1), seq - 1, dtype=np.int64))
    out: list[list[int]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    no_image = np.zeros((batch, 0, g.text_hidden), dtype=np.float32)
    mask = attention_mask
    for step in range(max_new_tokens):
        # 2. Choose the next token of each row; finished rows keep emitting pad, which nobody reads.
        nxt = np.where(done, g.pad_token_id, choose(logits[:, -1], sampling, rng))
        for b in np.flatnonzero(~done):
            out[b].append(int(nxt[b]))
            if on_token:
                on_token(int(b), int(nxt[b]))
            if int(nxt[b]) in eos_ids or (should_stop and should_stop(int(b), out[b])):
                done[b] = True
        if done.all() or step == max_new_tokens - 1:
            break
        # 3. Decode: one token per row, causal over everything cached.
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        positions = mask.sum(axis=1, keepdims=True).astype(np.int64)
        logits = decoder_step(graphs, g, cache, nxt[:, None].astype(np.int64), no_image, mask, positions,
                              np.ones((batch, 1), dtype=np.int64), np.zeros((batch, 1), dtype=np.int64))
    return out
