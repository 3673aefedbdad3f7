"""Measuring tools in benchmarks/: the bundle variants and the writer function they share, the per-op profile,
memory per stage, the image cache's time to first token."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pgexport.build.writer import derive_bundle
from pgexport.quant.recipes import RECIPES
from pgexport_runtime import PaliGemma
from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import SCHEMA, SCHEMA_VERSION, load_manifest, sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy_level_variant  # noqa: E402
import image_cache_ttft  # noqa: E402
import memory_stages  # noqa: E402
import merge_siblings  # noqa: E402
import profile_ops  # noqa: E402
from test_quant import quantized_copy  # noqa: E402


@pytest.fixture(scope="module")
def int4_bundle(bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("int4") / "b"
    report = quantized_copy(bundles["tiny-pg1"], out, RECIPES["int4-rtn-b32"])
    manifest = json.loads((out / "manifest.json").read_text())  # the recipe record `pgexport build` writes
    manifest["quantization"] = {"recipe": RECIPES["int4-rtn-b32"].to_dict(), "summary": RECIPES["int4-rtn-b32"].summary(),
                                "graphs": report,
                                "accuracy": {"samples": 1, "sequence_agreement": 1.0, "token_agreement": 1.0,
                                             "top1_agreement": 1.0, "mean_kl": 0.0}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _prefill_logits(bundle, image) -> np.ndarray:
    """The prefill's logits of `bundle` for one image and "caption en"."""
    from pgexport_runtime import decoder

    pg = PaliGemma(bundle)
    embeds = pg.image_embeddings([image])
    ids, mask = pg.tokenizer.batch(["caption en"])
    cache = pg.graphs.kv_cache(pg.geometry, 1, ids.shape[1] + 1)
    return decoder.prefill(pg.graphs, pg.geometry, cache, ids, embeds, mask)


