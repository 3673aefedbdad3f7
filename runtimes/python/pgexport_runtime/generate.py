"""The generation loop: vision -> projector -> prefill -> decode, one screen long."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from pgexport_runtime import decoder, heap
from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_cache import KVCache
from pgexport_runtime.kv_layout import CONCAT, KvLayout
from pgexport_runtime.sampling import Sampling, choose
from pgexport_runtime.session import INT8_PREFILL_GRAPH, run_rows


@dataclass
class Graphs:
    """The loaded sessions; None for a graph not loaded (PaliGemma's `load`)."""

    vision: ort.InferenceSession | None
    projector: ort.InferenceSession | None
    decoder: ort.InferenceSession | None
    device: str = "cpu"
    device_id: int = 0
    kv_layout: KvLayout = CONCAT  # the manifest's kv_cache.layout: how the decoder takes its cache
    # a fixed-shape layout (static.py): the cache's fixed length, the prefill graphs' prefix lengths, and their
    # sessions (a length without one runs on `decoder`, while the build's graphs still take any shape)
    max_len: int = 0
    prefill_lengths: tuple[int, ...] = ()
    prefill: dict = field(default_factory=dict)
    trim_heap: bool = False  # SessionConfig.trim_heap: give freed heap back after the vision encoder and the prefill
    # the bundle's decoder_int8 graph where SessionConfig.prefill chose it: it runs the prefills, `decoder` the
    # decode steps, on the same cache
    int8_prefill: ort.InferenceSession | None = None

    @property
    def prefill_graph(self) -> str:
        """The graph that runs prefills: "decoder_int8" or "decoder" (a static bundle's own lengths aside)."""
        return INT8_PREFILL_GRAPH if self.int8_prefill is not None else "decoder"

    def kv_cache(self, g: Geometry, batch: int, max_len: int) -> KVCache:
        """A cache for the decoder, laid out as it takes one, on the sessions' device (static: of its one length)."""
        if self.kv_layout.fixed_shape:
            max_len = self.max_len
        return KVCache(g, batch, max_len, self.device, self.device_id, self.kv_layout)

    def room(self, prefix: int, max_new_tokens: int) -> int:
        """max_new_tokens, within what the static layout's cache holds after a prefix of `prefix` tokens (the
        last token chosen is never fed back)."""
        return self.kv_layout.room(max_new_tokens, prefix, self.max_len)


def encode_image(graphs: Graphs, pixel_values: np.ndarray) -> np.ndarray:
    """pixel_values [B,3,H,W] -> image embeddings [B, N_img, D_text], each image encoded on its own."""
    # One image at a time, always: a graph quantized with dynamic int8 (the int4 recipe's vision encoder) takes
    # one activation scale over its whole input, so images encoded together would change each other's
    # embeddings (1.5 % on the demo model's int4 bundle: 5 of 40 held-out answers differed batched by 4). A
    # static bundle's graphs take batch 1 anyway.
    features = run_rows(graphs.vision, io.VISION_FEATURES, {io.PIXEL_VALUES: pixel_values}, True)
    embeds = run_rows(graphs.projector, io.IMAGE_EMBEDS, {io.VISION_FEATURES: features}, True)
    if graphs.trim_heap:
        heap.release()
    return embeds


def generate(graphs: Graphs, g: Geometry, image_embeds: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
             max_new_tokens: int, sampling: Sampling, eos_ids: set[int],
             should_stop: Callable[[int, list[int]], bool] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Greedy or sampled continuation of left-padded prefixes. Returns the new tokens of each row."""
    batch, seq = input_ids.shape
    max_new_tokens = graphs.room(seq, max_new_tokens)
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
