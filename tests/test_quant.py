"""Quantization: recipes build and run, graphs are wired right, GPTQ beats RTN, no slow paths, the gate bites."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from pgexport.quant.apply import quantize_graphs
from pgexport.nbits import dequantize, pack_rtn, pack_rtn_rows, unpack_ints
from pgexport.quant.gptq import gptq_quantize, to_packed
from pgexport.quant.recipes import RECIPES, Precision, resolve_recipe
from pgexport_runtime import PaliGemma
from pgexport_runtime.errors import UserError
from pgexport_runtime import decoder
from pgexport_runtime.kv_cache import KVCache
from pgexport_runtime.manifest import sha256_file
from pgexport_runtime.session import SessionConfig, create_session

GRAPHS = {"vision_encoder": "vision_encoder.onnx", "projector": "projector.onnx", "decoder": "decoder.onnx"}


def quantized_copy(src, dst, recipe, gptq=None):
    """Apply a recipe to a copy of an fp32 bundle and refresh its manifest (what `build --quant` does)."""
    shutil.copytree(src, dst)
    report = quantize_graphs({k: dst / f for k, f in GRAPHS.items()}, recipe, gptq)
    manifest = json.loads((dst / "manifest.json").read_text())
    for name, f in GRAPHS.items():
        manifest["graphs"][name]["data_files"] = [p.name for p in dst.iterdir() if p.name.startswith(f + ".")]
        manifest["graphs"][name]["precision"] = report[name]["precision"]
    manifest["files"] = {p.name: sha256_file(p) for p in dst.iterdir() if p.name != "manifest.json"}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return report


@pytest.mark.parametrize("name", [n for n in RECIPES if not RECIPES[n].uses_gptq])  # GPTQ needs its calibration
def test_every_recipe_builds_and_generates(bundles, images, tmp_path, name):
    report = quantized_copy(bundles["tiny-pg1"], tmp_path / name, RECIPES[name])
    result = PaliGemma(tmp_path / name)(images[0], "caption en", max_new_tokens=6)
    assert len(result.tokens) == 6
    if name != "fp32":
        assert any(label != "fp32" for g in report.values() for label in g["weights"].values())


def _nodes(path):
    return onnx.load(str(path), load_external_data=False).graph


def test_int4_decoder_shares_one_table_for_embedding_and_lm_head(bundles, tmp_path):
    g = bundles["tiny-pg1"]
    quantized_copy(g, tmp_path / "q", RECIPES["int4-rtn-b32"])
    graph = _nodes(tmp_path / "q" / "decoder.onnx")
    gbq = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    head = [n for n in nbits if n.input[1] == gbq[0].input[0]]
    assert len(gbq) == 1 and len(head) == 1  # the lm_head reads the embedding's packed table
    assert not [n for n in graph.node if n.op_type in ("Gather", "MatMul") and n.input[0].startswith("embed")]
    vocab_by_hidden = 1728 * 64
    float_tables = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                    and int(np.prod(i.dims)) == vocab_by_hidden]
    assert float_tables == []  # no float copy of the [vocab, hidden] table is left behind
    packed = [i for i in graph.initializer if i.name == gbq[0].input[0]]
    assert len(packed) == 1 and int(np.prod(packed[0].dims)) == vocab_by_hidden // 2  # 4 bits per weight


@pytest.mark.parametrize("kind,block", [("int4", 32), ("int4", 64), ("int8-wo", 32)])
def test_quantized_decoder_equals_torch_with_the_same_dequantized_weights(tiny, bundles, images, tmp_path, kind, block):
    """Wiring check: every rewritten weight lands where it belongs (errors would be O(1), not 1e-5)."""
    p = Precision(kind, block_size=block)
    recipe = replace(RECIPES["fp32"], name="t", decoder_linear=p, embedding=p, lm_head=p)
    quantized_copy(bundles[tiny.name], tmp_path / "q", recipe)
    model = tiny.model
    lm = model.model.language_model
    saved = {k: v.clone() for k, v in lm.state_dict().items()}
    try:
        with torch.no_grad():
            for mod in lm.modules():
                if isinstance(mod, torch.nn.Linear):
                    w = dequantize(pack_rtn(mod.weight.numpy().T, p.bits, block)).T
                    mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            e = dequantize(pack_rtn(lm.embed_tokens.weight.numpy().T, p.bits, block)).T
            lm.embed_tokens.weight.copy_(torch.from_numpy(np.ascontiguousarray(e)))
            inputs = tiny.hf_inputs(images[:2], ["caption en", "detect cat ; dog"])
            ref = model(**inputs).logits.numpy()
            embeds = model.model.get_image_features(inputs["pixel_values"]).pooler_output.numpy()
    finally:
        lm.load_state_dict(saved)
    got, real = _bundle_prefill(tmp_path / "q", inputs, embeds)
    assert np.abs(got[real] - ref[real]).max() <= 1e-4 * np.abs(ref[real]).max()


def _bundle_prefill(bundle, inputs, embeds):
    """The bundle decoder's logits at every position of transformers' (left-padded) inputs, on the given image
    embeddings; and the mask of real positions."""
    pg = PaliGemma(bundle)
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    got = decoder.prefill(pg.graphs, pg.geometry, KVCache(pg.geometry, ids.shape[0], ids.shape[1]), ids, embeds,
                          mask, logits_index=np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1)))
    return got, mask.astype(bool)


def test_fp16_decoder_equals_torch_with_fp16_rounded_weights(tiny, bundles, images, tmp_path):
    """The fp16 recipe stores the decoder's weights in float16 and computes in float32: its decoder equals
    PyTorch whose language-model linears and embedding table are rounded to float16 (on the same image
    embeddings), and is measurably not the float32 model."""
    quantized_copy(bundles[tiny.name], tmp_path / "q", RECIPES["fp16"])
    model = tiny.model
    lm = model.model.language_model
    saved = {k: v.clone() for k, v in lm.state_dict().items()}
    inputs = tiny.hf_inputs(images[:2], ["caption en", "detect cat ; dog"])
    try:
        with torch.no_grad():
            exact = model(**inputs).logits.numpy()
            for mod in lm.modules():
                if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                    mod.weight.copy_(mod.weight.to(torch.float16).to(torch.float32))
            ref = model(**inputs).logits.numpy()
            embeds = model.model.get_image_features(inputs["pixel_values"]).pooler_output.numpy()
    finally:
        lm.load_state_dict(saved)
    got, real = _bundle_prefill(tmp_path / "q", inputs, embeds)
    err = np.abs(got[real] - ref[real]).max()
    assert err <= 1e-4 * np.abs(ref[real]).max()
    assert np.abs(exact[real] - ref[real]).max() > 10 * err  # the rounding is real, and the bundle has it


def test_no_produced_graph_has_a_slow_path_matmulnbits(bundles, tmp_path):
    for name in ("int4-rtn-b32", "int8-wo", "int4-rtn-b128"):
        quantized_copy(bundles["tiny-pg2"], tmp_path / name, RECIPES[name])
        for f in GRAPHS.values():
            for node in _nodes(tmp_path / name / f).node:
                if node.op_type == "MatMulNBits":
                    assert len(node.input) <= 4 or not node.input[4], "g_idx present"


def test_the_decoders_8bit_blocks_compute_with_int8_activations_but_in_int8_wo():
    """onnxruntime has no float kernel for 8-bit MatMulNBits: at accuracy_level 0 it unpacks the weight on every
    call (0.1 tokens/s at PaliGemma-3B). Every named recipe's 8-bit decoder linears and table run at level 4 but
    int8-wo's, which is for small models and accuracy studies."""
    checked = 0
    for name, recipe in RECIPES.items():
        for component in ("decoder_linear", "embedding", "lm_head"):
            prec = recipe.precision_for(component, None)
            if prec.bits == 8:
                checked += 1
                assert prec.accuracy_level == (0 if name == "int8-wo" else 4), (name, component)
    assert checked >= 3 * 3


