"""`pgexport package`: built bundles -> ORT format (onnxruntime's converter), same tokens, mobile verdicts recorded."""

from __future__ import annotations

import json
import shutil

import pytest

from pgexport.package import OPERATORS_CONFIG, package
from pgexport.quant.recipes import RECIPES
from pgexport_runtime import PaliGemma
from pgexport_runtime.errors import BundleError, UserError
from pgexport_runtime.manifest import load_manifest
from test_quant import quantized_copy

PROMPTS = ["caption en", "detect cat ; dog", "answer en what is left of the circle?"]


def _tokens(bundle, images):
    pg = PaliGemma(bundle)
    return [pg(im, p, max_new_tokens=10).tokens for im in images for p in PROMPTS]


@pytest.mark.parametrize("kind", ["fp32-tiny-pg1", "fp32-tiny-pg2", "int4-tiny-pg1"])
def test_ort_bundle_answers_exactly_as_its_source(bundles, images, tmp_path, kind):
    quant, name = kind.split("-", 1)
    src = bundles[name]
    if quant == "int4":
        quantized_copy(src, tmp_path / "int4", RECIPES["int4"])
        src = tmp_path / "int4"
    out = package(src, tmp_path / "ort")
    m = load_manifest(out)  # every sha256 checked
    assert {e.file for e in m.graphs.values()} == {"vision_encoder.ort", "projector.ort", "decoder.ort"}
    assert not any(e.data_files for e in m.graphs.values()) and not list(out.glob("*.onnx*"))
    assert _tokens(out, images) == _tokens(src, images)
    ops = (out / OPERATORS_CONFIG).read_text()
    assert OPERATORS_CONFIG in m.files and "nchwc" not in ops.lower()  # nothing x86-only baked in
    if quant == "int4":
        assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    mobile = m.record.package["mobile"]
    assert set(mobile) == {"vision_encoder", "projector", "decoder"}
    for verdicts in mobile.values():
        assert set(verdicts) == {"nnapi", "coreml_nn", "coreml_mlprogram"}
        assert all(0 <= v["supported_nodes"] <= v["nodes"] and v["as_is"] in ("YES", "MAYBE", "NO")
                   for v in verdicts.values())


def test_package_refuses_what_it_should(bundles, tmp_path):
    out = package(bundles["tiny-pg1"], tmp_path / "ort", mobile_check=False)
    with pytest.raises(UserError, match="already a packaged"):
        package(out, tmp_path / "again")
    with pytest.raises(UserError, match="already exists"):
        package(bundles["tiny-pg1"], out)
    bad = tmp_path / "tampered"
    shutil.copytree(bundles["tiny-pg1"], bad)
    with open(bad / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="does not match its sha256"):
        package(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    tampered = tmp_path / "ort-tampered"
    shutil.copytree(out, tampered)
    data = bytearray((tampered / "decoder.ort").read_bytes())
    data[len(data) // 2] ^= 1
    (tampered / "decoder.ort").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        PaliGemma(tampered)


def test_cli_packages_and_inspect_shows_the_mobile_verdicts(bundles, tmp_path, capsys):
    from test_errors import run_cli

    out = tmp_path / "ort"
    code, stdout, _ = run_cli(["package", bundles["tiny-pg2"], "--out", out], capsys)
    assert code == 0 and "NNAPI:" in stdout
    code, stdout, _ = run_cli(["inspect", out], capsys)
    assert code == 0 and "package  ort" in stdout
    for label in ("NNAPI:", "CoreML NeuralNetwork:", "CoreML MLProgram:"):
        line = next(ln for ln in stdout.splitlines() if label in ln)
        assert "decoder" in line and "nodes" in line
    assert json.loads((out / "manifest.json").read_text())["package"]["format"] == "ort"
