"""GPTQ checkpoint import: auto-gptq/gptqmodel tensors -> MatMulNBits, reproducing the dequantized weights."""

from __future__ import annotations

import numpy as np
import torch
import onnx_ir as ir
import onnxruntime as ort
import pytest

from pgexport.nbits import dequantize
from pgexport_runtime import PaliGemma
from pgexport_runtime.errors import UserError
from pgexport.source.gptq_import import dequantize_linear, read_linear, to_matmulnbits
from pgexport.quant.recipes import Precision, Recipe
from pgexport.quant.rewrite import GraphReport, check_fast_path, rewrite_linears


def _pack_rows(vals: np.ndarray, bits: int) -> np.ndarray:
    """Independent re-implementation of auto-gptq's packing: uint values [R, C] -> int32 [R*bits/32, C]."""
    per = 32 // bits
    v = vals.astype(np.uint64).reshape(vals.shape[0] // per, per, vals.shape[1])
    out = np.zeros((v.shape[0], v.shape[2]), dtype=np.uint64)
    for i in range(per):
        out |= v[:, i, :] << np.uint64(bits * i)
    return out.astype(np.uint32).view(np.int32)


def make_checkpoint(k=128, n=48, bits=4, group=32, act_order=False, v1=True, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**bits, size=(k, n))
    groups = k // group
    zeros = rng.integers(1, 2**bits - 1, size=(groups, n))
    scales = (rng.random((groups, n)) * 0.02 + 0.001).astype(np.float16)
    g_idx = np.arange(k) // group
    if act_order:
        g_idx = g_idx[rng.permutation(k)]
    stored_zeros = (zeros - 1) if v1 else zeros
    tensors = {
        "p.qweight": _pack_rows(codes, bits),
        "p.qzeros": _pack_rows(stored_zeros.T, bits).T.copy(),
        "p.scales": scales,
        "p.g_idx": g_idx.astype(np.int32),
    }
    w = (scales.astype(np.float32)[g_idx] * (codes - zeros[g_idx]).astype(np.float32)).T  # [N, K]
    return tensors, w


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_import_reproduces_dequantized_weights_exactly(act_order, v1, bits):
    tensors, w = make_checkpoint(bits=bits, act_order=act_order, v1=v1)
    lin = read_linear(tensors, "p", bits, 32, v1=v1)
    assert np.array_equal(dequantize_linear(lin), w)
    packed = to_matmulnbits(lin)
    w_kn = dequantize(packed)  # [K, N] in the (possibly permuted) input order MatMulNBits sees
    if packed.input_perm is not None:
        assert act_order
        restored = np.empty_like(w_kn)
        restored[packed.input_perm] = w_kn
        w_kn = restored
    else:
        assert not act_order
    assert np.array_equal(w_kn.T, w)


@pytest.mark.parametrize("act_order", [False, True])
def test_imported_matmulnbits_runs_on_the_fast_path_and_matches(act_order):
    tensors, w = make_checkpoint(act_order=act_order)
    packed = to_matmulnbits(read_linear(tensors, "p", 4, 32, v1=True))
    x = ir.val("x", ir.DataType.FLOAT, ["b", 128])
    weight = ir.Value(name="w", const_value=ir.tensor(np.ascontiguousarray(w.T)))
    mm = ir.node("MatMul", [x, weight], name="mm", metadata_props={"pkg.torch.onnx.name_scopes": "['', 'layers.0.mlp.down_proj', 'linear']"})
    mm.outputs[0].name = "y"
    graph = ir.Graph([x], mm.outputs, nodes=[mm], initializers=[weight], opset_imports={"": 18})
    recipe = Recipe("t", "", decoder_linear=Precision("int4-gptq", block_size=32))
    rewrite_linears(graph, "decoder_linear", recipe, GraphReport(), {"layers.0.mlp.down_proj": packed})
    assert [n.op_type for n in graph] == (["Gather"] if act_order else []) + ["MatMulNBits"]
    assert check_fast_path(graph) == []
    model = ir.Model(graph, ir_version=10)
    model.opset_imports["com.microsoft"] = 1
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
    xs = np.random.default_rng(1).normal(size=(3, 128)).astype(np.float32)
    (y,) = sess.run(None, {"x": xs})
    assert np.abs(y - xs @ w.T).max() < 1e-4 * np.abs(xs @ w.T).max()


def _asym_codes(w_nk: np.ndarray, group: int):
    """A plain asymmetric 4-bit quantizer (the test's own, independent of pgexport's)."""
    n, k = w_nk.shape
    g = w_nk.reshape(n, k // group, group)
    lo, hi = g.min(-1), g.max(-1)
    scale = np.maximum(hi - lo, 1e-8) / 15
    zero = np.clip(np.round(-lo / scale), 0, 15)
    codes = np.clip(np.round(g / scale[..., None]) + zero[..., None], 0, 15)
    # C order: astype keeps a transposed view's layout, and safetensors writes the buffer as it lies
    return (codes.reshape(n, k).T.astype(np.int64), zero.T.astype(np.int64),
            np.ascontiguousarray(scale.T.astype(np.float16)))


def test_build_from_a_gptq_checkpoint_reproduces_it(tmp_path):
    """A GPTQ PaliGemma (auto-gptq v1 tensors, one act-order layer) builds into MatMulNBits graphs whose
    greedy output equals the dequantized PyTorch model's on every gate sample."""
    import json
    import shutil

    import onnx
    from safetensors.numpy import save_file

    from pgexport.source import sources
    from pgexport.build.bundle_steps import BuildOptions, build

    src = sources.resolve("tiny-pg1")
    model = sources.load_model(src)
    ckpt = tmp_path / "gptq-ckpt"
    shutil.copytree(src.directory, ckpt, ignore=shutil.ignore_patterns("*.safetensors*"))  # config, tokenizer
    rng = np.random.default_rng(0)
    tensors, independent = {}, {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to the embedding
        name = key[: -len(".weight")]
        if key.startswith("model.language_model.layers.") and key.endswith("proj.weight"):
            codes, zeros, scales = _asym_codes(value.numpy(), 32)
            k = codes.shape[0]
            g_idx = np.arange(k) // 32
            if name.endswith("layers.1.mlp.down_proj"):  # act-order: a permuted grouping
                perm = rng.permutation(k)
                codes, g_idx = codes[perm], g_idx[perm]
            tensors[f"{name}.qweight"] = _pack_rows(codes, 4)
            tensors[f"{name}.qzeros"] = _pack_rows(((zeros - 1) & 15).T, 4).T.copy()  # v1: zero - 1
            tensors[f"{name}.scales"] = scales
            tensors[f"{name}.g_idx"] = g_idx.astype(np.int32)
            # the weight these tensors mean, computed here and nowhere in pgexport (auto-gptq v1 stores
            # zero - 1 wrapped to 4 bits; its kernels add the 1 back and wrap again, so the zero is `zeros`)
            scale = scales.astype(np.float32)[g_idx]  # [K, N]
            w = scale * (codes - zeros[g_idx])
            independent[key] = torch.from_numpy(np.ascontiguousarray(w.T.astype(np.float32)))
        else:
            tensors[key] = value.numpy()
    save_file(tensors, str(ckpt / "model.safetensors"))
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True,
                                     "sym": False, "checkpoint_format": "gptq"}
    (ckpt / "config.json").write_text(json.dumps(config))

    recipe = tmp_path / "import-only.json"  # only the decoder linears, from the checkpoint's own integers
    recipe.write_text(json.dumps({"base": "fp32", "decoder_linear": "int4-gptq"}))
    with pytest.raises(UserError, match=r"^--stream does not yet support a GPTQ checkpoint"):
        build(BuildOptions(model=str(ckpt), out=tmp_path / "streamed", quant=str(recipe), stream=True))
    out = build(BuildOptions(model=str(ckpt), out=tmp_path / "bundle", quant=str(recipe), gate_samples=6,
                             gate_tokens=12, parity_tokens=8))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["ok"]  # the fp32 graphs are the dequantized model
    acc = manifest["quantization"]["accuracy"]
    assert acc["sequence_agreement"] == 1.0 and acc["token_agreement"] == 1.0 and acc["mean_kl"] < 1e-6

    # an independent reference: transformers with the weights the test computed itself from its own codes
    from pgexport.verify.parity import PROMPTS, parity_image

    with torch.no_grad():
        for key, w in independent.items():
            model.get_parameter(key).copy_(w)
    from checkpoints import hf_greedy

    image = parity_image(40, seed=3)
    pg = PaliGemma(out)
    for prompt in PROMPTS:
        want = hf_greedy(model, src.directory, [image], [prompt], 12)[0]
        assert len(set(want)) >= 4
        assert pg(image, prompt, max_new_tokens=12).tokens == want, prompt
    ops = [n.op_type for n in onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph.node]
    assert ops.count("Gather") >= 1 and "MatMul" in ops  # the act-order layer reads permuted activations
    assert sum(op == "MatMulNBits" for op in ops) == 3 * 7  # every projection (the table stays fp32 here)
