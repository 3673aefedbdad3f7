"""detect / segment end to end on the demo model: an fp32 bundle (mask decoder included) against the PyTorch
reference (transformers' tokens, masks decoded by the demo's torch VQ-VAE), IoU with the generator's
ground truth, the CLI's JSON and overlay, and bundles without a mask decoder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pgexport.bench import metrics
from pgexport_runtime.masks import paste_mask
from tools.demo_model import evaluate

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "pg-demo"
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").is_file(),
                                reason="the demo model (models/pg-demo/model.safetensors) is not trained yet")
N = 8  # held-out examples per task


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A copy of models/pg-demo: the trainer may rewrite model.safetensors while the tests run."""
    from safetensors import safe_open

    dst = tmp_path_factory.mktemp("demo") / "pg-demo"
    for _ in range(5):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(MODEL_DIR, dst)
        try:
            with safe_open(str(dst / "model.safetensors"), "np") as f:
                [f.get_tensor(k) for k in f.keys()]
            return dst
        except Exception:  # copied mid-write: try again
            time.sleep(3)
    pytest.skip("models/pg-demo/model.safetensors kept changing while being copied")


@pytest.fixture(scope="module")
def bundle(snapshot, tmp_path_factory) -> Path:
    from pgexport.build.bundle_steps import BuildOptions, build

    return build(BuildOptions(model=str(snapshot), out=tmp_path_factory.mktemp("b") / "bundle"))


@pytest.fixture(scope="module")
def pg(bundle):
    from pgexport_runtime import PaliGemma, SessionConfig

    return PaliGemma(bundle, SessionConfig(intra_op_threads=1))


@pytest.fixture(scope="module")
def cases(snapshot, pg) -> dict:
    """Per task: examples, runtime answers, and transformers' greedy texts for the same inputs."""
    import torch

    from tools.demo_model.vqvae import load_vqvae

    torch.set_num_threads(1)
    model, processor = evaluate.load(snapshot)
    out = {"vq": load_vqvae(snapshot)}
    for task in ("detect", "segment"):
        exs = evaluate.eval_examples(task, N)
        n_new = evaluate.TASK_MAX_NEW[task]
        ref = evaluate.generate(model, processor, exs, n_new, batch_size=N)
        ours = pg.answers([e.scene.image for e in exs], [e.prefix for e in exs], max_new_tokens=n_new)
        out[task] = (exs, ours, ref)
    return out