def test_derive_bundle_writes_a_manifest_with_fresh_hashes_or_nothing(tmp_path):
    """pgexport.build.writer.derive_bundle: the files `write` replaces or adds are hashed anew, the others keep
    theirs, the manifest carries write's edits and its record; a failure leaves no directory behind."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "graph.onnx").write_bytes(b"graph")
    (src / "weights.data").write_bytes(b"weights")
    files = {f: sha256_file(src / f) for f in ("graph.onnx", "weights.data")}
    (src / "manifest.json").write_text(json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                                   "quantization": {"recipe": {"name": "r"}, "accuracy": {}},
                                                   "files": files}))

    def write(writer, manifest: dict) -> dict:
        writer.path("graph.onnx").write_bytes(b"rewritten graph")
        writer.path("added.json").write_text("{}")
        manifest["quantization"]["recipe"]["name"] = "r2"
        return {"what": "a test"}

    dst = tmp_path / "dst"
    assert derive_bundle(src, dst, write) == {"what": "a test"}
    raw = json.loads((dst / "manifest.json").read_text())
    assert raw["files"] == {f: sha256_file(dst / f) for f in ("added.json", "graph.onnx", "weights.data")}
    assert raw["files"]["weights.data"] == files["weights.data"] and raw["files"]["graph.onnx"] != files["graph.onnx"]
    assert raw["quantization"] == {"recipe": {"name": "r2"}}  # accuracy: measured on the source's graphs
    assert raw["build"]["derived"] == {"from": "src", "what": "a test"}  # a name, not a path of this machine
    assert (src / "graph.onnx").read_bytes() == b"graph"  # the source is untouched

    def fail(writer, manifest: dict) -> dict:
        writer.path("graph.onnx").write_bytes(b"half written")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        derive_bundle(src, tmp_path / "failed", fail)
    with pytest.raises(UserError):  # there already, and no force
        derive_bundle(src, dst, write)
    outside = json.loads((src / "manifest.json").read_text())
    (src / "manifest.json").write_text(json.dumps(outside | {"files": files | {"../secret": files["graph.onnx"]}}))
    with pytest.raises(UserError, match="not a plain file name"):
        derive_bundle(src, tmp_path / "from-outside", write)
    (src / "manifest.json").write_text(json.dumps(outside))
    (src / "weights.data").write_bytes(b"corrupt")
    with pytest.raises(UserError, match="weights.data"):
        derive_bundle(src, tmp_path / "from-corrupt", write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def _levels(path: Path) -> list[int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
            for n in graph.node if n.op_type == "MatMulNBits"]


def test_accuracy_level_variant_changes_only_that_attribute(int4_bundle, images, tmp_path):
    before = {f: sha256_file(int4_bundle / f) for f in load_manifest(int4_bundle).raw["files"]}
    dst = accuracy_level_variant.derive(int4_bundle, tmp_path / "acc1", 1)
    assert {f: sha256_file(int4_bundle / f) for f in before} == before  # the source is untouched
    levels = _levels(dst / "decoder.onnx")
    assert levels and set(levels) == {1} and set(_levels(int4_bundle / "decoder.onnx")) == {4}  # int4's default
    src_graph = onnx.load(str(int4_bundle / "decoder.onnx"), load_external_data=False).graph
    new_graph = onnx.load(str(dst / "decoder.onnx"), load_external_data=False).graph
    assert [n.op_type for n in src_graph.node] == [n.op_type for n in new_graph.node]
    assert [t.raw_data for t in src_graph.initializer] == [t.raw_data for t in new_graph.initializer]
    raw = load_manifest(dst).raw  # every sha256 verified
    assert raw["quantization"]["recipe"]["decoder_linear"]["accuracy_level"] == 1
    assert raw["build"]["derived"]["matmulnbits_accuracy_level"] == 1
    assert "accuracy" not in raw["quantization"]  # not measured on these graphs
    a = PaliGemma(int4_bundle)(images[0], "caption en", max_new_tokens=6).tokens
    b = PaliGemma(dst)(images[0], "caption en", max_new_tokens=6).tokens
    assert len(a) == len(b) == 6  # int8 activations may change a near-tie; both generate


def test_profile_ops_splits_prefill_and_decode(int4_bundle, tmp_path):
    result = profile_ops.run(int4_bundle, new_tokens=5, threads=1, out=tmp_path)
    stages = result["stages"]
    assert set(stages) == {"vision", "projector", "prefill", "decode (per token)"}
    for s in stages.values():
        assert s["ms"] > 0 and abs(sum(s["by_op_ms"].values()) - s["ms"]) < 1e-6
    assert "MatMulNBits" in stages["prefill"]["by_op_ms"] and "MatMulNBits" in stages["decode (per token)"]["by_op_ms"]
    assert json.loads((tmp_path / "profile.json").read_text())["new_tokens"] == 5
    rows = profile_ops.rows(result, 3)
    assert {r[0] for r in rows} == set(stages) and all(len(r) == len(profile_ops.COLUMNS) for r in rows)
    assert ("prefill", "all", round(stages["prefill"]["ms"], 2), 100.0) in rows


def test_memory_stages_reports_every_stage_for_each_setting(bundles, tmp_path):
    """benchmarks/memory_stages.py: one fresh process per (arena, heap trim, mmap threshold), a row per stage and
    generation, each with its time; the peak so far never falls and never sits below the current RSS."""
    import subprocess

    from pgexport.bench.harness import read_measurement

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_stages.py"
    subprocess.run([sys.executable, str(script), str(bundles["tiny-pg1"]), "--generations", "2", "--new-tokens", "3",
                    "--arena", "off", "--trim", "both", "--mmap-threshold", "both", "--out-dir", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    written = tmp_path / "memory_stages.md"
    assert read_measurement(written)["columns"] == list(memory_stages.COLUMNS)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in written.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| bundle ")]
    assert {r[2] for r in rows} == {"off"}
    for trim in ("on", "off"):
        for mmap in ("1024 KiB", "glibc's"):
            mine = [r for r in rows if r[3:5] == [trim, mmap]]
            assert [r[5] for r in mine] == ["load"] + [f"{s} #{n}" for n in (1, 2)
                                                       for s in ("vision", "projector", "prefill", "decode")]
            assert all(float(r[6]) >= 0 for r in mine) and float(mine[0][6]) > 0  # the load takes time
            cells = [(float(r[7]), float(r[8]), float(r[9])) for r in mine]
            # the kernel counts RSS per CPU and sums the counts when read: a reading may be off by its batches, and
            # the table rounds to 1 MB; within that the peak so far never falls and never sits below RSS
            slack = 1 + 2 * 4096 * max(32, 2 * (os.cpu_count() or 1)) * (os.cpu_count() or 1) / 1e6
            peaks = [c[1] for c in cells]
            assert all(b >= a - slack for a, b in zip(peaks, peaks[1:])), peaks
            assert all(peak >= rss - slack for rss, peak, _ in cells)
            assert all(0 < anon <= rss for rss, _, anon in cells)


def test_image_cache_ttft_counts_vision_runs_per_round(bundles):
    """benchmarks/image_cache_ttft.py: with the cache off the vision graph runs once per prompt, with it on once
    per image; a cache hit's image stage is not a vision run (the times themselves are for the benchmark)."""
    off = image_cache_ttft.measure(str(bundles["tiny-pg1"]), 0, prompts=3, repeats=2, threads=1)
    on = image_cache_ttft.measure(str(bundles["tiny-pg1"]), 64 << 20, prompts=3, repeats=2, threads=1)
    assert off["vision_runs_per_round"] == [3, 3] and on["vision_runs_per_round"] == [1, 1]
    for r in (off, on):
        assert len(r["ttft_s"]) == len(r["image_s"]) == 3
        assert all(0 < v < t for t, v in zip(r["ttft_s"], r["image_s"]))


