"""The "static" KV-cache layout: every graph of fixed shape, batch 1, a prefill graph per prefix length and
a cache buffer of fixed length, written in place (pgexport/export/static_shapes.py, pgexport_runtime/static.py).

The oracle is the dynamic-shape bundle of the same model (the `bundles` and `demo_bundles` fixtures; the tiny
ones are parity-checked against transformers at every build): a static bundle must give its tokens and its
teacher-forced log-probabilities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import PROMPTS

from pgexport.export.static_shapes import _dynamic
from pgexport_runtime import PaliGemma, decoder
from pgexport_runtime.errors import BundleError, UserError

LENGTHS = {"tiny-pg1": None, "tiny-pg2": (24, 48)}  # tiny-pg1: the defaults, 16 image tokens + 16 and + 64
MAX_LEN = {"tiny-pg1": None, "tiny-pg2": 60}  # PROMPTS take 20, 44 and 22 tokens with 16 image tokens


@pytest.fixture(scope="module")
def static(tmp_path_factory) -> dict:
    from pgexport.build.bundle_steps import BuildOptions, build

    root = tmp_path_factory.mktemp("static")
    return {name: build(BuildOptions(model=name, out=root / name, kv_cache="static", parity_tokens=8,
                                     prefill_lengths=LENGTHS[name], max_len=MAX_LEN[name]))
            for name in ("tiny-pg1", "tiny-pg2")}


def test_every_dimension_of_every_graph_is_fixed(static):
    for name, bundle in static.items():
        m = json.loads((bundle / "manifest.json").read_text())
        assert m["kv_cache"]["layout"] == "static" and m["parity"]["checks"]["static_shapes"]["match"]
        prefill = [f"decoder_prefill_{n}" for n in m["kv_cache"]["prefill_lengths"]]
        assert set(m["graphs"]) == {"vision_encoder", "projector", "decoder", *prefill}
        data = bundle / "decoder.onnx.data"
        for graph, entry in m["graphs"].items():
            model = onnx.load(bundle / entry["file"], load_external_data=False)
            assert _dynamic(model, intermediate=True) == [], (name, graph)
            known = {v.name for v in (*model.graph.value_info, *model.graph.output)}
            assert {o for n in model.graph.node for o in n.output if o} <= known  # every shape is recorded
            batch = {v.type.tensor_type.shape.dim[0].dim_value for v in (*model.graph.input, *model.graph.output)}
            assert batch == {1}, (name, graph)
            if graph.startswith("decoder"):  # the decoder's weights once, in one file every decoder graph reads
                assert entry["data_files"] == ["decoder.onnx.data"]
                assert (bundle / entry["file"]).stat().st_size < data.stat().st_size / 4
        seq = {g: onnx.load(bundle / m["graphs"][g]["file"], load_external_data=False).graph.input[0]
               .type.tensor_type.shape.dim[1].dim_value for g in ("decoder", *prefill)}
        assert seq == {"decoder": 1} | {g: n for g, n in zip(prefill, m["kv_cache"]["prefill_lengths"])}


def test_static_bundle_answers_as_the_dynamic_bundle(static, bundles, images):
    """A batch of three prompts of 20, 44 and 22 tokens: two prefill graphs, each row on its own slice of the
    cache. tiny-pg2's cache of 60 tokens holds 17 answer tokens after its 44-token prompt: the batch's answers
    stop there, and are the dynamic bundle's first 17."""
    for name in static:
        want = [r.tokens for r in PaliGemma(bundles[name]).generate(images, PROMPTS, max_new_tokens=24)]
        got = [r.tokens for r in PaliGemma(static[name]).generate(images, PROMPTS, max_new_tokens=24)]
        room = 24 if MAX_LEN[name] is None else MAX_LEN[name] - 44 + 1
        assert got == [row[:room] for row in want], name
        assert any(len(set(row)) >= 4 for row in got) and len({tuple(r) for r in got}) == 3, got


def test_teacher_forced_scores_match(static, bundles, images):
    """decoder.score takes the static layout one fed token at a time: the same log-probabilities as the dynamic
    graph's one call over prefix and continuation."""
    for name in static:
        a, b = PaliGemma(bundles[name]), PaliGemma(static[name])
        prefix = np.array([a.tokenizer.prefix_ids(PROMPTS[1])], dtype=np.int64)
        answer = a.generate([images[0]], [PROMPTS[1]], max_new_tokens=8)[0].tokens
        embeds = a.image_embeddings([images[0]])
        want = decoder.score(a.graphs, a.geometry, prefix, embeds, answer)
        got = decoder.score(b.graphs, b.geometry, prefix, embeds, answer)
        assert want.shape == got.shape == (len(answer), a.geometry.vocab_size)
        assert np.abs(want - got).max() < 1e-4


