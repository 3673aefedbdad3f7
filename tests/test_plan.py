"""The build's one step list: what the progress bar counts is what runs, in both processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pgexport.build.bundle_steps import BuildOptions, planned_steps
from pgexport.build.plan import BUNDLE, STEPS, TORCH, Plan, steps
from pgexport_runtime.manifest import KvCache

ROOT = Path(__file__).resolve().parents[1]


def test_progress_reports_exactly_the_planned_steps(bundles):
    """The float32 builds of conftest's `bundles` (a quantized one: tests/test_quant.py's GPTQ build)."""
    from conftest import PROGRESS

    for name in bundles:
        seen = PROGRESS[name]
        assert seen == planned_steps(BuildOptions(model=name))
        assert "parity check" in seen and "accuracy gate" not in seen and "quantize decoder" not in seen
        assert seen.index("export decoder") < seen.index("write manifest")  # the torch phase comes first


def test_conditions_select_steps():
    from pgexport_runtime.kv_layout import STATIC

    made = Plan.of(BuildOptions(model="tiny-pg1"))
    base = dict(parity=True, gate=False, adapter=False, calibrate=False, quantize=False, mask_weights=None)
    plain = [s.name for s in steps(replace(made, **base))]
    everything = base | dict(gate=True, adapter=True, calibrate=True, awq=True, auto=True, quantize=True,
                             mask_weights=Path("m"), int8_prefill=True,
                             kv=KvCache(STATIC, max_len=96, prefill_lengths=(64,)))
    full = [s.name for s in steps(replace(made, **everything))]
    streamed = [s.name for s in steps(replace(made, **everything | dict(stream=True)))]
    assert set(plain) < set(full) and [n for n in full if n in plain] == plain
    assert sorted(set(full) | set(streamed)) == sorted(s.name for s in STEPS)
    # streamed, parity is checked per layer and the decoder is quantized as it is exported
    assert set(streamed) - set(full) == {"layer parity"} and set(full) - set(streamed) == {"quantize decoder"}
    assert [s.name for s in steps(replace(made, **base), TORCH)][0] == "load model"
    assert "merge adapter" not in plain and "GPTQ" not in plain and "AWQ" not in plain and "accuracy gate" not in plain
    assert "choose precision" not in plain and full.index("choose precision") == full.index("GPTQ") + 1
    assert "layer parity" not in plain  # streamed builds only
    assert "fix shapes" not in plain and full.index("fix shapes") == full.index("accuracy gate") - 1
    # derived from the quantized decoder, listed in the manifest before the gate measures both paths
    assert "int8 prefill graph" not in plain
    assert full.index("rewrite manifest") + 1 == full.index("int8 prefill graph") < full.index("accuracy gate")


def test_options_survive_the_trip_to_the_child():
    from pgexport.verify.parity import Tolerance

    opts = BuildOptions(model="m", adapter=Path("a"), out=Path("o"), tolerance=Tolerance(relative=2e-3),
                        calibration=Path("c.jsonl"), min_agreement=0.5, stream=True, kv_cache="static",
                        prefill_lengths=(40, 60), max_len=90, int8_prefill=True)
    assert BuildOptions.from_json(opts.to_json()) == opts


def test_the_plan_survives_the_trip_to_the_child(tmp_path):
    """The child gets the plan made in the build process (its source, geometry, recipe and decisions), not the
    options to plan again."""
    recipe = tmp_path / "mine.json"
    recipe.write_text('{"base": "int4", "overrides": [{"match": "*lm_head*", "precision": "int8"}]}')
    for opts in (BuildOptions(model="tiny-pg1", quant=str(recipe), kv_cache="static", stream=True),
                 BuildOptions(model="tiny-pg2", quant="int4-gptq", kv_cache="shared")):
        plan = Plan.of(opts)
        back = Plan.from_json(json.loads(json.dumps(plan.to_json())))
        assert back == replace(plan, estimate=None)
        assert back.kv.layout.fixed_shape == (opts.kv_cache == "static")
        assert back.recipe.overrides == plan.recipe.overrides


def test_steps_run_in_the_two_processes():
    assert {s.process for s in STEPS} == {TORCH, BUNDLE}
