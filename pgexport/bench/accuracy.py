"""How far a bundle is from its PyTorch reference in bench's report: pgexport/verify/agreement.py's measures, keyed by
item id (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgexport_runtime.describe import wilson_interval

from pgexport.verify import agreement


def compare_sequences(ref: dict[str, list[int]], got: dict[str, list[int]]) -> dict:
    ids = list(ref)
    seq = agreement.sequences([ref[i] for i in ids], [got[i] for i in ids])
    div = dict(zip(ids, seq["first_divergence"]))
    diverged = [d for d in div.values() if d is not None]
    same = sum(d is None for d in div.values())
    return {
        "sequence_agreement": seq["sequence_agreement"],
        "sequence_agreement_ci": list(wilson_interval(same, len(ids))) if ids else None,
        "token_agreement": seq["token_agreement"],
        "first_divergence": {"items_diverged": len(diverged),
                             "mean_position": float(np.mean(diverged)) if diverged else None,
                             "min_position": min(diverged) if diverged else None,
                             "per_item": div},
    }


def compare_distributions(ref_dir: Path, got_dir: Path, item_ids: list[str]) -> dict:
    """Mean KL(ref || got) in nats and top-1 agreement over every teacher-forced position."""
    return agreement.distributions([np.load(Path(ref_dir) / f"{i}.npy") for i in item_ids],
                                   [np.load(Path(got_dir) / f"{i}.npy") for i in item_ids])


def paired(runs: list[dict]) -> list[dict]:
    """Every pair of runs measured against the same reference on the same items: McNemar's exact test of their
    per-item sequence agreement (verify/agreement.py)."""
    measured = [r for r in runs if r.get("accuracy")]
    out = []
    for i, a in enumerate(measured):
        for b in measured[i + 1:]:
            da, db = a["accuracy"]["first_divergence"]["per_item"], b["accuracy"]["first_divergence"]["per_item"]
            if a["reference"] != b["reference"] or set(da) != set(db):
                continue
            ids = sorted(da)
            test = agreement.mcnemar([da[k] is None for k in ids], [db[k] is None for k in ids])
            out.append({"a": a["name"], "b": b["name"], "reference": a["reference"], "items": len(ids), **test})
    return out
