"""How far a bundle is from its PyTorch reference, on the same inputs (numpy only).

- sequence exact match: share of items whose greedy token sequence equals the reference's;
- token agreement: same token at the same position, pooled over items, over max(len(ref), len(bundle));
- first divergence: per item, the first position where the sequences differ (None if identical);
- teacher-forced next-token distributions on the reference sequence: mean KL(reference || bundle) over all
  positions and items, and the share of positions where both put their top-1 on the same token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_sequences(ref: dict[str, list[int]], got: dict[str, list[int]]) -> dict:
    ids = list(ref)
    same = [ref[i] == got[i] for i in ids]
    agree = sum(sum(x == y for x, y in zip(ref[i], got[i])) for i in ids)
    total = sum(max(len(ref[i]), len(got[i])) for i in ids)
    div = {i: first_divergence(got[i], ref[i]) for i in ids}
    diverged = [d for d in div.values() if d is not None]
    return {
        "sequence_exact_match": float(np.mean(same)) if ids else None,
        "token_agreement": agree / total if total else None,
        "first_divergence": {"items_diverged": len(diverged),
                             "mean_position": float(np.mean(diverged)) if diverged else None,
                             "min_position": min(diverged) if diverged else None,
                             "per_item": div},
    }


def compare_distributions(ref_dir: Path, got_dir: Path, item_ids: list[str]) -> dict:
    """Mean KL(ref || got) in nats and top-1 agreement over every teacher-forced position."""
    kls, top1 = [], []
    for i in item_ids:
        p_log = np.load(Path(ref_dir) / f"{i}.npy").astype(np.float64)
        q_log = np.load(Path(got_dir) / f"{i}.npy").astype(np.float64)
        p = np.exp(p_log)
        kls.append((p * (p_log - q_log)).sum(-1))
        top1.append(p_log.argmax(-1) == q_log.argmax(-1))
    kl, agree = np.concatenate(kls), np.concatenate(top1)
    return {"mean_kl": float(max(kl.mean(), 0.0)), "max_kl": float(kl.max()), "top1_agreement": float(agree.mean()),
            "positions": int(kl.size)}
