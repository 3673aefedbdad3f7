"""How far a bundle's answers are from a reference's: one definition of each measure, used by the build's
accuracy gate and by `pgexport bench` alike (numpy only).

- sequence agreement: the share of items whose greedy sequences (cut after <eos>) are equal;
- token agreement: the same token at the same position, pooled over items, out of max(len(reference),
  len(bundle)) positions per item, so a bundle that stops early or runs on loses those positions;
- first divergence: per item, the first position where the two sequences differ (None when equal);
- teacher forced along the reference's sequence: mean KL(reference || bundle) of the next-token distributions
  in nats over every position of every item, its maximum, and top-1 agreement (both put their highest
  probability on the same token);
- paired comparison of two bundles on the same items: McNemar's exact test, so that "A agrees more often than
  B" comes with the chance of seeing a split at least as uneven if they agreed equally often.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import comb

import numpy as np


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def sequences(refs: Sequence[Sequence[int]], gots: Sequence[Sequence[int]]) -> dict:
    """Sequence and token agreement and first divergences of paired greedy sequences."""
    if len(refs) != len(gots):
        raise ValueError(f"{len(refs)} reference sequences against {len(gots)}")
    same = [list(r) == list(g) for r, g in zip(refs, gots)]
    agree = sum(sum(x == y for x, y in zip(r, g)) for r, g in zip(refs, gots))
    total = sum(max(len(r), len(g)) for r, g in zip(refs, gots))
    return {
        "sequence_agreement": float(np.mean(same)) if refs else None,
        "token_agreement": agree / total if total else None,
        "first_divergence": [first_divergence(g, r) for r, g in zip(refs, gots)],
    }


def distributions(ref_logprobs: Iterable[np.ndarray], got_logprobs: Iterable[np.ndarray]) -> dict:
    """Mean and max KL(reference || bundle) in nats and top-1 agreement, over every teacher-forced position.
    The pairs are taken one at a time: either side may be a generator."""
    kls, top1 = [], []
    for p_log, q_log in zip(ref_logprobs, got_logprobs):
        p_log, q_log = np.asarray(p_log, np.float64), np.asarray(q_log, np.float64)
        kls.append((np.exp(p_log) * (p_log - q_log)).sum(-1))
        top1.append(p_log.argmax(-1) == q_log.argmax(-1))
    kl = np.concatenate(kls) if kls else np.zeros(0)
    agree = np.concatenate(top1) if top1 else np.zeros(0, dtype=bool)
    if kl.size == 0:
        return {"mean_kl": None, "max_kl": None, "top1_agreement": None, "positions": 0}
    return {"mean_kl": float(max(kl.mean(), 0.0)), "max_kl": float(kl.max()), "top1_agreement": float(agree.mean()),
            "positions": int(kl.size)}


def mcnemar(a_same: Sequence[bool], b_same: Sequence[bool]) -> dict:
    """Two bundles' per-item sequence agreement with one reference, paired: the items only A agrees on, only B,
    and the exact two-sided McNemar p-value (a binomial test at 1/2 of the discordant items). Items both get
    right or both get wrong say nothing about which is better, so they do not enter."""
    if len(a_same) != len(b_same):
        raise ValueError(f"{len(a_same)} items against {len(b_same)}")
    a_only = sum(bool(a) and not b for a, b in zip(a_same, b_same))
    b_only = sum(bool(b) and not a for a, b in zip(a_same, b_same))
    n, k = a_only + b_only, min(a_only, b_only)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": p}
