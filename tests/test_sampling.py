"""Sampling: greedy, seeded determinism, top-k and top-p restrict the support."""

from __future__ import annotations

import numpy as np
import pytest

from pgexport_runtime.sampling import Sampling, choose


def test_greedy_is_argmax():
    logits = np.array([[0.1, 3.0, 2.0], [5.0, -1.0, 4.9]])
    assert choose(logits, Sampling(), np.random.default_rng(0)).tolist() == [1, 0]


def test_top_k_and_top_p_restrict_support():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    k2 = {int(choose(logits, Sampling(do_sample=True, top_k=2), rng)[0]) for _ in range(300)}
    assert k2 == {0, 1}
    p = {int(choose(logits, Sampling(do_sample=True, top_p=0.7), rng)[0]) for _ in range(300)}
    assert p == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    full = {int(choose(logits, Sampling(do_sample=True), rng)[0]) for _ in range(2000)}
    assert full == {0, 1, 2, 3}


def test_seeded_sampling_is_reproducible_and_temperature_sharpens():
    logits = np.random.default_rng(1).normal(size=(4, 50))
    a = choose(logits, Sampling(do_sample=True, seed=3), np.random.default_rng(3))
    b = choose(logits, Sampling(do_sample=True, seed=3), np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    other = [choose(logits, Sampling(do_sample=True), np.random.default_rng(seed)).tolist() for seed in range(4, 8)]
    assert any(o != a.tolist() for o in other)  # the seed is what decides: another seed draws other tokens
    cold = [choose(logits, Sampling(do_sample=True, temperature=1e-3), np.random.default_rng(i)) for i in range(5)]
    assert all(c.tolist() == logits.argmax(-1).tolist() for c in cold)


def test_invalid_settings_rejected():
    with pytest.raises(ValueError):
        Sampling(temperature=0)
    with pytest.raises(ValueError):
        Sampling(top_p=0)


def test_runtime_sampling_and_stop_strings(bundles, images):
    from pgexport_runtime import PaliGemma

    pg = PaliGemma(bundles["tiny-pg2"])
    s = Sampling(do_sample=True, top_k=20, seed=11)
    a = pg(images[0], "caption en", max_new_tokens=12, sampling=s)
    b = pg(images[0], "caption en", max_new_tokens=12, sampling=s)
    assert a.tokens == b.tokens
    greedy = pg(images[0], "caption en", max_new_tokens=12)
    assert a.tokens != greedy.tokens  # sampling from a diverse model departs from greedy
    streamed: list[str] = []
    full = pg(images[0], "caption en", max_new_tokens=12, on_token=lambda row, tok, text: streamed.append(text))
    assert "".join(streamed) == full.text
    stop = full.text[len(full.text) // 2:][:3]
    if stop.strip():
        cut = pg(images[0], "caption en", max_new_tokens=12, stop_strings=[stop])
        assert stop not in cut.text and full.text.startswith(cut.text)
        assert len(cut.tokens) <= len(full.tokens)