def test_merge_siblings_gives_the_same_logits_with_fewer_matmulnbits(int4_bundle, images, tmp_path):
    """benchmarks/merge_siblings.py: q/k/v and gate/up of each layer become one MatMulNBits and a Split; the
    decoder's logits do not change by a bit, and the source bundle is untouched."""
    before = {f: sha256_file(int4_bundle / f) for f in load_manifest(int4_bundle).raw["files"]}
    dst = tmp_path / "merged"
    groups = merge_siblings.derive(int4_bundle, dst)
    layers = load_manifest(int4_bundle).geometry.text_layers
    assert groups == 2 * layers  # (q, k, v) and (gate, up) in every layer
    assert {f: sha256_file(int4_bundle / f) for f in before} == before

    def nbits(bundle):
        return sum(n.op_type == "MatMulNBits" for n in onnx.load(str(bundle / "decoder.onnx")).graph.node)

    assert nbits(dst) == nbits(int4_bundle) - 3 * layers  # 5 nodes a layer became 2
    assert load_manifest(dst).raw["build"]["derived"]["matmulnbits_siblings_merged"] == groups
    logits = [_prefill_logits(bundle, images[0]) for bundle in (int4_bundle, dst)]
    assert np.array_equal(logits[0], logits[1]) and np.ptp(logits[0]) > 0