def test_fast_path_check_flags_g_idx():
    import onnx_ir as ir

    from pgexport.quant.rewrite import check_fast_path

    x = ir.val("x", ir.DataType.FLOAT, [1, 32])
    g_idx = ir.Value(name="g_idx", const_value=ir.tensor(np.zeros(32, np.int32)))
    node = ir.node("MatMulNBits", [x, None, None, None, g_idx], domain="com.microsoft", name="bad")
    graph = ir.Graph([x], node.outputs, nodes=[node])
    assert any("g_idx" in p for p in check_fast_path(graph))


def test_siglip_width_not_divisible_by_block(tiny, bundles, images, tmp_path):
    """tiny presets' SigLIP MLP width is 72, not a multiple of 32: K is zero-padded to 96 in the packed weights.
    The 4-bit vision encoder equals the PyTorch tower with the same dequantized weights (a wrong padding or
    a misplaced block would be off by O(1), not 1e-5)."""
    p = Precision("int4", block_size=32)
    recipe = replace(RECIPES["fp32"], name="t", vision_encoder=p)
    quantized_copy(bundles[tiny.name], tmp_path / "q", recipe)
    tower = tiny.model.model.vision_tower
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    assert any(m.in_features % 32 for m in linears)  # the case this test is about
    saved = {k: v.clone() for k, v in tower.state_dict().items()}
    pg = PaliGemma(tmp_path / "q")
    pixels = pg.pixel_values(images[:2])
    try:
        with torch.no_grad():
            for mod in linears:
                w = dequantize(pack_rtn(mod.weight.numpy().T, 4, 32)).T
                mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            ref = tower(torch.from_numpy(pixels)).last_hidden_state.numpy()
    finally:
        tower.load_state_dict(saved)
    (got,) = pg.graphs.vision.run(["vision_features"], {"pixel_values": pixels})
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_gptq_with_identity_hessian_is_onnxruntime_rtn():
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(0))
    codes, scales, _ = gptq_quantize(w, torch.eye(128), 32)
    rtn = pack_rtn(w.numpy().T, 4, 32, True)
    assert np.array_equal(codes, unpack_ints(rtn)) and np.allclose(scales, rtn.scales)