def test_bundle_records_and_checks_the_mask_decoder(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    entry = m["graphs"]["mask_decoder"]
    assert entry["file"] == "mask_decoder.onnx" and entry["file"] in m["files"]
    assert entry["inputs"] == ["seg_codes"] and entry["outputs"] == ["masks"] and entry["num_codes"] == 128
    check = m["parity"]["checks"]["mask_decoder"]
    assert check["ok"] and check["relative"] <= 1e-3 and m["parity"]["ok"]


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_answers_equal_the_pytorch_reference(cases, task):
    """Same tokens as transformers, so the same boxes (exactly) and masks (the demo's torch VQ-VAE)."""
    exs, ours, ref = cases[task]
    S = exs[0].scene.image.width
    compared = 0
    for e, a, r in zip(exs, ours, ref):
        assert a.text.strip() == r, (e.prefix, a.text, r)
        if a.warnings:  # malformed (an undertrained model)
            continue
        compared += 1
        objs = metrics.objects(r, S, S)
        boxes = [o for o in objs if o.codes is None]
        masks = [o for o in objs if o.codes is not None]
        assert len(a.detections) == len(boxes) and len(a.segments) == len(masks)
        for g, o in zip([*a.detections, *a.segments], boxes + masks):
            assert g.label == o.label and g.box == pytest.approx(o.box, abs=1e-9)
        for s, o in zip(a.segments, masks):
            ref_mask = paste_mask(cases["vq"].decode_np(np.array([o.codes]))[0], o.box, S, S)
            assert (s.mask != ref_mask).sum() <= 2, "ONNX and PyTorch masks differ"  # a pixel at 0 may flip
    assert compared >= len(exs) // 2


def test_iou_with_ground_truth(cases):
    """Box and mask IoU of the bundle's answers equal the PyTorch reference's, and clear the demo model's
    quality bars (detect mean matched IoU >= 0.75, segment mean mask IoU >= 0.6)."""
    exs, ours, ref = cases["detect"]
    rows = [metrics.detection_scores([(o.kind, evaluate.xy(o.box)) for o in e.targets], a.detections)
            for e, a in zip(exs, ours)]
    box_iou = metrics.summarize_detection(rows)["mean_matched_iou"]
    ref_box_iou = evaluate.score("detect", exs, ref)["detect_miou"]
    assert box_iou == pytest.approx(ref_box_iou, abs=1e-9)

    exs, ours, ref = cases["segment"]
    mious = []
    for e, a in zip(exs, ours):
        segs = [s for s in a.segments if s.label == e.classes[0]]
        iou = np.array([[metrics.mask_iou(o.mask, s.mask) for s in segs] for o in e.targets]).reshape(-1, len(segs))
        mious.append(sum(iou[i, j] for i, j in metrics.match(iou)) / max(len(e.targets), len(segs), 1))
    ref_miou = evaluate.score("segment", exs, ref, decode_fn=cases["vq"].decode_np)["segment_miou"]
    assert np.mean(mious) == pytest.approx(ref_miou, abs=0.01)

    # the quality bars of the demo model (its card: 0.897 and 0.878 on 200 items of a fresh seed); on these 8
    # items the bundle must clear them as PyTorch does
    assert not evaluate.check_bars({"detect_miou": box_iou, "segment_miou": float(np.mean(mious))}), \
        (box_iou, float(np.mean(mious)))


def test_cli_json_and_overlay(bundle, tmp_path, capsys):
    from PIL import Image

    from pgexport.cli import main
    from pgexport_runtime.masks import rle_to_mask

    ex = evaluate.eval_examples("segment", 1)[0]
    img_path, png = tmp_path / "in.png", tmp_path / "out.png"
    ex.scene.image.save(img_path)
    argv, sys.argv = sys.argv, ["pgexport", "run", str(bundle), "--image", str(img_path), "--prompt", ex.prefix,
                                "--json", "--overlay", str(png), "--threads", "1"]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code
    finally:
        sys.argv = argv
    j = json.loads(capsys.readouterr().out)
    assert {"prompt", "text", "tokens", "detections", "segments", "warnings"} <= set(j)
    assert j["segments"], j["text"]
    for s in j["segments"]:
        mask = rle_to_mask(s["mask"])
        assert mask.shape == (128, 128) and mask.sum() == s["area"]
    out = Image.open(png)
    assert out.size == ex.scene.image.size
    x0, y0, x1, y1 = (int(round(v)) for v in j["segments"][0]["box"])
    diff = np.abs(np.asarray(out.convert("RGB"), np.int16) - np.asarray(ex.scene.image, np.int16)).sum(-1) > 0
    assert diff[y0:y1, x0:x1].any() and diff[y0:y1, max(0, x0 - 1):x0 + 2].any()  # mask and box edge drawn


def test_user_mistakes_with_overlay(tmp_path, capsys):
    from pgexport.cli import main

    img = tmp_path / "in.png"
    evaluate.eval_examples("detect", 1)[0].scene.image.save(img)
    mistakes = ((tmp_path / "no" / "x.png", "does not exist"), (tmp_path / "x.nope", "unknown image format"))
    for target, needle in mistakes:
        argv, sys.argv = sys.argv, ["pgexport", "run", str(tmp_path / "nobundle"), "--image", str(img),
                                    "--prompt", "detect star", "--overlay", str(target)]
        try:
            with pytest.raises(SystemExit) as exc:
                main()
        finally:
            sys.argv = argv
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_bundle_without_mask_decoder_still_loads(bundle, tmp_path):
    """Old bundles have no mask_decoder entry: they load, and segment answers say masks were not decoded."""
    from pgexport_runtime import BundleError, PaliGemma

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["graphs"]["mask_decoder"], m["files"]["mask_decoder.onnx"]
    (old / "mask_decoder.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    ex = evaluate.eval_examples("segment", 1)[0]
    a = PaliGemma(old).answer(ex.scene.image, ex.prefix, max_new_tokens=40)
    assert all(s.mask is None for s in a.segments)
    assert not a.segments or any("no mask decoder" in w for w in a.warnings)

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / "mask_decoder.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(BundleError, match="mask_decoder.onnx does not match its sha256"):
        PaliGemma(tampered)


SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "pgexport"):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Block())
    from PIL import Image
    from pgexport_runtime import PaliGemma
    from pgexport_runtime.overlay import draw_answer

    a = PaliGemma(sys.argv[1]).answer(Image.open(sys.argv[2]), sys.argv[3], max_new_tokens=100)
    draw_answer(Image.open(sys.argv[2]), a)
    print(json.dumps({"segments": len(a.segments), "masks": sum(s.mask is not None for s in a.segments)}))
""")


def test_answers_and_masks_run_without_torch(bundle, tmp_path):
    ex = evaluate.eval_examples("segment", 1)[0]
    ex.scene.image.save(tmp_path / "in.png")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), str(tmp_path / "in.png"), ex.prefix],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["masks"] == r["segments"]
