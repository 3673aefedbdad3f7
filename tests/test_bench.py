"""`pgexport bench` on a tiny bundle: the report validates, an fp32 bundle agrees 100 % with the fp32
reference, and a bundle with one perturbed decoder weight visibly does not (the accuracy columns can fail)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pgexport.bench import BenchOptions, run_bench
from pgexport.bench.accuracy import compare_sequences
from pgexport.bench.report import write_outputs
from pgexport.bench.schema import _check, load_schema, validate
from pgexport.bench.stats import STAGES


def corrupt_bundle(src: Path, dst: Path, noise: float = 1.0, seed: int = 0) -> str:
    """Copy a bundle, add Gaussian noise (noise x the tensor's std) to one decoder weight matrix, re-save
    the decoder and refresh the manifest's sha256 so the bundle still loads. Returns the initializer name."""
    import onnx
    from onnx import numpy_helper

    from pgexport_runtime.manifest import load_manifest, sha256_file

    shutil.copytree(src, dst)
    m = load_manifest(dst)
    entry = m.graphs["decoder"]
    model = onnx.load(str(dst / entry.file))  # external data, if any, is loaded too
    vocab = m.geometry.vocab_size
    mats = [t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] != vocab and t.data_type == 1]
    target = mats[len(mats) // 2]  # a weight in the middle of the decoder stack, not the tied embedding
    w = numpy_helper.to_array(target)
    w = w + np.random.default_rng(seed).normal(0, noise * w.std(), w.shape).astype(w.dtype)
    target.CopyFrom(numpy_helper.from_array(w, target.name))
    for f in entry.data_files:
        (dst / f).unlink()
    if entry.data_files:
        onnx.save_model(model, str(dst / entry.file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=entry.data_files[0])
    else:
        onnx.save_model(model, str(dst / entry.file))
    raw = json.loads((dst / "manifest.json").read_text())
    for name in raw["files"]:
        raw["files"][name] = sha256_file(dst / name)
    (dst / "manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
    return target.name


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory) -> dict:
    from pgexport.build.bundle_steps import BuildOptions, build

    root = tmp_path_factory.mktemp("bench")
    clean = build(BuildOptions(model="tiny-pg1", out=root / "tiny-fp32", skip_parity=True))
    corrupt_bundle(clean, root / "tiny-corrupt")
    return {"clean": clean, "corrupt": root / "tiny-corrupt", "root": root}


@pytest.fixture(scope="module")
def full_report(tiny_bundles) -> tuple[dict, Path]:
    out = tiny_bundles["root"] / "report"
    opts = BenchOptions(bundles=(tiny_bundles["clean"], tiny_bundles["corrupt"]), mode="full",
                        reference_dtypes=("fp32",), limit=5, warmup=1, repeats=2, max_new_tokens=8,
                        work_dir=out / "work")
    report = run_bench(opts)
    write_outputs(report, out)
    return report, out


def _run(report: dict, name: str) -> dict:
    return next(r for r in report["runs"] if r["name"] == name)


def test_report_validates_against_schema(full_report):
    report, out = full_report
    validate(report)
    _check(json.loads((out / "bench.json").read_text()), load_schema(), load_schema(), "$")  # the fallback checker too
    assert [r["name"] for r in report["runs"]] == ["torch-fp32", "tiny-fp32", "tiny-corrupt"]


def test_schema_checker_rejects_a_broken_report(full_report):
    report, _ = full_report
    for breaking in (lambda r: r["runs"][0].pop("latency"), lambda r: r.update(schema_version=99),
                     lambda r: r["runs"][1]["accuracy"].update(token_agreement=1.5)):
        bad = copy.deepcopy(report)
        breaking(bad)
        with pytest.raises(ValueError, match="schema"):
            _check(bad, load_schema(), load_schema(), "$")


def test_fp32_bundle_agrees_fully_with_fp32_reference(full_report):
    run = _run(full_report[0], "tiny-fp32")
    acc = run["accuracy"]
    assert run["reference"] == "torch-fp32"
    assert acc["sequence_agreement"] == 1.0 and acc["token_agreement"] == 1.0
    assert acc["first_divergence"]["items_diverged"] == 0
    assert acc["teacher_forced"]["top1_agreement"] == 1.0 and acc["teacher_forced"]["mean_kl"] < 1e-4
    assert run["checks"]["staged_loop_matches_runtime"] and run["checks"]["token_ids_match"]
    assert run["checks"]["preprocess_max_abs_diff"] <= 1e-6


def test_corrupted_bundle_scores_visibly_lower(full_report):
    report, _ = full_report
    clean, bad = _run(report, "tiny-fp32")["accuracy"], _run(report, "tiny-corrupt")["accuracy"]
    assert bad["token_agreement"] < 0.9 and bad["sequence_agreement"] < 1.0
    assert bad["first_divergence"]["items_diverged"] >= 1
    assert bad["teacher_forced"]["mean_kl"] > 100 * max(clean["teacher_forced"]["mean_kl"], 1e-6)
    assert bad["teacher_forced"]["top1_agreement"] < clean["teacher_forced"]["top1_agreement"]


def test_agreements_carry_intervals_and_the_pair_is_compared(full_report):
    report, out = full_report
    clean, bad = _run(report, "tiny-fp32")["accuracy"], _run(report, "tiny-corrupt")["accuracy"]
    for acc in (clean, bad):
        low, high = acc["sequence_agreement_ci"]
        assert low <= acc["sequence_agreement"] <= high
    assert clean["sequence_agreement_ci"][1] == 1.0 and clean["sequence_agreement_ci"][0] < 1.0  # n items, not proof
    pair = next(c for c in report["comparisons"] if {c["a"], c["b"]} == {"tiny-fp32", "tiny-corrupt"})
    diverged = bad["first_divergence"]["items_diverged"]
    assert (pair["a_only"], pair["b_only"]) == ((diverged, 0) if pair["a"] == "tiny-fp32" else (0, diverged))
    assert pair["p_value"] == pytest.approx(min(1.0, 2 * 0.5**diverged))
    assert "Paired comparison" in (out / "bench.md").read_text()


def test_latency_memory_size_and_outputs(full_report):
    report, out = full_report
    for run in report["runs"]:
        for stage in STAGES:
            assert run["latency"][stage]["n"] == 2 and run["latency"][stage]["median_ms"] > 0, (run["name"], stage)
        assert run["memory"]["peak_rss_mb"] > 0 and run["threads"] >= 1
        assert run["task_metrics"]  # the demo set has ground truth; scores of a random tiny model are ~0
    assert set(_run(report, "tiny-fp32")["size"]["graphs"]) >= {"vision_encoder", "projector", "decoder"}
    assert report["system"]["versions"]["onnxruntime"] and report["system"]["cpu_model"]
    md = (out / "bench.md").read_text()
    assert "tiny-corrupt" in md and "Accuracy against the PyTorch reference" in md
    for png in ("latency.png", "accuracy_vs_size.png", "accuracy_vs_speed.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_speed_mode_is_auto_detected_for_random_presets(tiny_bundles):
    """A preset source means random weights: latency and memory only, bf16 and fp32 references side by side."""
    from click.testing import CliRunner

    from pgexport.cli import cli

    out = tiny_bundles["root"] / "speed"
    res = CliRunner().invoke(cli, ["bench", str(tiny_bundles["clean"]), "--repeats", "1", "--warmup", "0",
                                   "--new-tokens", "4", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "bench.json").read_text())
    assert report["settings"]["mode"] == "speed"
    assert [(r["name"], r["precision"]) for r in report["runs"]] == [("torch-bf16", "bf16"), ("torch-fp32", "fp32"),
                                                                    ("tiny-fp32", "fp32")]
    assert all(r["accuracy"] is None and r["task_metrics"] is None for r in report["runs"])
    assert all(r["throughput"]["decode_tokens_mean"] == 3 for r in report["runs"])  # EOS ignored: 1 + 3 tokens


def test_a_reference_too_large_for_the_machine_is_named_not_run(tiny_bundles, monkeypatch):
    """Speed mode skips (and notes) a reference whose weights alone exceed the machine's memory; full mode, whose
    accuracy needs it, refuses in one line before any worker starts."""
    from pgexport.build import plan
    from pgexport.bench.run import reference_bytes
    from pgexport_runtime.errors import UserError
    from pgexport_runtime.manifest import load_manifest

    g = load_manifest(tiny_bundles["clean"]).geometry
    monkeypatch.setattr(plan, "machine_memory", lambda: (reference_bytes(g, "bf16") + reference_bytes(g, "fp32")) / 2)
    out = tiny_bundles["root"] / "small-machine"
    report = run_bench(BenchOptions(bundles=(tiny_bundles["clean"],), mode="speed", warmup=0, repeats=1,
                                    new_tokens=2, work_dir=out / "work"))
    assert [r["name"] for r in report["runs"]] == ["torch-bf16", "tiny-fp32"]
    assert any(n.startswith("torch-fp32 not run: its weights alone need") for n in report["notes"]), report["notes"]
    with pytest.raises(UserError, match="fp32 PyTorch reference .* needs at least .* --mode speed"):
        run_bench(BenchOptions(bundles=(tiny_bundles["clean"],), mode="full", reference_dtypes=("fp32",), limit=1,
                               warmup=0, repeats=1, work_dir=out / "work-full"))
    assert not (out / "work-full").exists() or not list((out / "work-full").glob("result-*.json"))


def test_sequence_comparison():
    acc = compare_sequences({"a": [1, 2, 3], "b": [4, 5]}, {"a": [1, 2, 3], "b": [4, 6, 7]})
    assert acc["sequence_agreement"] == 0.5
    assert acc["token_agreement"] == pytest.approx(4 / 6)
    assert acc["first_divergence"]["per_item"] == {"a": None, "b": 1}