def test_gptq_packs_exactly_what_it_computed():
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(40, 96, generator=gen), torch.randn(500, 96, generator=gen)
    codes, scales, wq = gptq_quantize(w, 2 * x.T @ x / 500, 32)
    packed = to_packed(codes, scales, 4, 32, 96)
    assert torch.allclose(torch.from_numpy(dequantize(packed).T.copy()), wq, atol=1e-6)


def test_gptq_lowers_layer_output_error_against_rtn_on_calibration_data(tiny, images):
    """On a real decoder layer of the tiny model, with activations from image+prompt calibration samples."""
    from pgexport.export.decoder import DecoderWithPast
    from pgexport.quant.calibration import calibration_inputs

    dec = DecoderWithPast(tiny.model, tiny.geometry)
    samples = [(im, p) for im in images for p in ("caption en", "detect cat")]
    states = calibration_inputs(tiny.model, dec, tiny.source.directory, tiny.geometry, samples, answer_tokens=8)
    mlp = dec.layers[0].mlp
    xs = []
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, inp: xs.append(inp[0].reshape(-1, inp[0].shape[-1])))
    from pgexport.quant.calibration import run_layer

    with torch.no_grad():
        for s in states:
            run_layer(dec, dec.layers[0], 0, s)
    handle.remove()
    x = torch.cat(xs)
    w = mlp.down_proj.weight.detach()
    _, _, wq_gptq = gptq_quantize(w, 2 * x.T @ x / x.shape[0], 32)
    wq_rtn = torch.from_numpy(dequantize(pack_rtn(w.numpy().T, 4, 32)).T.copy())
    err = {name: ((x @ w.T - x @ q.T) ** 2).mean().item() for name, q in (("gptq", wq_gptq), ("rtn", wq_rtn))}
    assert err["gptq"] < 0.8 * err["rtn"], err


def test_recipe_file_with_overrides(bundles, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "int4", "decoder_linear": {"kind": "int4", "block_size": 64},
                                "overrides": [{"match": "layers.0.*", "precision": "fp32"},
                                              {"match": "*.down_proj", "precision": {"kind": "int8-wo"}}]}))
    recipe = resolve_recipe(str(path)).verify(tied_lm_head=True)
    report = quantized_copy(bundles["tiny-pg1"], tmp_path / "q", recipe)
    weights = report["decoder"]["weights"]
    assert weights["layers.0.self_attn.q_proj"] == "fp32"
    assert weights["layers.1.mlp.down_proj"] == "int8-wo/b32"
    assert weights["layers.1.self_attn.q_proj"] == "int4/b64"


