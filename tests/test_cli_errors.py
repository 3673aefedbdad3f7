"""User mistakes: one line on stderr, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from pgexport.cli import main


def run_cli(args, capsys) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["pgexport", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code, err, needle):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundles["tiny-pg1"], dst)
    return dst


@pytest.fixture
def image_file(images, tmp_path):
    p = tmp_path / "img.png"
    images[0].save(p)
    return p


def test_run_ok(bundle_copy, image_file, capsys):
    code, out, err = run_cli(["run", bundle_copy, "--image", image_file, "--prompt", "caption en", "--json",
                              "--max-new-tokens", "5"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["tokens"]) == 5 and isinstance(result["text"], str)


def test_missing_bundle_file(bundle_copy, image_file, capsys):
    (bundle_copy / "projector.onnx").unlink()
    code, _, err = run_cli(["run", bundle_copy, "--image", image_file, "--prompt", "caption en"], capsys)
    assert_one_line_error(code, err, "missing bundle file projector.onnx")


def test_tampered_file(bundle_copy, image_file, capsys):
    path = bundle_copy / "tokenizer.json"
    path.write_text(path.read_text().replace("<loc0001>", "<loc9991>"))
    code, _, err = run_cli(["run", bundle_copy, "--image", image_file, "--prompt", "caption en"], capsys)
    assert_one_line_error(code, err, "does not match its sha256")


def test_unreadable_image(bundle_copy, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    code, _, err = run_cli(["run", bundle_copy, "--image", bad, "--prompt", "caption en"], capsys)
    assert_one_line_error(code, err, "cannot read image")


def test_missing_image(bundle_copy, tmp_path, capsys):
    code, _, err = run_cli(["run", bundle_copy, "--image", tmp_path / "nope.jpg", "--prompt", "ocr"], capsys)
    assert_one_line_error(code, err, "image not found")


def test_empty_prompt(bundle_copy, image_file, capsys):
    code, _, err = run_cli(["run", bundle_copy, "--image", image_file, "--prompt", "  "], capsys)
    assert_one_line_error(code, err, "empty prompt")


def test_graph_onnxruntime_cannot_load_is_one_line(bundle_copy, image_file, capsys):
    """A graph that passes the sha256 check but names a weights file that is gone (what a build bug once wrote)."""
    import onnx

    from pgexport_runtime.manifest import sha256_file

    path = bundle_copy / "projector.onnx"
    onnx.save(onnx.load(path), path, save_as_external_data=True, location="projector.onnx.data", size_threshold=0)
    (bundle_copy / "projector.onnx.data").unlink()
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["projector.onnx"] = sha256_file(path)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["run", bundle_copy, "--image", image_file, "--prompt", "caption en"], capsys)
    assert_one_line_error(code, err, "projector.onnx: onnxruntime cannot load this graph")


def test_unknown_schema_version(bundle_copy, image_file, capsys):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 99
    path.write_text(json.dumps(manifest))
    code, _, err = run_cli(["inspect", bundle_copy], capsys)
    assert_one_line_error(code, err, "schema version 99 is not supported")


def test_not_a_bundle(tmp_path, capsys):
    code, _, err = run_cli(["inspect", tmp_path], capsys)
    assert_one_line_error(code, err, "not a pgexport bundle")


def test_unknown_model(tmp_path, capsys):
    code, _, err = run_cli(["build", "--model", "no-such-model", "--out", tmp_path / "b"], capsys)
    assert_one_line_error(code, err, "not a preset")
    assert not (tmp_path / "b").exists()


def test_checkpoint_dir_without_safetensors(tmp_path, capsys):
    from pgexport.source import sources

    ckpt = tmp_path / "ckpt"
    # the preset's config and tokenizer; not its weights, which a streamed build may have written beside them
    shutil.copytree(sources.resolve("tiny-pg1").directory, ckpt, ignore=shutil.ignore_patterns("*.safetensors*"))
    (ckpt / "pytorch_model.bin").write_bytes(b"pickle would be here")
    code, _, err = run_cli(["build", "--model", ckpt, "--out", tmp_path / "b"], capsys)
    assert_one_line_error(code, err, "pickle files are never loaded")


def test_existing_output_needs_force(bundle_copy, capsys):
    code, _, err = run_cli(["build", "--model", "tiny-pg1", "--out", bundle_copy], capsys)
    assert_one_line_error(code, err, "already exists")


def test_failed_parity_writes_nothing(tmp_path, capsys):
    """Tolerance 0 cannot be met by float32 kernels: the build fails and leaves no bundle, no temp dir."""
    out = tmp_path / "strict"
    code, _, err = run_cli(["build", "--model", "tiny-pg1", "--out", out, "--tolerance", "0"], capsys)
    assert code != 0 and "Traceback" not in err
    assert "parity check failed" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_hub_id_offline_says_how_to_use_a_local_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli(["build", "--model", "google/paligemma-3b-pt-224", "--out", tmp_path / "b"], capsys)
    assert_one_line_error(code, err, "could not fetch 'google/paligemma-3b-pt-224'")
    assert "--model /path/to/paligemma-3b-pt-224" in err


def test_cuda_without_onnxruntime_gpu_is_a_clear_error(bundle_copy, image_file, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    code, _, err = run_cli(["run", bundle_copy, "--image", image_file, "--prompt", "ocr", "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "device cuda needs onnxruntime-gpu")
