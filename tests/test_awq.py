"""AWQ (pgexport/quant/awq.py): the folded scales leave the float32 model unchanged, and where activations have an
outlier channel, AWQ keeps what round-to-nearest loses."""

from __future__ import annotations

import copy

import pytest
import torch

from pgexport.quant import awq
from pgexport.quant.recipes import RECIPES
from pgexport.verify import samples


def _logits(demo, model, cards) -> torch.Tensor:
    inputs = demo.hf_inputs([im for im, _ in cards], [p for _, p in cards])
    with torch.no_grad():
        return model(**inputs).logits.to(torch.float64)


def _round_attention_inputs(model) -> None:
    """q/k/v of every decoder layer rounded to 4-bit blocks of 32, as the bundle's RTN does (the linears that read
    the outlier channel; the rest stay float32, so that their own rounding noise does not hide the difference)."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.weight.copy_(awq.rtn(lin.weight, 32))


def _kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    p, q = ref.log_softmax(-1), got.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def demo():
    """The trained demo model: random tiny models are so fragile that any 4-bit rounding of q/k/v alone moves their
    logits by a KL of 0.2 to 1.6 nats, which hides what one channel does."""
    from conftest import Tiny
    from pgexport.source import sources

    return Tiny(str(sources.DEMO_MODEL))


def test_folded_scales_leave_the_float32_model_unchanged(demo):
    """The fold is exact but for float32 rounding: Gemma's norms multiply by (1 + w), so a scale folded into w
    is stored to float32 precision (random tiny models amplify that to 1e-5; the trained model does not)."""
    g = demo.geometry
    scales = awq.search(demo.model, demo.source.directory, g, RECIPES["int4-awq"],
                        samples.calibration_samples(demo.source, 8, g.image_size))
    assert len(scales) == 3 * g.text_layers  # q/k/v, gate/up and down in every layer
    assert max(float(s.max() / s.min()) for s in scales.values()) > 1.5  # scales were chosen, not all ones
    folded = copy.deepcopy(demo.model)
    awq.fold(folded, scales)
    held_out = samples.gate_samples(demo.source, 8, g.image_size)
    before, after = _logits(demo, demo.model, held_out), _logits(demo, folded, held_out)
    assert float((before - after).abs().max() / before.abs().max()) < 1e-5
    original = dict(demo.model.named_parameters())
    changed = [n for n, p in folded.named_parameters() if not torch.equal(p, original[n])]
    assert any("layernorm" in n for n in changed) and any("down_proj" in n for n in changed)
    assert not any("o_proj" in n for n in changed)  # v -> o is left alone: query and KV heads differ in number


def test_awq_keeps_an_outlier_channel_that_rtn_loses(demo):
    """One hidden channel 50x larger after every attention norm, its q/k/v columns 50x smaller: the same model,
    but round-to-nearest now rounds that channel's small weights away while it carries the largest activations.
    RTN's loss (KL of the answer positions' logits) grows by more than half; AWQ's stays near RTN's without it."""
    g = demo.geometry
    held_out = samples.gate_samples(demo.source, 8, g.image_size)
    ref = _logits(demo, demo.model, held_out)[:, g.num_image_tokens:]

    def kl(model) -> float:
        return _kl(ref, _logits(demo, model, held_out)[:, g.num_image_tokens:])

    plain = copy.deepcopy(demo.model)
    _round_attention_inputs(plain)
    model = copy.deepcopy(demo.model)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            c = 3
            layer.input_layernorm.weight[c] = (1 + layer.input_layernorm.weight[c]) * 50 - 1
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.weight[:, c] /= 50
    assert kl(model) < 1e-8  # the same model
    rtn = copy.deepcopy(model)
    _round_attention_inputs(rtn)
    scaled = copy.deepcopy(model)
    calibration = samples.calibration_samples(demo.source, 8, g.image_size)
    awq.apply_awq(scaled, demo.source.directory, g, RECIPES["int4-awq"], calibration)
    _round_attention_inputs(scaled)
    baseline, kl_rtn, kl_awq = kl(plain), kl(rtn), kl(scaled)
    assert kl_rtn > 1.5 * baseline and kl_awq < 1.25 * baseline, (baseline, kl_rtn, kl_awq)


def test_the_search_never_does_worse_than_rtn_on_what_it_measures():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen)
    x[:, 5] *= 40
    w = torch.randn(48, 64, generator=gen)
    s = awq.search_scales(x, [w], [32])
    err = lambda wq: float(((x @ wq.T - x @ w.T) ** 2).mean())  # noqa: E731
    assert err(awq.rtn(w * s, 32) / s) <= err(awq.rtn(w, 32))
    assert s[5] == s.max()  # the outlier channel is the one protected


@pytest.mark.parametrize("recipe,gptq", [("int4-awq", False), ("int4", True)])
def test_awq_recipes_plan_the_awq_step(recipe, gptq):
    from pgexport.build.bundle_steps import BuildOptions
    from pgexport.build.plan import Plan, steps

    names = [s.name for s in steps(Plan.of(BuildOptions(model="tiny-pg2", quant=recipe)))]
    assert "AWQ" in names and ("GPTQ" in names) == gptq
    assert names.index("AWQ") < names.index("export decoder")
