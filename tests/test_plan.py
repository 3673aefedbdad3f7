"""The build's one step list: what the progress bar counts is what runs, in both processes."""

from __future__ import annotations

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
    base = dict(parity=True, gate=False, adapter=False, calibrate=False, quantize=False, mask_weights=None)
    plain = [s.name for s in steps(Plan(BuildOptions(), **base))]
    everything = base | dict(gate=True, adapter=True, calibrate=True, quantize=True, mask_weights=Path("m"),
                             static=KvCache("static", max_len=96, prefill_lengths=(64,)))
    full = [s.name for s in steps(Plan(BuildOptions(), **everything))]
    streamed = [s.name for s in steps(Plan(BuildOptions(), **everything | dict(stream=True)))]
    assert set(plain) < set(full) and [n for n in full if n in plain] == plain
    assert sorted(set(full) | set(streamed)) == sorted(s.name for s in STEPS)
    # streamed, parity is checked per layer and the decoder is quantized as it is exported
    assert set(streamed) - set(full) == {"layer parity"} and set(full) - set(streamed) == {"quantize decoder"}
    assert [s.name for s in steps(Plan(BuildOptions(), **base), TORCH)][0] == "load model"
    assert "merge adapter" not in plain and "GPTQ" not in plain and "accuracy gate" not in plain
    assert "layer parity" not in plain  # streamed builds only
    assert "fix shapes" not in plain and full.index("fix shapes") == full.index("accuracy gate") - 1


def test_options_survive_the_trip_to_the_child():
    from pgexport.verify.parity import Tolerance

    opts = BuildOptions(model="m", adapter=Path("a"), out=Path("o"), tolerance=Tolerance(relative=2e-3),
                        calibration=Path("c.jsonl"), min_agreement=0.5, stream=True, kv_cache="static",
                        prefill_lengths=(40, 60), max_len=90)
    assert BuildOptions.from_json(opts.to_json()) == opts


def test_steps_run_in_the_two_processes():
    assert {s.process for s in STEPS} == {TORCH, BUNDLE}
