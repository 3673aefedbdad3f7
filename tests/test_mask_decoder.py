"""The mask-decoder graph: weights loading (PyTorch and big_vision names, checked loudly), ONNX vs PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pgexport.export import mask_decoder as md
from pgexport_runtime.errors import UserError

DEMO_VQVAE = Path(__file__).resolve().parents[1] / "models" / "pg-demo" / "vqvae.safetensors"
pytestmark = pytest.mark.skipif(not DEMO_VQVAE.is_file(), reason="models/pg-demo/vqvae.safetensors not there yet")


@pytest.fixture(scope="module")
def tensors() -> dict:
    from safetensors.numpy import load_file

    return load_file(str(DEMO_VQVAE))


@pytest.fixture(scope="module")
def onnx_decoder(tmp_path_factory):
    from pgexport.export.onnx_export import export_graph, param_bytes

    m = md.load(DEMO_VQVAE)
    path = tmp_path_factory.mktemp("mask") / "mask_decoder.onnx"
    export_graph(m, md.sample_inputs(), path, md.INPUT_NAMES, md.OUTPUT_NAMES, md.DYNAMIC_SHAPES, param_bytes(m))
    return m, path


def test_onnx_matches_pytorch_and_the_demo_vqvae(onnx_decoder):
    import torch

    from pgexport.verify import mask_parity
    from tools.demo_model.vqvae import load_vqvae
    from pgexport_runtime.masks import MaskDecoder

    module, path = onnx_decoder
    report = mask_parity.check(path, module, relative=1e-4)
    assert report["ok"] and report["pixels_flipped"] == 0, report
    codes = np.random.default_rng(5).integers(0, 128, (5, 16))  # a batch size the export never saw
    got = MaskDecoder(path)(codes)
    demo = load_vqvae(DEMO_VQVAE.parent).decode_np(codes)  # the demo's own decoder (another implementation)
    with torch.no_grad():
        ours = module(torch.from_numpy(codes)).numpy()
    assert got.shape == (5, 64, 64) and got.dtype == np.float32
    np.testing.assert_array_equal(ours, demo)
    np.testing.assert_allclose(got, demo, atol=1e-4 * np.abs(demo).max())


def _big_vision_params(tensors: dict) -> dict:
    """The demo weights as big_vision's Flax params (its `_get_params`: kernels OIHW -> HWIO), flattened."""
    out = {}
    for torch_name, flax_name in md.BIG_VISION_NAMES.items():
        v = tensors[torch_name]
        out["params/" + flax_name] = np.transpose(v, (2, 3, 1, 0)) if v.ndim == 4 else v
    return out


def test_big_vision_names_load_the_same_decoder(tensors, tmp_path):
    import torch

    assert len(md.BIG_VISION_NAMES) == 25 == len(md.expected_shapes(128, 64, 64))
    npz = tmp_path / "vae-bv.npz"
    np.savez(npz, **_big_vision_params(tensors))
    torch_npz = tmp_path / "vae-oid.npz"  # the released file's layout: PyTorch names
    np.savez(torch_npz, **{k: v for k, v in tensors.items() if not k.startswith("encoder.")})
    codes = torch.from_numpy(np.random.default_rng(0).integers(0, 128, (3, 16)))
    with torch.no_grad():
        ref = md.load(DEMO_VQVAE)(codes)
        assert torch.equal(md.load(npz)(codes), ref)
        assert torch.equal(md.load(torch_npz)(codes), ref)


def test_bad_weights_fail_loudly(tensors, tmp_path):
    missing = {k: v for k, v in tensors.items() if k != "decoder.4.bias"}
    with pytest.raises(UserError, match="missing.*decoder.4.bias"):
        md.from_tensors(missing, "x")
    wrong = dict(tensors, **{"decoder.6.weight": np.zeros((64, 31, 4, 4), np.float32)})
    with pytest.raises(UserError, match="shape mismatch: decoder.6.weight"):
        md.from_tensors(wrong, "x")
    extra = dict(tensors, **{"decoder.14.weight": np.zeros((1,), np.float32)})
    with pytest.raises(UserError, match="unexpected.*decoder.14.weight"):
        md.from_tensors(extra, "x")
    with pytest.raises(UserError, match="no mask decoder codebook"):
        md.from_tensors({"foo": np.zeros(3)}, "x")
    pickled = tmp_path / "vae.npz"
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="cannot read"):
        md.load(pickled)
    for name in ("vae.pt", "nothere.npz"):
        (tmp_path / "vae.pt").write_bytes(b"\x80\x04")
        with pytest.raises(UserError):
            md.load(tmp_path / name)


def test_build_rejects_bad_mask_decoder_before_exporting(tmp_path):
    from pgexport.build.bundle_steps import BuildOptions, build

    out = tmp_path / "bundle"
    with pytest.raises(UserError, match="mask decoder weights not found"):
        build(BuildOptions(model="tiny-pg1", out=out, mask_decoder=tmp_path / "nope.npz", skip_parity=True))
    assert not out.exists() and not list(tmp_path.glob(".pgexport-tmp-*"))
