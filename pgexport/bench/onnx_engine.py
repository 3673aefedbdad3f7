"""A bundle, driven stage by stage through the runtime's own building blocks (torch-free).

encode_image is split into its two session calls so that the vision encoder and the projector are timed
apart; prefill, decode and teacher forcing are the runtime's own `decoder` calls with a caller-owned KVCache,
exactly as `generate.generate` makes them. Nothing of the runtime's loop is changed or copied beyond those calls.
"""

from __future__ import annotations

import numpy as np

from pgexport_runtime import PaliGemma, SessionConfig, decoder, heap
from pgexport_runtime import io_names as io


class OnnxEngine:
    kind = "bundle"

    def __init__(self, bundle: str, threads: int, session: SessionConfig | None = None):
        self.pg = PaliGemma(bundle, session or SessionConfig(intra_op_threads=threads))
        self.g = self.pg.geometry
        self.threads = threads
        self.eos_ids = set(self.pg.eos_ids)
        self._cache = self._mask = None

    def preprocess(self, image, prompt: str):
        pixels = self.pg.pixel_values([image])
        ids, _ = self.pg.tokenizer.batch([prompt])
        return pixels, ids

    def vision(self, pixel_values: np.ndarray):
        (features,) = self.pg.graphs.vision.run([io.VISION_FEATURES], {io.PIXEL_VALUES: pixel_values})
        return features

    def project(self, features):
        (embeds,) = self.pg.graphs.projector.run([io.IMAGE_EMBEDS], {io.VISION_FEATURES: features})
        if self.pg.graphs.trim_heap:  # as encode_image does after the projector
            heap.release()
        return embeds

    def prefill(self, ids: np.ndarray, embeds, max_len: int) -> np.ndarray:
        """The whole prefix in one call; returns the last position's logits."""
        self._cache = self.pg.graphs.kv_cache(self.g, 1, max_len)
        self._mask = np.ones_like(ids)  # batch 1: no padding
        return decoder.prefill(self.pg.graphs, self.g, self._cache, ids, embeds, self._mask)[0, -1]

    def decode(self, token: int) -> np.ndarray:
        self._mask = np.concatenate([self._mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        return decoder.decode(self.pg.graphs, self.g, self._cache, np.array([token]), self._mask)[0, -1]

    def teacher_forced(self, ids: np.ndarray, embeds, suffix: list[int]) -> np.ndarray:
        """Log-probabilities [L, V] of the next token at each of the L suffix positions (decoder.score)."""
        return decoder.score(self.pg.graphs, self.g, ids, embeds, suffix)

    def runtime_tokens(self, image, prompt: str, max_new_tokens: int) -> list[int]:
        """The runtime's own end-to-end loop (PaliGemma.generate), to check the staged loop against it."""
        return self.pg(image, prompt, max_new_tokens=max_new_tokens).tokens
