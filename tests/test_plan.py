"""The build's one step list: what the progress bar counts is what runs, in both processes."""

from __future__ import annotations

import ast
from pathlib import Path

from pgexport.build import BuildOptions, planned_steps
from pgexport.plan import BUNDLE, STEPS, TORCH, Plan, steps
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
    from pgexport.parity import Tolerance

    opts = BuildOptions(model="m", adapter=Path("a"), out=Path("o"), tolerance=Tolerance(relative=2e-3),
                        calibration=Path("c.jsonl"), min_agreement=0.5, stream=True, kv_cache="static",
                        prefill_lengths=(40, 60), max_len=90)
    assert BuildOptions.from_json(opts.to_json()) == opts


def test_no_import_cycle_between_build_and_torch_phase():
    """torch_phase (the child) must not import build (the parent); both import plan."""
    def imports(module: str) -> set[str]:
        tree = ast.parse((ROOT / "pgexport" / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module or a.name for a in node.names} if node.module else {a.name for a in node.names}
        return names

    assert "build" not in imports("torch_phase") and "plan" in imports("torch_phase")
    assert "plan" in imports("build")
    assert {s.process for s in STEPS} == {TORCH, BUNDLE}