def test_mlp_blocks_give_the_same_logits_and_tokens(int4_bundle, images, tmp_path):
    """benchmarks/mlp_blocks.py: each layer's MLP runs inside a Loop over blocks of rows (here 3, so a prefix of
    several blocks and a last one shorter); the prefill's logits and a few decode steps do not change by a bit."""
    import mlp_blocks

    from pgexport_runtime import decoder

    before = {f: sha256_file(int4_bundle / f) for f in load_manifest(int4_bundle).raw["files"]}
    dst = tmp_path / "blocks"
    layers = load_manifest(int4_bundle).geometry.text_layers
    assert mlp_blocks.derive(int4_bundle, dst, rows=3) == layers
    assert {f: sha256_file(int4_bundle / f) for f in before} == before
    graph = onnx.load(str(dst / "decoder.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "Loop" for n in graph.node) == layers
    assert not any(n.op_type in mlp_blocks.GELU for n in graph.node)  # every MLP moved
    assert load_manifest(dst).raw["build"]["derived"]["mlp_blocks"] == {"rows": 3, "layers": layers}
    runs = []
    for bundle in (int4_bundle, dst):
        pg = PaliGemma(bundle)
        embeds = pg.image_embeddings([images[0]])
        ids, mask = pg.tokenizer.batch(["caption en"])
        assert ids.shape[1] % 3 and ids.shape[1] > 3  # several blocks, the last one short
        cache = pg.graphs.kv_cache(pg.geometry, 1, ids.shape[1] + 4)
        runs.append([decoder.prefill(pg.graphs, pg.geometry, cache, ids, embeds, mask)])
        runs[-1].append(pg.generate([images[0]], ["caption en"], max_new_tokens=6))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.ptp(runs[0][0]) > 0
    assert runs[0][1] == runs[1][1]


def test_near_ties_margin_is_top_minus_runner_up():
    import near_ties

    lp = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    assert np.allclose(near_ties.margins(lp), [np.log(0.5 / 0.3), np.log(0.8 / 0.1)])
    assert near_ties.margins(np.log([[0.5, 0.5]]))[0] == 0  # a tie has no margin


def test_quant_table_counts_the_pairs_the_gate_orders_like_the_items():
    import quant_table

    v = {"a": {"seq": 0.9, "gate": 0.8}, "b": {"seq": 0.7, "gate": 0.85}, "c": {"seq": 0.6, "gate": 0.5},
         "d": {"seq": 0.6, "gate": 0.9}}  # c and d tie on the items: that pair is not counted
    # the items order a>b, a>c, a>d, b>c, b>d; the gate agrees on a>c and b>c only
    assert quant_table.concordance(v) == (2, 5)


def test_quant_table_splits_agreement_by_task():
    import quant_table

    report = {"items": [{"id": "a", "task": "caption"}, {"id": "b", "task": "caption"}, {"id": "c", "task": "ocr"}],
              "runs": [{"kind": "reference", "name": "torch-fp32"},
                       {"kind": "bundle", "name": "bundle-x",
                        "accuracy": {"first_divergence": {"per_item": {"a": None, "b": 3, "c": None}}}}]}
    assert quant_table.by_task(report) == [("x", 50.0, None, 100.0, None, None)]  # no VQA, detect or segment items


def test_perf_targets_compare_with_the_fastest_peer_at_each_measure():
    import perf_targets

    bundle = {"ttft_ms": 900.0, "decode_tokens_per_s": 12.0, "peak_rss_mb": 2000.0, "size_bytes": 1.9e9}
    peers = [{"engine": "slow prefill, fast decode", "prefill_ms": 2000.0, "decode_tokens_per_s": 10.0},
             {"engine": "fast prefill, slow decode", "prefill_ms": 1000.0, "decode_tokens_per_s": 8.0}]
    checks = {c["what"].split(" (")[0]: c for c in perf_targets.targets(bundle, {"ttft_ms": 1000.0}, peers)}
    assert checks["TTFT / PyTorch bf16 eager TTFT"]["value"] == 0.9 and checks["TTFT / PyTorch bf16 eager TTFT"]["met"]
    ttft = checks["TTFT / fastest peer's first token"]
    assert "(fast prefill, slow decode)" in ttft["what"]
    assert ttft["value"] == 0.9 and not ttft["met"]  # 0.9x the fastest prefill misses <= 0.8
    decode = checks["decode tok/s / fastest peer's"]
    assert "(slow prefill, fast decode)" in decode["what"]
    assert decode["value"] == 1.2 and decode["met"]  # against the 10 tok/s peer, not the 8
    rss = checks["peak RSS - bundle size"]
    assert abs(rss["value"] - (2000 * 2**20 / 1e9 - 1.9)) < 1e-9 and rss["met"]


def test_perf_targets_count_a_peers_vision_encoder_in_its_first_token():
    import perf_targets

    bundle = {"ttft_ms": 900.0, "decode_tokens_per_s": 12.0, "peak_rss_mb": 2000.0, "size_bytes": 1.9e9}
    peers = [{"engine": "text only", "prefill_ms": 1100.0, "decode_tokens_per_s": 10.0},
             {"engine": "with vision", "prefill_ms": 1000.0, "vision_ms": 200.0, "ttft_ms": 1200.0,
              "decode_tokens_per_s": 8.0}]
    checks = {c["what"].split(" (")[0]: c for c in perf_targets.targets(bundle, {"ttft_ms": 1000.0}, peers)}
    ttft = checks["TTFT / fastest peer's first token"]
    assert "(text only)" in ttft["what"]  # 1100 ms beats the other's 1000 ms prefill + 200 ms vision
    assert abs(ttft["value"] - 900 / 1100) < 1e-12
    rows = perf_targets._rows({"torch_bf16": {"ttft_ms": 1, "vision_ms": 1, "prefill_ms": 1, "decode_tokens_per_s": 1,
                                              "peak_rss_mb": 1},
                               "torch_fp32": {"ttft_ms": 1, "vision_ms": 1, "prefill_ms": 1, "decode_tokens_per_s": 1,
                                              "peak_rss_mb": 1},
                               "bundles": [], "peers": [{**p, "peak_rss_mb": 1} for p in peers]})
    assert [r[1:4] for r in rows[2:]] == [("prefill only (text, causal)", None, None),
                                         ("vision + prefill (text, causal)", 1200, 200)]


def test_perf_targets_bound_decode_by_the_bandwidth_and_the_decoder_bytes(bundles):
    """The decode ceiling under the table: the decoder's files (what a step reads) over the measured bandwidth."""
    import subprocess

    import perf_targets

    decoder = bundles["tiny-pg1"] / "decoder.onnx"
    on_disk = decoder.stat().st_size + sum(f.stat().st_size for f in decoder.parent.glob("decoder.onnx.data"))
    assert perf_targets._decoder_bytes(str(bundles["tiny-pg1"])) == on_disk
    probe = json.loads(subprocess.run([sys.executable, str(Path(perf_targets.__file__).with_name("bandwidth_probe.py")),
                                       "--threads", "2", "--gib", "0.125"], check=True, capture_output=True,
                                      text=True).stdout)
    assert probe["threads"] == 2 and 0 < probe["read_gb_s"] < 10_000
    timing = {"ttft_ms": 1.0, "vision_ms": 1.0, "prefill_ms": 1.0, "decode_tokens_per_s": 1.0, "peak_rss_mb": 1.0}
    bundle = {**timing, "name": "b", "decode_tokens_per_s": 12.5, "decoder_bytes": 1.25e9, "targets": []}
    notes = "\n".join(perf_targets._notes({
        "source": "s", "prompt_tokens": 259, "new_tokens": 32, "threads": 2, "repeats": 3, "bundles": [bundle],
        "peers": [{"engine": "peer", "prefill_ms": 1.0, "decode_tokens_per_s": 10.0}],
        "bandwidth": {"threads": 2, "read_gb_s": 20.0}, "torch_gemm_gflops": {"gflops": {}}}))
    assert "b 1.25 GB, at most 16.0 tok/s (measured 12.50)" in notes
    assert "1.15 x peer's, is 11.5 tok/s" in notes


def test_llamacpp_tokenizer_model_keeps_every_piece_and_the_special_ids(tmp_path):
    import llamacpp_reference
    from sentencepiece import SentencePieceProcessor

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"<0x{i:02X}>": 4 + i for i in range(256)},
             "▁a": 260, "b": 261, "▁ab": 262}
    spec = {"model": {"type": "BPE", "vocab": vocab, "unk_token": "<unk>"},
            "added_tokens": [{"id": i, "content": t, "special": True} for t, i in list(vocab.items())[:4]]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    llamacpp_reference.sentencepiece_model(tmp_path / "tokenizer.json", tmp_path / "tokenizer.model")
    sp = SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.vocab_size() == len(vocab)
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert [sp.IdToPiece(i) for i in (5, 261, 262)] == ["<0x01>", "b", "▁ab"]
    assert sp.IsByte(5) and sp.IsControl(1) and not sp.IsControl(261)


def test_openvino_ep_reads_the_placement_onnxruntime_logs():
    import openvino_ep

    v = "2026-01-01 00:00:00.1 [V:onnxruntime:, session_state.cc:1313 VerifyEachNodeIsAssignedToAnEp]"
    log = "\n".join([f"{v} Node placements", f"{v}  Node(s) placed on [OpenVINOExecutionProvider]. Number of nodes: 2",
                     f"{v}   OpenVINO-EP-subgraph_1 (OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0)",
                     f"{v}   OpenVINO-EP-subgraph_2 (OpenVINOExecutionProvider_OpenVINO-EP-subgraph_2_1)",
                     f"{v}  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3",
                     f"{v}   RotaryEmbedding (/rotary_q)", f"{v}   RotaryEmbedding (/rotary_k)", f"{v}   FastGelu (/gelu)",
                     "2026-01-01 00:00:00.2 [I:onnxruntime:, inference_session.cc:2567 Initialize] Session initialized."])
    assert openvino_ep.placement(log) == {"nodes": {"OpenVINOExecutionProvider": 2, "CPUExecutionProvider": 3},
                                          "cpu_ops": {"RotaryEmbedding": 2, "FastGelu": 1}, "subgraphs": 2}
    whole = f"{v}  All nodes placed on [OpenVINOExecutionProvider]. Number of nodes: 1"
    assert openvino_ep.placement(whole) == {"nodes": {"OpenVINOExecutionProvider": 1}, "cpu_ops": {}, "subgraphs": 1}


def test_profile_ops_counts_a_control_flow_node_at_its_own_time(tmp_path):
    """An If's profiled span holds its subgraph's nodes, which are profiled too: summing both counted them twice."""
    def node(ts, dur, op):
        return {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    trace = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 200},
             node(0, 20, "MatMul"), node(30, 100, "If"), node(35, 30, "MatMul"), node(70, 50, "If"),
             node(72, 40, "Softmax"), node(140, 50, "Add")]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    (run,) = profile_ops._node_times_by_run(path)
    assert run == {"MatMul": 50.0, "If": 20.0 + 10.0, "Softmax": 40.0, "Add": 50.0}
    assert sum(run.values()) == 20 + 100 + 50  # the top-level nodes' spans


