"""`--quant auto` (pgexport/quant/auto.py): 8-bit units chosen until a calibration target holds, the recipe it
chose written into the manifest and the bundle, and the choice made by bisection over the measured order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgexport.quant import auto
from pgexport.quant.recipes import RECIPES, recipe_from_dict, resolve_recipe
from pgexport_runtime.errors import UserError

DEMO = Path(__file__).resolve().parents[1] / "models" / "pg-demo"


SAMPLES = 16


@pytest.fixture(scope="module")
def demo():
    """The demo model loaded in float32, its decoder wrapper and its first SAMPLES calibration states."""
    import torch

    from pgexport.export.decoder import DecoderWithPast
    from pgexport.quant.calibration import calibration_inputs
    from pgexport.source import sources
    from pgexport.verify import samples

    source = sources.resolve(str(DEMO))
    g = sources.load_geometry(source)
    model = sources.load_model(source, torch.float32)
    dec = DecoderWithPast(model, g)
    calib = samples.calibration_samples(source, SAMPLES, g.image_size)
    with torch.no_grad():
        states = calibration_inputs(model, dec, source.directory, g, calib)
    return source, g, model, dec, calib, states


def _layerwise(demo, recipe=RECIPES["auto"]):
    from pgexport.quant.layerwise import Layerwise
    from pgexport.verify.reference import TorchReference

    source, g, model, dec, _, states = demo
    all_units = auto.units(model, dec, recipe)
    form = auto.Former(all_units, None)
    ref = TorchReference.for_model(model, source.directory, g)
    run = Layerwise(model, dec, states, form, auto.TABLE_UNIT, auto.TABLE_UNIT, auto.VISION,
                    auto.vision_embeddings(ref, model.model.vision_tower, states, form))
    return run, all_units, form, ref


@pytest.fixture(scope="module")
def all_eight(demo) -> float:
    """The demo model's calibration agreement with every unit at 8 bits: the highest target `auto` can reach on
    these samples (taken from this machine: greedy answers that hinge on near-ties differ between CPUs)."""
    import torch

    with torch.no_grad():
        run, all_units, _, _ = _layerwise(demo)
        _, same = run.score({u.name: 8 for u in all_units})
    return sum(same) / len(same)


@pytest.fixture(scope="module")
def auto_bundle(tmp_path_factory, all_eight):
    """The demo model built with `auto` (without AWQ, so that its 8-bit forms are the ones measured above) on 16
    calibration samples, for the highest target they allow: all 4-bit agrees on far fewer of them."""
    from pgexport.build.bundle_steps import BuildOptions, build

    root = tmp_path_factory.mktemp("auto")
    recipe = root / "auto-small.json"
    recipe.write_text(json.dumps({"base": "auto", "awq": False, "calibration_samples": SAMPLES,
                                  "target_agreement": all_eight}))
    return build(BuildOptions(model=str(DEMO), out=root / "bundle", quant=str(recipe), skip_parity=True,
                              gate_samples=16, stream=False))


def test_a_streamed_auto_build_chooses_and_writes_what_the_whole_build_does(auto_bundle, tmp_path):
    """Streamed, every measurement runs one decoder layer at a time on the layers the model reads as it goes:
    the same units are promoted, and the bundle's files are the whole-model build's."""
    from pgexport.build.bundle_steps import BuildOptions, build

    recipe = auto_bundle.parent / "auto-small.json"
    streamed = build(BuildOptions(model=str(DEMO), out=tmp_path / "s", quant=str(recipe), skip_parity=True,
                                  gate_samples=16, stream=True))
    whole, got = (json.loads((b / "manifest.json").read_text()) for b in (auto_bundle, streamed))
    assert got["quantization"]["auto"]["promoted"] == whole["quantization"]["auto"]["promoted"]
    assert got["quantization"]["recipe"] == whole["quantization"]["recipe"]
    assert got["files"] == whole["files"]


def test_auto_meets_its_target_on_the_calibration_samples(auto_bundle, all_eight):
    report = json.loads((auto_bundle / "manifest.json").read_text())["quantization"]["auto"]
    before, after = report["calibration"]["four_bit"], report["calibration"]["chosen"]
    assert all_eight >= 0.75 and report["target_agreement"] == all_eight and report["calibration_samples"] == SAMPLES
    assert before["sequence_agreement"] < all_eight <= after["sequence_agreement"]
    assert after["mean_kl"] < before["mean_kl"]
    assert 0 < len(report["promoted"]) <= report["units"] == 4 * 7 + 2  # 28 decoder linears, table, vision
    # the promoted units are the front of the measured order, and their bytes are what the report says
    order = [s["unit"] for s in report["sensitivity"]]
    assert report["promoted"] == order[:len(report["promoted"])]
    extra = {s["unit"]: s["extra_bytes"] for s in report["sensitivity"]}
    assert report["extra_bytes"] == sum(extra[u] for u in report["promoted"])
    # bisection: the step one short of the chosen count missed the target
    steps = {s["promoted"]: s["sequence_agreement"] for s in report["steps"]}
    assert steps[len(report["promoted"]) - 1] < all_eight


def test_the_chosen_recipe_round_trips_through_the_manifest_and_its_file(auto_bundle):
    quant = json.loads((auto_bundle / "manifest.json").read_text())["quantization"]
    from_file = resolve_recipe(str(auto_bundle / "recipe.json"))
    assert from_file == recipe_from_dict(quant["recipe"], "auto")
    assert from_file.target_agreement is None  # a plain recipe: building with it repeats the choice, no search
    promoted = set(quant["auto"]["promoted"])
    weights = quant["graphs"]["decoder"]["weights"]
    for module, label in weights.items():  # the decoder's graph is quantized as the chosen recipe says
        if module.startswith("layers."):
            assert label == ("int8-wo/b32" if module in promoted else "int4-gptq/b32"), module
    vision = set(quant["graphs"]["vision_encoder"]["weights"].values())
    assert vision == {"int8-wo/b32" if auto.VISION in promoted else "int4/b32"}
    # a promoted decoder linear computes as `int8`'s do: int8 activations (accuracy_level 4), not a float32
    # unpack of its weight on every call
    levels = {o.match: o.precision.accuracy_level for o in from_file.overrides}
    assert levels and set(levels.values()) == {RECIPES["int8"].decoder_linear.accuracy_level} == {4}


def test_inspect_says_what_auto_bought(auto_bundle):
    from pgexport_runtime import describe
    from pgexport_runtime.manifest import load_manifest

    lines = describe.describe(load_manifest(auto_bundle))
    line = next(x for x in lines if x.startswith("auto"))
    report = json.loads((auto_bundle / "manifest.json").read_text())["quantization"]["auto"]
    assert f"{len(report['promoted'])} of 30 units at 8 bits" in line
    assert f"{report['target_agreement']:.0%} sequence agreement on {SAMPLES} calibration samples" in line


def test_a_bad_auto_report_is_refused_at_load(auto_bundle, tmp_path):
    import shutil

    from pgexport_runtime.manifest import load_manifest
    from pgexport_runtime.errors import BundleError

    bad = tmp_path / "b"
    shutil.copytree(auto_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["quantization"]["auto"]["promoted"] = ["x"] * 31
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="more units"):
        load_manifest(bad)


class _Fakes:
    """choose() with its measurements replaced: 30 units of rising size, and an agreement that reaches the
    target once `needed` of them are at 8 bits (a stand-in for the layerwise passes, counted)."""

    def __init__(self, monkeypatch, needed: int | None):
        import torch
        from torch import nn

        self.needed, self.calls = needed, []
        fakes = self

        class Layerwise:
            horizon, fp_arg = [3], [torch.zeros(3)]

            def __init__(self, *args):
                pass

            def alone(self, units, which):
                return {u: 0.01 for u in units}

            def score(self, bits):
                promoted = sum(1 for b in bits.values() if b == 8)
                fakes.calls.append(promoted)
                same = fakes.needed is not None and promoted >= fakes.needed
                return [torch.full((3,), 0.01)], [same]

        linear = RECIPES["auto"].decoder_linear
        monkeypatch.setattr("pgexport.quant.layerwise.Layerwise", Layerwise)
        monkeypatch.setattr("pgexport.quant.calibration.calibration_inputs", lambda *a: [None] * 4)
        monkeypatch.setattr(auto, "vision_embeddings", lambda *a: None)
        monkeypatch.setattr(auto, "units", lambda model, dec, recipe: [
            auto.Unit(f"layers.{i}.mlp.up_proj", (nn.Parameter(torch.zeros(1)),), linear, 100 + i) for i in range(30)])
        monkeypatch.setattr("pgexport.export.decoder.DecoderWithPast", _FakeDecoder)
        monkeypatch.setattr("pgexport.verify.reference.TorchReference.for_model", lambda *a: None)

    def choose(self):
        return auto.choose(_FakeModel(), None, None, RECIPES["auto"], [None] * 4, 32)


class _FakeDecoder:
    lm_head = None

    def __init__(self, model, g):
        pass


class _FakeModel:
    class model:  # noqa: N801
        vision_tower = None


@pytest.mark.parametrize("needed", [0, 1, 5, 29, 30])
def test_bisection_finds_the_smallest_count_that_holds(monkeypatch, needed):
    """Whatever count the target needs, it is found in O(log units) agreement measurements, and nothing more
    is promoted."""
    fakes = _Fakes(monkeypatch, needed)
    chosen, report = fakes.choose()
    assert len(report["promoted"]) == needed == len(chosen.overrides)
    assert len(fakes.calls) <= 2 + 5  # both ends, then log2(30) rounded up


def test_an_unreachable_target_is_one_line(monkeypatch):
    fakes = _Fakes(monkeypatch, None)
    with pytest.raises(UserError, match="out of reach.*0.0%"):
        fakes.choose()


@pytest.mark.parametrize("value", [0, 1.5, "0.9", True, -0.1])
def test_a_recipe_files_target_is_checked(value):
    with pytest.raises(UserError, match="target_agreement must be a number"):
        recipe_from_dict({"base": "auto", "target_agreement": value}, "bad")


def test_layerwise_measures_what_transformers_measures(demo):
    """One unit at 4 bits: the layerwise KL equals the one transformers' own model gives teacher-forced along the
    same answers, the float32 pass reproduces every greedy answer, and the table's embedding role is formed."""
    import numpy as np
    import torch

    source, g, model, dec, calib, states = demo
    with torch.no_grad():
        run, all_units, form, ref = _layerwise(demo)
        kls, same = run.score({})
        assert all(same) and float(torch.cat(kls).abs().max()) < 1e-6
        # scored layer by layer, float32's argmax is the generated answer's every token
        assert run.horizon == [s["ids"].shape[1] - s["prefix"] for s in states]
        unit = "layers.0.self_attn.v_proj"
        which = range(4)
        got = run.alone([unit, auto.TABLE_UNIT], which)
        weight = model.get_submodule("model.language_model." + unit).weight
        table = dec.embed.weight
        want = {}
        for name, w in ((unit, weight), (auto.TABLE_UNIT, table)):
            kept = w.data
            w.data = form(name, kept, None if name == unit else torch.arange(kept.shape[0]), 4)
            try:
                per_position = []
                for k in which:
                    s = states[k]
                    inputs = ref.inputs([calib[k][0]], [calib[k][1]])
                    answer = s["ids"][0, s["prefix"]:].tolist()
                    w.data, formed = kept, w.data
                    p_log = ref.scored(inputs, answer).astype(np.float64)
                    w.data = formed
                    q_log = ref.scored(inputs, answer).astype(np.float64)
                    per_position.append((np.exp(p_log) * (p_log - q_log)).sum(-1))
                want[name] = float(np.concatenate(per_position).mean())
            finally:
                w.data = kept
    for name in want:
        assert want[name] > 1e-6 and abs(got[name] - want[name]) <= 1e-3 * want[name] + 1e-7, (name, got, want)


def test_folded_softmax_statistics_equal_the_whole_vocabulary():
    import torch

    from pgexport.quant.layerwise import Folded

    gen = torch.Generator().manual_seed(0)
    zp, zq = torch.randn(5, 70, generator=gen) * 4, torch.randn(5, 70, generator=gen) * 4
    folded = Folded(5)
    for start in range(0, 70, 16):
        folded.add(zp[:, start:start + 16], zq[:, start:start + 16], start)
    lp, lq = torch.log_softmax(zp.double(), 1), torch.log_softmax(zq.double(), 1)
    assert torch.allclose(folded.kl(), (lp.exp() * (lp - lq)).sum(1), atol=1e-12)
    assert torch.equal(folded.arg, zq.argmax(1))


def test_min_agreement_is_autos_target():
    from pgexport.build.plan import BuildOptions, Plan, steps

    plan = Plan.of(BuildOptions(model=str(DEMO), quant="auto", min_agreement=0.97))
    assert plan.auto and plan.recipe.target_agreement == 0.97
    assert "choose precision" in [s.name for s in steps(plan)]