def test_int4_b128_is_the_recipe_the_quantization_table_measured():
    """docs/measurements/quant_table.md measured the recipe file; the named recipe must be that recipe."""
    from pathlib import Path

    named = RECIPES["int4-b128"].to_dict()
    measured = resolve_recipe(str(Path(__file__).parents[1] / "benchmarks/recipes/int4-awq-gptq-b128-table.json"))
    assert {k: v for k, v in named.items() if k not in ("name", "description")} == \
        {k: v for k, v in measured.to_dict().items() if k not in ("name", "description")}
    assert named["decoder_linear"]["block_size"] == 128 and named["awq"] and RECIPES["int4-b128"].uses_gptq


def test_recipe_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown recipe"):
        resolve_recipe("int3")
    with pytest.raises(UserError, match="tied"):
        replace(RECIPES["int4-rtn-b32"], lm_head=Precision("fp32")).verify(tied_lm_head=True)
    with pytest.raises(UserError, match="embedding cannot be int8"):
        replace(RECIPES["int4-rtn-b32"], embedding=Precision("int8"), lm_head=Precision("int8")).verify(tied_lm_head=True)
    bad = tmp_path / "bad.json"
    bad.write_text('{"decoder_linear": {"kind": "int4", "bits": 3}}')
    with pytest.raises(UserError, match="unknown precision fields"):
        resolve_recipe(str(bad))


def test_gptq_build_records_recipe_and_accuracy(tmp_path):
    from pgexport.build.bundle_steps import BuildOptions, build, planned_steps

    seen: list[str] = []
    opts = BuildOptions(model="tiny-pg2", out=tmp_path / "b", quant="int4-gptq", gate_samples=4, gate_tokens=8,
                        parity_tokens=4)
    out = build(opts, seen.append)
    assert seen == planned_steps(opts)  # the progress bar counts what runs
    assert {"GPTQ", "gate reference", "quantize decoder", "accuracy gate"} <= set(seen)
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["recipe"]["name"] == "int4-gptq"
    assert manifest["graphs"]["decoder"]["precision"] == "int4-gptq/b32"  # the linears and the tied table
    assert q["graphs"]["decoder"]["weights"]["embed_tokens (+ tied lm_head)"] == "int4-gptq/b32"
    acc = q["accuracy"]
    assert acc["samples"] == 4 and 0 <= acc["token_agreement"] <= 1 and acc["mean_kl"] >= 0


def test_gate_fails_a_build_above_what_the_recipe_reaches(tmp_path, capsys):
    """The tiny random model loses agreement under int4; demanding 100 % must fail and write nothing."""
    from test_cli_errors import run_cli

    out = tmp_path / "gated"
    code, _, err = run_cli(["build", "--model", "tiny-pg1", "--out", out, "--quant", "int4-rtn-b32", "--min-agreement",
                            "1.0", "--gate-samples", "4", "--parity-tokens", "4"], capsys)
    assert code != 0 and "accuracy gate failed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_sensitivity_report_ranks_layers(capsys):
    from test_cli_errors import run_cli

    code, out, err = run_cli(["sensitivity", "--model", "tiny-pg1", "--quant", "int4-rtn-b32", "--samples", "2", "--json"],
                             capsys)
    assert code == 0, err
    report = json.loads(out)
    errors = [layer["relative_error"] for layer in report["layers"]]
    assert errors == sorted(errors, reverse=True)
    by_precision = {}
    for layer in report["layers"]:
        by_precision.setdefault(layer["precision"].split("/")[0], []).append(layer["relative_error"])
    assert min(by_precision["int4"]) > 0 and max(by_precision["int4"]) < 0.5
    assert max(by_precision["int8"]) < min(by_precision["int4"])  # 8-bit vision adds less than 4-bit decoder
    heads = [layer for layer in report["layers"] if layer["component"] == "lm_head"]
    assert len(heads) == 1 and heads[0]["relative_error"] > 0  # the shared table is ranked too

    # the suggestion is a recipe file build reads, whose overrides put the three worst at 8 bits
    from pgexport.quant.recipes import recipe_from_dict
    from pgexport.quant.sensitivity import HEAD

    suggested = recipe_from_dict(report["suggested_recipe"], "suggested")
    for layer in report["layers"][:3]:
        component = "lm_head" if layer["module"] == HEAD else layer["component"]
        module = None if layer["module"] == HEAD else layer["module"]
        assert suggested.precision_for(component, module).kind == "int8-wo", layer
    for layer in report["layers"][3:]:
        if layer["module"] != HEAD:
            assert suggested.precision_for(layer["component"], layer["module"]).kind != "int8-wo", layer


