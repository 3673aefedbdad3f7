"""One definition of each agreement measure (pgexport/verify/agreement.py), as the gate and bench report it."""

from __future__ import annotations

import numpy as np
import pytest

from pgexport.verify import agreement


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


def test_wilson_interval_matches_the_known_binomial_case():
    """7 of 10: the Wilson 95 % interval is [0.397, 0.892] (the score interval at z = 1.96); all of 8 is not
    certainty: [0.676, 1]; the interval always holds the observed rate."""
    from pgexport_runtime.describe import accuracy_line, wilson_interval

    low, high = wilson_interval(7, 10)
    assert abs(low - 0.3968) < 1e-4 and abs(high - 0.8922) < 1e-4
    low, high = wilson_interval(8, 8)
    assert abs(low - 0.6756) < 1e-4 and high == 1.0
    for k, n in ((0, 5), (3, 64), (64, 64)):
        low, high = wilson_interval(k, n)
        assert 0 <= low <= k / n <= high <= 1
    line = accuracy_line({"sequence_agreement": 0.7, "token_agreement": 0.8, "top1_agreement": 0.9, "mean_kl": 0.01,
                          "samples": 10})
    assert "(95 % CI 40%-89%)" in line and "(10 held-out samples)" in line


def test_mcnemar_exact_matches_the_known_case():
    """37 items only A got right against 18 only B did (the rest agree or disagree alike): the exact two-sided
    p is 2 * P(X <= 18), X ~ Binomial(55, 1/2) = 0.01445; equal splits and no discordant items say nothing."""
    a = [True] * 37 + [False] * 18 + [True] * 100 + [False] * 45
    b = [False] * 37 + [True] * 18 + [True] * 100 + [False] * 45
    out = agreement.mcnemar(a, b)
    assert (out["a_only"], out["b_only"]) == (37, 18) and out["p_value"] == pytest.approx(0.014454, abs=1e-6)
    assert agreement.mcnemar(b, a)["p_value"] == out["p_value"]
    assert agreement.mcnemar([True, False], [False, True])["p_value"] == 1.0
    assert agreement.mcnemar([True] * 5, [True] * 5) == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    assert agreement.mcnemar([True] * 6, [False] * 6)["p_value"] == pytest.approx(2 / 64)
    with pytest.raises(ValueError):
        agreement.mcnemar([True], [True, False])