def test_int8_gemm_bundle_keeps_the_head_and_answers_like_its_source(int4_bundle, images, tmp_path):
    """benchmarks/int8_gemm.py on a 4-bit bundle: every decoder product but the lm_head becomes int8, the
    source is untouched, and the copy's prefill logits stay near the source's (int8 steps of the 4-bit weights)."""
    import int8_gemm

    before = {f: sha256_file(int4_bundle / f) for f in load_manifest(int4_bundle).raw["files"]}
    source = onnx.load(str(int4_bundle / "decoder.onnx"), load_external_data=False).graph
    products = sum(n.op_type == "MatMulNBits" for n in source.node)
    dst = tmp_path / "int8"
    assert int8_gemm.derive(int4_bundle, dst) == products - 1
    assert {f: sha256_file(int4_bundle / f) for f in before} == before
    graph = onnx.load(str(dst / "decoder.onnx"), load_external_data=False).graph
    heads = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(heads) == 1 and heads[0].output[0] in {o.name for o in graph.output}
    layers = load_manifest(int4_bundle).geometry.text_layers
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == 4 * layers  # qkv, o, gate/up, down inputs
    assert sum(n.op_type == "MatMulIntegerToFloat" for n in graph.node) == products - 1
    assert load_manifest(dst).raw["build"]["derived"]["int8_gemm"] == {"products": products - 1}
    logits = [_prefill_logits(bundle, images[0]).ravel() for bundle in (int4_bundle, dst)]
    assert not np.array_equal(logits[0], logits[1])  # it does compute differently
    assert np.corrcoef(logits[0], logits[1])[0, 1] > 0.99