def test_demo_model_int4_static(demo_bundles, tmp_path):
    """The demo model, int4 as its default build: the static bundle gives the dynamic one's tokens on held-out
    items (one at a time: the int8 vision encoder's activation scale is the batch's, so batch mates move it)."""
    from pgexport.verify import image_prompts
    from pgexport.build.bundle_steps import BuildOptions, build

    model = demo_bundles["int4"]
    out = build(BuildOptions(model=str(Path(__file__).resolve().parents[1] / "models" / "pg-demo"),
                             out=tmp_path / "s", quant="int4", kv_cache="static", skip_parity=True, gate_samples=0))
    a, b = PaliGemma(model), PaliGemma(out)
    rows = list(image_prompts.read(image_prompts.DEMO_SET, "eval", limit=6))
    want = [a(r.image, r.prompt, max_new_tokens=r.max_new_tokens).tokens for r in rows]
    got = [b(r.image, r.prompt, max_new_tokens=r.max_new_tokens).tokens for r in rows]
    assert got == want and len({tuple(t) for t in want}) == len(rows)


def test_a_prompt_longer_than_the_longest_prefill_is_one_line(static, images):
    pg = PaliGemma(static["tiny-pg2"])
    with pytest.raises(UserError, match=r"^the prompt takes \d+ tokens and this static bundle's longest prefill "
                                        r"graph 48: shorten the prompt"):
        pg(images[0], "answer en " + "what is that " * 12, max_new_tokens=4)


def test_a_call_past_the_cache_is_one_line(static, images):
    """The runtime's own decode loop stops at the cache's end; a caller of decoder.decode (bench does) that goes
    past it gets a UserError, not onnxruntime failing inside the graph."""
    pg = PaliGemma(static["tiny-pg2"])
    g = pg.geometry
    ids = np.array([pg.tokenizer.prefix_ids(PROMPTS[0])], dtype=np.int64)  # 20 tokens, cache of 60
    cache = pg.graphs.kv_cache(g, 1, 0)
    mask = np.ones_like(ids)
    decoder.prefill(pg.graphs, g, cache, ids, pg.image_embeddings([images[0]]), mask)
    for _ in range(40):  # rows 20 .. 59
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        decoder.decode(pg.graphs, g, cache, np.array([5]), mask)
    mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
    with pytest.raises(UserError, match=r"^this static bundle's KV cache holds 60 tokens \(--max-len at build\): "
                                        r"60 cached \+ 1 new do not fit"):
        decoder.decode(pg.graphs, g, cache, np.array([5]), mask)


def test_static_options_are_checked():
    from pgexport.build.plan import BuildOptions, Plan

    with pytest.raises(UserError, match=r"^--prefill-lengths and --max-len fix the shapes of --kv-cache static"):
        Plan.of(BuildOptions(model="tiny-pg1", max_len=100))
    with pytest.raises(UserError, match=r"^--prefill-lengths must be at most 16 increasing lengths of at least 18"):
        Plan.of(BuildOptions(model="tiny-pg1", kv_cache="static", prefill_lengths=(40, 30)))
    with pytest.raises(UserError, match=r"^--max-len must be longer than the longest prefill \(48\)"):
        Plan.of(BuildOptions(model="tiny-pg1", kv_cache="static", prefill_lengths=(24, 48), max_len=48))


def test_a_manifest_that_does_not_fit_its_static_graphs_is_one_line(static, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(static["tiny-pg1"], bundle)
    path = bundle / "manifest.json"
    original = json.loads(path.read_text())
    m = json.loads(path.read_text())
    m["kv_cache"]["prefill_lengths"] = [80, 32]
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"kv_cache.prefill_lengths must be 1 to 16 increasing integers"):
        PaliGemma(bundle)
    m = json.loads(json.dumps(original))  # the decode graph takes one token; a prefill graph left out
    del m["graphs"]["decoder_prefill_80"]
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"decoder.onnx takes one token at a time, and the manifest lists no "
                                          r"prefill graph for 80 tokens"):
        PaliGemma(bundle)


def test_static_bundle_packages(static, images, tmp_path):
    """`pgexport package` on a static bundle: ORT format answers as the bundle does, and onnxruntime's mobile
    checker finds no dynamic input to fix in any graph; float16 ONNX keeps the decoder's weights in one file
    that every decoder graph reads."""
    from pgexport.package import package

    bundle = static["tiny-pg1"]
    want = [r.tokens for r in PaliGemma(bundle).generate(images, PROMPTS, max_new_tokens=12)]
    ort_bundle = package(bundle, tmp_path / "ort", "ort")
    m = PaliGemma(ort_bundle).manifest
    mobile = m.record.package["mobile"]
    assert set(mobile) == set(m.graphs) and all(v["nnapi"]["fixed_shapes"] is None for v in mobile.values())
    assert [r.tokens for r in PaliGemma(ort_bundle).generate(images, PROMPTS, max_new_tokens=12)] == want

    fp16 = package(bundle, tmp_path / "fp16", "onnx", activations="fp16", mobile_check=False)
    m = json.loads((fp16 / "manifest.json").read_text())
    assert {g["data_files"][0] for n, g in m["graphs"].items() if n.startswith("decoder")} == {"decoder.onnx.data"}
    assert sorted(p.name for p in fp16.glob("*.data")) == ["decoder.onnx.data"]
    prefill = onnx.load(fp16 / "decoder_prefill_32.onnx", load_external_data=False)
    assert sum(t.data_location == onnx.TensorProto.EXTERNAL for t in prefill.graph.initializer) > 10
    got = [r.tokens for r in PaliGemma(fp16).generate(images, PROMPTS, max_new_tokens=12)]
    assert sum(a == b for x, y in zip(want, got) for a, b in zip(x, y)) >= 0.75 * sum(map(len, want)), (want, got)
