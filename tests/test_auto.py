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
def all_eight() -> float:
    """The demo model's calibration agreement with every unit at 8 bits: the highest target `auto` can reach on
    these samples (taken from this machine: greedy answers that hinge on near-ties differ between CPUs)."""
    import torch

    from pgexport.export.decoder import DecoderWithPast
    from pgexport.source import sources
    from pgexport.verify import samples
    from pgexport.verify.reference import TorchReference

    source = sources.resolve(str(DEMO))
    g = sources.load_geometry(source)
    model = sources.load_model(source, torch.float32)
    calib = samples.calibration_samples(source, SAMPLES, g.image_size)
    all_units = auto.units(model, DecoderWithPast(model, g), RECIPES["auto"])
    forms = auto.Forms(all_units, None)
    with torch.no_grad():
        scorer = auto.Scorer(TorchReference.for_model(model, source.directory, g), calib, 32)
        forms.set({u.name: 8 for u in all_units})
        return scorer.agreement()


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
                              gate_samples=16))


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
    target once `needed` of them are at 8 bits (a stand-in for greedy decoding, counted)."""

    def __init__(self, monkeypatch, needed: int | None):
        import torch
        from torch import nn

        self.needed, self.state, self.calls = needed, {}, []
        fakes = self

        class Forms:
            def __init__(self, all_units, gptq):
                pass

            def set(self, bits):
                fakes.state = dict(bits)

            def restore(self):
                fakes.state = {}

        class Scorer:
            def __init__(self, ref, samples, n):
                pass

            def agreement(self):
                promoted = sum(1 for b in fakes.state.values() if b == 8)
                fakes.calls.append(promoted)
                return 0.95 if fakes.needed is not None and promoted >= fakes.needed else 0.5

            def mean_kl(self):
                return 0.01

        linear = RECIPES["auto"].decoder_linear
        monkeypatch.setattr(auto, "Forms", Forms)
        monkeypatch.setattr(auto, "Scorer", Scorer)
        monkeypatch.setattr(auto, "units", lambda model, dec, recipe: [
            auto.Unit(f"layers.{i}.mlp.up_proj", (nn.Parameter(torch.zeros(1)),), linear, 100 + i) for i in range(30)])
        monkeypatch.setattr("pgexport.export.decoder.DecoderWithPast", lambda model, g: None)
        monkeypatch.setattr("pgexport.verify.reference.TorchReference.for_model", lambda *a: None)

    def choose(self):
        return auto.choose(None, None, None, RECIPES["auto"], [None] * 4, 8)


@pytest.mark.parametrize("needed", [0, 1, 5, 29, 30])
def test_bisection_finds_the_smallest_count_that_holds(monkeypatch, needed):
    """Whatever count the target needs, it is found in O(log units) agreement measurements, and nothing more
    is promoted."""
    fakes = _Fakes(monkeypatch, needed)
    chosen, report = fakes.choose()
    assert len(report["promoted"]) == needed == len(chosen.overrides)
    assert len(fakes.calls) <= 2 + 5  # both ends, then log2(30) rounded up
    assert fakes.state == {}  # the float32 weights are back


def test_an_unreachable_target_is_one_line(monkeypatch):
    fakes = _Fakes(monkeypatch, None)
    with pytest.raises(UserError, match="out of reach.*50.0%"):
        fakes.choose()
    assert fakes.state == {}


@pytest.mark.parametrize("value", [0, 1.5, "0.9", True, -0.1])
def test_a_recipe_files_target_is_checked(value):
    with pytest.raises(UserError, match="target_agreement must be a number"):
        recipe_from_dict({"base": "auto", "target_agreement": value}, "bad")


def test_auto_refuses_to_stream_with_a_way_out():
    from pgexport.build.plan import BuildOptions, Plan

    with pytest.raises(UserError, match="sensitivity --write-recipe"):
        Plan.of(BuildOptions(model=str(DEMO), quant="auto", stream=True))


def test_min_agreement_is_autos_target():
    from pgexport.build.plan import BuildOptions, Plan, steps

    plan = Plan.of(BuildOptions(model=str(DEMO), quant="auto", min_agreement=0.97))
    assert plan.auto and plan.recipe.target_agreement == 0.97
    assert "choose precision" in [s.name for s in steps(plan)]
