"""The generation loop: vision -> projector -> prefill -> decode, one screen long."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from . import decoder
from . import io_names as io
from .geometry import Geometry
from .kv_cache import KVCache
from .sampling import Sampling, choose


@dataclass
class Graphs:
    """The loaded sessions; None for a graph not loaded (PaliGemma's `load`)."""

    vision: ort.InferenceSession | None
    projector: ort.InferenceSession | None
    decoder: ort.InferenceSession | None
    device: str = "cpu"
    device_id: int = 0
    kv_layout: str = "concat"  # the manifest's kv_cache.layout: how the decoder takes its cache

    def kv_cache(self, g: Geometry, batch: int, max_len: int) -> KVCache:
        """A cache for the decoder, laid out as it takes one, on the sessions' device."""
        return KVCache(g, batch, max_len, self.device, self.device_id, self.kv_layout)


def encode_image(graphs: Graphs, pixel_values: np.ndarray) -> np.ndarray:
    """pixel_values [B,3,H,W] -> image embeddings [B, N_img, D_text]."""
    (features,) = graphs.vision.run([io.VISION_FEATURES], {io.PIXEL_VALUES: pixel_values})
    (embeds,) = graphs.projector.run([io.IMAGE_EMBEDS], {io.VISION_FEATURES: features})
    return embeds


def generate(graphs: Graphs, g: Geometry, image_embeds: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
             max_new_tokens: int, sampling: Sampling, eos_ids: set[int],
             should_stop: Callable[[int, list[int]], bool] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Greedy or sampled continuation of left-padded prefixes. Returns the new tokens of each row."""
    batch, seq = input_ids.shape
    rng = np.random.default_rng(sampling.seed)
    cache = graphs.kv_cache(g, batch, seq + max_new_tokens)
    # 1. Prefill: the whole prefix (image + bos + prompt + "\n") in one call, attending bidirectionally
    #    with padding masked; logits at the last position only.
    logits = decoder.prefill(graphs, g, cache, input_ids, image_embeds, attention_mask)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
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
        logits = decoder.decode(graphs, g, cache, nxt, mask)
    return out