def _external_matmul_graph(path):
    """y = x @ W + b with both initializers in `path`.data, as a large export writes them."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    b = onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["xw"]), onnx.helper.make_node("Add", ["xw", "b"], ["y"])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])], [w, b])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def test_rewritten_small_graph_keeps_no_reference_to_the_old_data_file(tmp_path):
    """A graph exported with external data and rewritten small enough to be inline must carry its untouched
    tensors with it (the 3B 4-bit vision encoder lost its conv weight this way)."""
    import onnx_ir as ir
    import onnxruntime as ort

    from pgexport.build.writer import check_graph_files
    from pgexport.quant.rewrite import save_graph

    path = tmp_path / "g.onnx"
    _external_matmul_graph(path)
    x = np.ones((2, 8), np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    save_graph(ir.load(path), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]
    assert np.array_equal(ort.InferenceSession(str(path)).run(None, {"x": x})[0], before)
    check_graph_files(tmp_path, {"graphs": {"g": {"file": "g.onnx", "data_files": []}}})


def test_bundle_check_refuses_a_graph_whose_data_file_is_missing(tmp_path):
    from pgexport.build.writer import GraphFilesError, check_graph_files

    path = tmp_path / "g.onnx"
    _external_matmul_graph(path)
    entry = {"graphs": {"g": {"file": "g.onnx", "data_files": ["g.onnx.data"]}}}
    check_graph_files(tmp_path, entry)
    with pytest.raises(GraphFilesError, match="does not list"):
        check_graph_files(tmp_path, {"graphs": {"g": {"file": "g.onnx", "data_files": []}}})
    (tmp_path / "g.onnx.data").unlink()
    with pytest.raises(GraphFilesError, match="does not hold"):
        check_graph_files(tmp_path, entry)


def test_int8_dynamic_linear_equals_an_independent_emulation(tmp_path):
    """The int8-dynamic recipe's linears (onnxruntime's quantize_dynamic, per-channel uint8 weights, stored minus
    128 as int8) against a numpy emulation of what that kernel computes: activations per tensor to uint8
    (DynamicQuantizeLinear's scale and zero point), weights per output channel to asymmetric uint8, an exact
    integer product, one rescale. Exact on every CPU as the runtime opens the graph: x86 without VNNI would
    saturate pairs of int8-weight products in int16 (VPMADDUBSW), and this input would reach that limit."""
    import onnx_ir as ir
    import onnxruntime as ort

    from pgexport.quant.apply import quantize_graph

    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.05, (96, 40)).astype(np.float32)  # [K, N]
    x = ir.val("x", ir.DataType.FLOAT, ["b", 96])
    weight = ir.Value(name="w", const_value=ir.tensor(w))
    mm = ir.node("MatMul", [x, weight], name="mm",
                 metadata_props={"pkg.torch.onnx.name_scopes": "['', 'encoder.layers.0.mlp.fc2', 'linear']"})
    mm.outputs[0].name = "y"
    path = tmp_path / "vision_encoder.onnx"  # the recipe's vision linears: no embedding table to rewrite
    ir.save(ir.Model(ir.Graph([x], mm.outputs, nodes=[mm], initializers=[weight], opset_imports={"": 18}),
                     ir_version=10), path)
    report = quantize_graph("vision_encoder", path, RECIPES["int8-dynamic"])
    assert set(report["weights"].values()) == {"int8"}
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMul" not in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}

    weights = [t for t in onnx.load(str(path)).graph.initializer if t.data_type in (onnx.TensorProto.UINT8,
                                                                                      onnx.TensorProto.INT8)]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)

    xs = rng.normal(0, 1, (3, 96)).astype(np.float32)
    (got,) = create_session(path, SessionConfig()).run(None, {"x": xs})
    lo, hi = min(0.0, float(xs.min())), max(0.0, float(xs.max()))
    sx = np.float32((hi - lo) / 255)
    zp = int(np.clip(np.rint(-lo / sx), 0, 255))
    xq = np.clip(np.rint(xs / sx) + zp, 0, 255).astype(np.int64)
    wlo, whi = np.minimum(w.min(axis=0), 0), np.maximum(w.max(axis=0), 0)
    sw = ((whi - wlo) / 255).astype(np.float32)
    wz = np.clip(np.rint(-wlo / sw), 0, 255).astype(np.int64)
    wq = np.clip(np.rint(w / sw) + wz, 0, 255).astype(np.int64)
    want = ((xq - zp) @ (wq - wz)).astype(np.float32) * (sx * sw)
    # the same magnitudes as int8 weights would have: their pair sums pass int16's limit on this input
    ws = np.clip(np.rint(w / (np.abs(w).max(axis=0) / 127)), -127, 127).astype(np.int64)
    assert (np.abs(xq[:, 0::2, None] * ws[None, 0::2] + xq[:, 1::2, None] * ws[None, 1::2]) > 32767).any()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(got - xs @ w).max() > 1e-4 * np.abs(xs @ w).max()  # it is quantized, not the float product


def test_int8_rows_linear_is_the_integer_product_of_each_row_alone(tmp_path):
    """The int8-rows recipe's linears against a numpy emulation: each row of x to int8 steps of max|row| / 127,
    the weights per output channel as quantize_dynamic makes them, an exact integer product, both scales. Two
    linears reading one input share its quantization; any leading shape; a row's output does not change when
    another row of the batch holds an outlier (per-tensor quantization would coarsen every row)."""
    import onnx_ir as ir

    from pgexport.quant.apply import quantize_graph

    rng = np.random.default_rng(6)
    w1, w2 = (rng.normal(0, 0.05, (96, n)).astype(np.float32) for n in (40, 24))
    x = ir.val("x", ir.DataType.FLOAT, ["b", "s", 96])
    nodes, inits = [], []
    for i, w in enumerate((w1, w2)):
        weight = ir.Value(name=f"w{i}", const_value=ir.tensor(w))
        mm = ir.node("MatMul", [x, weight], name=f"mm{i}", metadata_props={
            "pkg.torch.onnx.name_scopes": f"['', 'layers.0.self_attn.{'qk'[i]}_proj', 'linear']"})
        mm.outputs[0].name = f"y{i}"
        nodes.append(mm)
        inits.append(weight)
    path = tmp_path / "vision_encoder.onnx"
    ir.save(ir.Model(ir.Graph([x], [n.outputs[0] for n in nodes], nodes=nodes, initializers=inits,
                              opset_imports={"": 18}), ir_version=10), path)
    report = quantize_graph("vision_encoder", path, replace(RECIPES["int8-rows"], vision_encoder=Precision("int8-rows")))
    assert set(report["weights"].values()) == {"int8-rows"}
    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert "MatMul" not in ops and ops["MatMulIntegerToFloat"] == 2 and ops["QuantizeLinear"] == 1

    xs = rng.normal(0, 1, (2, 3, 96)).astype(np.float32)
    xs[0, 1] = 0.0  # an all-zero row
    session = create_session(path, SessionConfig())
    got = session.run(None, {"x": xs})
    rows = xs.reshape(-1, 96).astype(np.float64)
    steps = np.abs(rows).max(axis=1, keepdims=True) / 127
    xq = np.rint(rows / np.where(steps > 0, steps, 1)).astype(np.int64)
    for w, y in zip((w1, w2), got):
        lo, hi = np.minimum(w.min(axis=0), 0), np.maximum(w.max(axis=0), 0)
        sw = ((hi - lo) / 255).astype(np.float32)
        wz = np.clip(np.rint(-lo / sw), 0, 255).astype(np.int64)
        wq = np.clip(np.rint(w / sw) + wz, 0, 255).astype(np.int64)
        want = (xq @ (wq - wz)) * sw * steps
        assert y.shape == (2, 3, w.shape[1])
        assert np.abs(y.reshape(-1, w.shape[1]) - want).max() <= 1e-5 * np.abs(want).max()
        assert np.abs(y.reshape(-1, w.shape[1]) - rows @ w).max() > 1e-4 * np.abs(rows @ w).max()  # quantized
    assert np.all(got[0][0, 1] == 0)
    outlier = xs.copy()
    outlier[1, 2, 5] = 500.0
    again = session.run(None, {"x": outlier})
    assert np.array_equal(again[0][0], got[0][0]) and np.array_equal(again[0][1, :2], got[0][1, :2])


@pytest.mark.parametrize("model", ["tiny-pg1", "tiny-pg2"])
def test_int8_dynamic_vision_encoder_is_onnxruntimes_quantize_dynamic(bundles, model, tmp_path):
    """The dynamic int8 rewrite writes what onnxruntime's quantize_dynamic (per-channel uint8 weights) writes
    for the same MatMuls: the same operators, the same codes (stored minus 128 as int8), scales and zero points,
    the same outputs bit for bit as the runtime opens both, with one weight in memory at a time instead of the
    whole graph."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pgexport.quant.apply import quantize_graph

    src = bundles[model] / "vision_encoder.onnx"
    ours = tmp_path / "ours" / "vision_encoder.onnx"
    ours.parent.mkdir()
    for f in bundles[model].glob("vision_encoder.onnx*"):
        shutil.copy(f, ours.parent / f.name)
    theirs = tmp_path / "theirs.onnx"
    quantize_dynamic(src, theirs, per_channel=True, weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})
    report = quantize_graph("vision_encoder", ours, RECIPES["int8-dynamic"])
    assert set(report["weights"].values()) == {"int8"}

    def weights(path):
        """(codes, zero points) per MatMulInteger, as uint8; the weight scales each rescale multiplies in; the ops."""
        graph = onnx.load(str(path)).graph
        inits = {t.name: (to_uint8(a) if (a := onnx.numpy_helper.to_array(t)).dtype == np.int8 else a).tobytes()
                 for t in graph.initializer}
        x_scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear"}
        codes = Counter((inits[n.input[1]], inits[n.input[3]]) for n in graph.node if n.op_type == "MatMulInteger")
        scales = Counter(inits[i] for n in graph.node if n.op_type == "Mul" and x_scales & set(n.input)
                         for i in n.input if i in inits)
        return codes, scales, Counter(n.op_type for n in graph.node)

    mine, ref = weights(ours), weights(theirs)
    assert sum(mine[0].values()) == sum(mine[1].values()) == len(report["weights"]) > 0
    assert mine == ref

    pixels = np.random.default_rng(1).normal(0, 1, [2, *ort.InferenceSession(str(src)).get_inputs()[0].shape[1:]])
    feeds = {"pixel_values": pixels.astype(np.float32)}
    (a,) = create_session(ours, SessionConfig()).run(None, feeds)
    (b,) = create_session(theirs, SessionConfig()).run(None, feeds)
    (f,) = ort.InferenceSession(str(src)).run(None, feeds)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, f)  # quantized, not the float graph
    int8_codes = [t for t in onnx.load(str(ours)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_codes) == 2 * sum(mine[0].values())  # codes and zero points, all int8


def to_uint8(codes: np.ndarray) -> np.ndarray:
    """int8 codes back to quantize_dynamic's uint8: plus 128."""
    return (codes.view(np.uint8) ^ np.uint8(0x80))


@pytest.mark.parametrize("symmetric", [True, False])
def test_table_packed_in_slices_is_packed_whole(symmetric):
    """pack_rtn_rows (the embedding table, a slice of the vocabulary at a time) gives pack_rtn's result."""
    table = np.random.default_rng(3).standard_normal((1000, 96)).astype(np.float32)  # [vocab, hidden]
    whole, sliced = pack_rtn(table.T, 4, 32, symmetric), pack_rtn_rows(lambda a, b: table[a:b], 1000, 96, 4, 32, symmetric,
                                                                rows=300)
    assert (sliced.k, sliced.n) == (whole.k, whole.n) == (96, 1000)
    np.testing.assert_array_equal(sliced.data, whole.data)
    np.testing.assert_array_equal(sliced.scales, whole.scales)
    if symmetric:
        assert sliced.zero_points is None and whole.zero_points is None
    else:
        np.testing.assert_array_equal(sliced.zero_points, whole.zero_points)


def test_the_gate_in_two_parts_measures_what_one_session_does(demo_bundles, tmp_path):
    """The build's gate loads the vision encoder, then (freed) the decoder alone, in a child process: the same
    numbers as one PaliGemma holding the whole int4 bundle, and nothing left in its work directory but the
    child's job and log."""
    from pathlib import Path

    from pgexport.source import sources
    from pgexport.verify import gate, samples

    source = sources.resolve(str(Path(__file__).resolve().parents[1] / "models" / "pg-demo"), None)
    cards = samples.gate_samples(source, 6, sources.load_geometry(source).image_size)
    ref = gate.bundle_reference(PaliGemma(demo_bundles["fp32"]), cards, 12)
    whole = gate.evaluate(PaliGemma(demo_bundles["int4"], image_cache_bytes=0), ref, 12)
    parts = gate.evaluate_bundle(demo_bundles["int4"], ref, 12, None, tmp_path, "manifest.json")
    apart = gate.evaluate_apart(demo_bundles["int4"], ref, 12, True, tmp_path / "work", "manifest.json")
    assert parts == whole and apart == whole  # apart: in a child process, the samples passed as PNG files
    assert whole["mean_kl"] > 0 and 0 < whole["top1_agreement"] < 1  # int4 against fp32: close, not equal
    assert len({tuple(t) for t in ref.greedy}) > 1  # different images, different answers
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gate_job.json", "gate_job.log", "work"]


def _table_case(seed: int = 0, vocab: int = 300, hidden: int = 64, rows: int = 400):
    """A stand-in decoder for gptq.quantize_table: identity final norm, a random table, and hidden states with a
    few dominant directions (as real ones have), so that GPTQ has correlations to use."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, hidden, generator=gen) * 5
    x = torch.randn(1, rows, 4, generator=gen) @ basis + 0.3 * torch.randn(1, rows, hidden, generator=gen)
    dec = SimpleNamespace(norm=lambda h: h, g=SimpleNamespace(text_hidden=hidden),
                          embed=torch.nn.Embedding(vocab, hidden))
    torch.nn.init.normal_(dec.embed.weight, generator=gen)
    keep = torch.ones(1, rows, dtype=torch.bool)
    keep[0, :7] = False  # padding rows are left out of the Hessian
    return dec, [{"hidden": x, "keep": keep}]


def test_gptq_table_lowers_the_lm_head_error_against_rtn():
    from pgexport.nbits import dequantize, pack_rtn
    from pgexport.quant import gptq

    dec, states = _table_case()
    w = dec.embed.weight.detach()
    x = states[0]["hidden"][0, 7:]
    packed = gptq.quantize_table(dec, states, 32)
    q_gptq = torch.from_numpy(dequantize(packed).T.copy())
    q_rtn = torch.from_numpy(dequantize(pack_rtn(w.numpy().T.copy(), 4, 32)).T.copy())

    def head_error(q):
        return float(((x @ w.T - x @ q.T) ** 2).sum() / ((x @ w.T) ** 2).sum())

    assert head_error(q_gptq) < 0.8 * head_error(q_rtn)
    # the table is also the embedding: its damping keeps each weight's own error near round-to-nearest's
    assert float(((q_gptq - w) ** 2).mean()) < 1.5 * float(((q_rtn - w) ** 2).mean())


def test_gptq_table_in_slices_is_the_table_whole(monkeypatch):
    from pgexport.quant import gptq

    dec, states = _table_case(seed=1)
    whole = gptq.quantize_table(dec, states, 32)
    monkeypatch.setattr(gptq, "TABLE_ROWS", 64)  # 300 rows: four full slices and a short one
    sliced = gptq.quantize_table(dec, states, 32)
    assert np.array_equal(whole.data, sliced.data) and np.array_equal(whole.scales, sliced.scales)


def test_a_gptq_table_needs_a_tied_lm_head():
    """GPTQ calibrates the table as the lm_head tied to it; an untied model's table and lm_head are rounded to
    nearest, its linears still GPTQ'd."""
    from pgexport.quant.recipes import RECIPES

    tied, untied = RECIPES["int4-gptq"].verify(True), RECIPES["int4-gptq"].verify(False)
    assert tied.embedding.kind == tied.lm_head.kind == "int4-gptq"
    assert untied.embedding.kind == untied.lm_head.kind == "int4" and untied.decoder_linear.kind == "int4-gptq"
    assert untied.embedding.block_size == tied.embedding.block_size
