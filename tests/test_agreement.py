"""One definition of each agreement measure (pgexport/agreement.py), as the gate and bench report it."""

from __future__ import annotations

import numpy as np
import pytest

from pgexport import agreement


def test_sequences_count_every_position_of_the_longer_sequence():
    refs = [[5, 6, 7, 1], [5, 6, 1], [9, 1]]
    gots = [[5, 6, 7, 1], [5, 6, 8, 8, 1], [9]]  # equal; runs on past the reference; stops early
    out = agreement.sequences(refs, gots)
    assert out["sequence_agreement"] == pytest.approx(1 / 3)
    assert out["token_agreement"] == pytest.approx((4 + 2 + 1) / (4 + 5 + 2))
    assert out["first_divergence"] == [None, 2, 1]
    with pytest.raises(ValueError):
        agreement.sequences(refs, gots[:2])


def test_distributions_kl_and_top1():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 11))
    p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    same = agreement.distributions([p], [p])
    assert same["mean_kl"] == pytest.approx(0.0, abs=1e-12) and same["top1_agreement"] == 1.0
    flat = np.full_like(p, -np.log(11))
    other = agreement.distributions([p], [flat])
    kl = (np.exp(p) * (p - flat)).sum(-1)
    assert other["mean_kl"] == pytest.approx(kl.mean()) and other["max_kl"] == pytest.approx(kl.max())
    assert other["positions"] == 5
    assert agreement.distributions([], [])["positions"] == 0


def test_gate_and_bench_report_the_same_numbers_for_the_same_sequences():
    from pgexport.bench.accuracy import compare_sequences

    refs = {"a": [1, 2, 3], "b": [4, 5], "c": [7]}
    gots = {"a": [1, 2, 3], "b": [4, 6, 6], "c": []}
    bench = compare_sequences(refs, gots)
    shared = agreement.sequences(list(refs.values()), list(gots.values()))
    assert bench["sequence_agreement"] == shared["sequence_agreement"]
    assert bench["token_agreement"] == shared["token_agreement"]
    assert bench["first_divergence"]["per_item"] == {"a": None, "b": 1, "c": 0}
