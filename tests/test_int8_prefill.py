"""`pgexport build --int8-prefill`: a decoder_int8 graph for prefills, chosen by the runtime per CPU and config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from pgexport_runtime import PaliGemma, SessionConfig, decoder
from pgexport_runtime import session as session_module
from pgexport_runtime.errors import BundleError, UserError
from pgexport_runtime.manifest import load_manifest

DEMO = Path(__file__).resolve().parents[1] / "models" / "pg-demo"
GATE_SAMPLES = 6


@pytest.fixture(scope="module")
def int8_prefill_bundle(tmp_path_factory) -> Path:
    """The demo model at int4-rtn-b128 with --int8-prefill, gated on a few held-out samples."""
    from pgexport.build.bundle_steps import BuildOptions, build

    out = tmp_path_factory.mktemp("int8-prefill") / "b"
    return build(BuildOptions(model=str(DEMO), out=out, quant="int4-rtn-b128", skip_parity=True,
                              gate_samples=GATE_SAMPLES, gate_tokens=16, int8_prefill=True))


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_the_build_writes_decoder_int8_beside_the_decoder_and_gates_both_paths(int8_prefill_bundle):
    m = load_manifest(int8_prefill_bundle)  # every sha256 checked, the new graph's included
    dec, int8 = m.graphs["decoder"], m.graphs["decoder_int8"]
    assert (int8.inputs, int8.outputs) == (dec.inputs, dec.outputs)
    assert int8.precision == "int8-rows" and int8.file == "decoder_int8.onnx"
    before, after = _ops(m.path(dec.file)), _ops(m.path(int8.file))
    products = m.record.quantization["decoder_int8"]["products"]
    # every 4-bit product but the lm_head (the table it shares with the embedding) is now an int8 GEMM
    assert products == before.count("MatMulNBits") - 1 == after.count("MatMulIntegerToFloat") > 0
    assert after.count("MatMulNBits") == 1 and after.count("GatherBlockQuantized") == 1
    accuracy = m.record.quantization["accuracy"]
    assert accuracy["samples"] == accuracy["decoder_int8"]["samples"] == GATE_SAMPLES
    for acc in (accuracy, accuracy["decoder_int8"]):
        assert 0 <= acc["sequence_agreement"] <= 1 and acc["mean_kl"] >= 0


def _prefill_logits(pg: PaliGemma, image, prompt: str) -> np.ndarray:
    ids = np.array([pg.tokenizer.prefix_ids(prompt)], dtype=np.int64)
    cache = pg.graphs.kv_cache(pg.geometry, 1, ids.shape[1] + 1)
    return decoder.prefill(pg.graphs, pg.geometry, cache, ids, pg.image_embeddings([image]), np.ones_like(ids))[0, -1]


def test_prefill_runs_on_the_graph_the_config_names_and_decode_on_the_decoder(int8_prefill_bundle, images):
    int8 = PaliGemma(int8_prefill_bundle, SessionConfig(prefill="int8"))
    plain = PaliGemma(int8_prefill_bundle, SessionConfig(prefill="decoder"))
    assert (int8.graphs.prefill_graph, plain.graphs.prefill_graph) == ("decoder_int8", "decoder")
    assert plain.graphs.int8_prefill is None
    for image, prompt in zip(images, ["caption en", "ocr", "detect circle"]):
        a, b = _prefill_logits(int8, image, prompt), _prefill_logits(plain, image, prompt)
        assert not np.array_equal(a, b)  # another graph computed it ...
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.99, cos  # ... the same model, in other steps
    answers = [r.text for r in int8.generate(images, ["caption en"] * len(images), max_new_tokens=12)]
    assert all(answers)


@pytest.mark.parametrize("units", [True, False])
def test_auto_takes_decoder_int8_only_where_the_cpu_has_int8_matrix_units(int8_prefill_bundle, monkeypatch, units):
    monkeypatch.setattr(session_module, "int8_matrix_units", lambda: units)
    pg = PaliGemma(int8_prefill_bundle, SessionConfig(prefill="auto"), load="decoder")
    assert pg.graphs.prefill_graph == ("decoder_int8" if units else "decoder")
    assert SessionConfig(device="cuda").int8_prefill(True) is False  # the CPU's units, not a GPU's


def test_a_graph_that_will_not_run_is_not_read(int8_prefill_bundle, tmp_path, images):
    bundle = tmp_path / "b"
    shutil.copytree(int8_prefill_bundle, bundle)
    path = bundle / "decoder_int8.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    PaliGemma(bundle, SessionConfig(prefill="decoder")).generate([images[0]], ["caption en"], max_new_tokens=4)
    with pytest.raises(BundleError, match="decoder_int8.onnx does not match its sha256"):
        PaliGemma(bundle, SessionConfig(prefill="int8"))
    path.unlink()
    with pytest.raises(BundleError, match="missing bundle file decoder_int8.onnx"):
        PaliGemma(bundle, SessionConfig(prefill="decoder"))


def test_int8_prefill_is_refused_where_it_cannot_run(bundles):
    with pytest.raises(UserError, match="needs a bundle built with --int8-prefill"):
        PaliGemma(bundles["tiny-pg1"], SessionConfig(prefill="int8"))
    assert PaliGemma(bundles["tiny-pg1"], SessionConfig(prefill="auto")).graphs.prefill_graph == "decoder"
    with pytest.raises(UserError, match="unknown prefill 'fast'"):
        SessionConfig(prefill="fast")


@pytest.mark.parametrize("quant,kv_cache,words", [
    ("fp32", "concat", "has none in its decoder linears"),
    ("int8-rows", "concat", "int8-rows already prefills in int8"),
    ("int4", "static", "has its own fixed-shape prefill graphs"),
])
def test_the_plan_refuses_int8_prefill_without_block_products_or_with_fixed_shapes(quant, kv_cache, words):
    from pgexport.build.plan import BuildOptions, Plan

    with pytest.raises(UserError, match=words):
        Plan.of(BuildOptions(model="tiny-pg1", quant=quant, kv_cache=kv_cache, int8_prefill=True))


def test_inspect_says_which_graph_prefills_on_this_cpu(int8_prefill_bundle, capsys, monkeypatch):
    from pgexport_runtime import cli, describe

    for units, graph in ((True, "decoder_int8 on this CPU"), (False, "decoder on this CPU")):
        monkeypatch.setattr(describe, "int8_matrix_units", lambda units=units: units)
        assert cli.main(["inspect", str(int8_prefill_bundle), "--no-verify"]) == 0
        out = capsys.readouterr().out
        assert f"prefill  {graph}" in out and "prefills on decoder_int8: sequence agreement" in out
    raw = json.loads((int8_prefill_bundle / "manifest.json").read_text())
    assert raw["graphs"]["decoder_int8"]["file"] in raw["files"]


def test_a_shared_cache_bundle_prefills_on_decoder_int8_into_its_one_buffer(tmp_path, images):
    """`--kv-cache shared` (one buffer per tensor, GroupQueryAttention writing the new rows in place: the faster
    decode on onnxruntime's native CPU kernels) with the int8 prefill, on PaliGemma 2's geometry (several KV heads, soft-caps,
    a sliding window). The int8 graph's prefill fills the one buffer the decoder then reads."""
    from pgexport.build.bundle_steps import BuildOptions, build

    out = build(BuildOptions(model="tiny-pg2", out=tmp_path / "b", quant="int4-rtn-b32", kv_cache="shared",
                             skip_parity=True, gate_samples=0, int8_prefill=True))
    assert "GroupQueryAttention" in _ops(out / "decoder_int8.onnx")
    int8 = PaliGemma(out, SessionConfig(prefill="int8"))
    plain = PaliGemma(out, SessionConfig(prefill="decoder"))
    g = int8.geometry
    ids = np.array([int8.tokenizer.prefix_ids("detect circle")], dtype=np.int64)
    embeds = int8.image_embeddings([images[0]])
    rows, token = [], None
    for pg in (int8, plain):
        cache = pg.graphs.kv_cache(g, 1, ids.shape[1] + 2)
        first = decoder.prefill(pg.graphs, g, cache, ids, embeds, np.ones_like(ids))[0, -1]
        keys = cache._keep[0].reshape(1, g.num_kv_heads, -1, g.head_dim)[:, :, :ids.shape[1]].copy()
        token = np.array([int(np.argmax(first))]) if token is None else token  # both decode the same token
        second = decoder.decode(pg.graphs, g, cache, token, np.ones((1, ids.shape[1] + 1), dtype=np.int64))[0, -1]
        rows.append((first, keys, second))

    def cos(a, b):
        return float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))

    (a1, ak, a2), (b1, bk, b2) = rows
    assert not np.array_equal(ak, bk)  # another graph wrote the cache ...
    assert min(cos(a1, b1), cos(ak, bk), cos(a2, b2)) > 0.99  # ... of the same model, read by the decoder
