"""Next-token choice: greedy, or sampling with temperature, top-k and top-p (applied in that order)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgexport_runtime import limits


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self):
        # LimitError (a ValueError): NaN, infinities, negative seeds are refused here, top_k > vocabulary
        # once the model is known (PaliGemma.generate)
        limits.check_sampling(self.do_sample, self.temperature, self.top_k, self.top_p, self.seed)


def choose(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> np.ndarray:
    """logits [B, V] -> token ids [B]."""
    if not s.do_sample:
        return logits.argmax(-1)
    x = logits.astype(np.float64) / s.temperature
    if s.top_k:
        kth = np.partition(x, -s.top_k, axis=-1)[:, -s.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if s.top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, -1)
        # keep the smallest set whose mass reaches top_p (the first token is always kept)
        drop_sorted = np.cumsum(sorted_p, -1) - sorted_p >= s.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], dtype=np.int64)
