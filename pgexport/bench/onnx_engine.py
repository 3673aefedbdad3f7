"""A bundle, driven stage by stage through the runtime's own building blocks (torch-free).

encode_image is split into its two session calls so that the vision encoder and the projector are timed
apart; prefill and decode go through `generate.decoder_step` with the caller-owned KVCache, exactly as
`generate.generate` does. Nothing of the runtime's loop is changed or copied beyond those calls.
"""

from __future__ import annotations

import numpy as np

from pgexport_runtime import PaliGemma, SessionConfig
from pgexport_runtime import io_names as io
from pgexport_runtime.generate import decoder_step
from pgexport_runtime.kv_cache import KVCache


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
        return embeds

    def prefill(self, ids: np.ndarray, embeds, max_len: int) -> np.ndarray:
        """The whole prefix in one call (bidirectional, token_type 0); returns the last position's logits."""
        seq = ids.shape[1]
        self._cache = KVCache(self.g, 1, max_len)
        self._mask = np.ones((1, seq), dtype=np.int64)
        positions = np.arange(1, seq + 1, dtype=np.int64)[None]  # 1-based, no padding at batch 1
        logits = decoder_step(self.pg.graphs, self.g, self._cache, ids, embeds, self._mask, positions,
                              np.zeros_like(ids), np.array([[seq - 1]], dtype=np.int64))
        return logits[0, -1]

    def decode(self, token: int) -> np.ndarray:
        self._mask = np.concatenate([self._mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        positions = self._mask.sum(axis=1, keepdims=True)
        logits = decoder_step(self.pg.graphs, self.g, self._cache, np.array([[token]], dtype=np.int64),
                              np.zeros((1, 0, self.g.text_hidden), dtype=np.float32), self._mask, positions,
                              np.ones((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.int64))
        return logits[0, -1]

    def teacher_forced(self, ids: np.ndarray, embeds, suffix: list[int]) -> np.ndarray:
        """Log-probabilities [L, V] of the next token at each of the L suffix positions, in ONE decoder call:
        prefix (token_type 0) + suffix[:-1] (token_type 1, causal), logits at the last prefix position and
        every fed suffix position."""
        seq, n = ids.shape[1], len(suffix)
        full = np.concatenate([ids, np.asarray(suffix[:-1], dtype=np.int64)[None]], axis=1)
        types = np.concatenate([np.zeros_like(ids), np.ones((1, n - 1), dtype=np.int64)], axis=1)
        cache = KVCache(self.g, 1, full.shape[1])
        logits = decoder_step(self.pg.graphs, self.g, cache, full, embeds, np.ones_like(full),
                              np.arange(1, full.shape[1] + 1, dtype=np.int64)[None], types,
                              np.arange(seq - 1, seq - 1 + n, dtype=np.int64)[None])
        return _log_softmax(logits[0])

    def runtime_tokens(self, image, prompt: str, max_new_tokens: int) -> list[int]:
        """The runtime's own end-to-end loop (PaliGemma.generate), to check the staged loop against it."""
        return self.pg(image, prompt, max_new_tokens=max_new_tokens).tokens


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)
