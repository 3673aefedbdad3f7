"""The full-scale performance comparison with PyTorch and the peer engines, all ratios from ONE run of this script.

    python benchmarks/perf_targets.py BUNDLE [--genai DIR] [--llama-bin DIR --gguf F ...] [--repeats 3]

BUNDLE is a bundle built from a random-weight preset (e.g. `pgexport build --model paligemma-3b-224
--quant int4-rtn-b32`: random weights need no calibration). In one run, each engine in its own process, one
after the other, nothing else running:
  1. `pgexport bench` speed mode: the bundle and the PyTorch bf16 and fp32 eager references on the same
     generated image + prompt (time to first token = preprocessing + vision + projector + prefill), EOS ignored;
  2. onnxruntime-genai (benchmark-only extra) on the same decoder geometry and the same random weights,
     built by genai's own builder (`benchmarks/genai_reference.py`; built here when --genai is not given),
     prefilled with as many tokens as the bundle's prefix, then greedy decode;
  3. llama.cpp, where given: `llama-bench` on each GGUF (`benchmarks/llamacpp_reference.py` makes them from
     the same weights), the same prefix length and new tokens;
  4. OpenVINO, where given: GenAI's LLMPipeline on optimum-intel's int4 export of the same decoder, beside the
     vision tower and projector as an int8 IR (`benchmarks/openvino_reference.py`, in OpenVINO's own
     environment: --ov-python).
The peers run the text decoder only, causally: their first token is a prefill with no image, plus, for
OpenVINO, one call of its vision IR.
Writes OUT/perf.json (and the bench report beside it) and the table, with the ratios against their targets,
to docs/measurements/NAME.md, under the CPU's model and flags.
Targets, for each bundle: TTFT <= PyTorch bf16 eager's and <= 0.8x the fastest peer's prefill; decode
tokens/s >= 1.15x the fastest peer's; runtime peak RSS <= the bundle's size + 0.4 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pgexport.bench.harness import table, write_measurement

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TTFT_MAX, DECODE_MIN, RSS_OVER_BUNDLE_GB = 0.8, 1.15, 0.4
COLUMNS = ("engine", "first token covers", "TTFT ms", "vision ms", "prefill ms", "decode tok/s", "peak RSS MiB",
           "on disk MB")


def main() -> None:
    from pgexport.bench import BenchOptions, run_bench
    from pgexport.bench.report import write_outputs
    from pgexport_runtime.manifest import load_manifest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", type=Path, nargs="+", help="bundles of the same random-weight preset")
    parser.add_argument("--genai", type=Path, help="a built onnxruntime-genai model folder (default: build one)")
    parser.add_argument("--llama-bin", type=Path, help="a llama.cpp build's bin folder (llama-bench), for --gguf")
    parser.add_argument("--gguf", type=Path, nargs="*", default=[], help="GGUF files of the same weights "
                        "(benchmarks/llamacpp_reference.py build)")
    parser.add_argument("--openvino", type=Path, help="a folder built by benchmarks/openvino_reference.py build")
    parser.add_argument("--ov-python", type=Path, help="the python of OpenVINO's environment, for --openvino")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="0: every core, for every engine")
    parser.add_argument("--out", type=Path, default=Path("bench-perf"))
    parser.add_argument("--name", default="perf_targets", help="docs/measurements/NAME.md is written")
    parser.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = parser.parse_args()

    if args.gguf and args.llama_bin is None:
        sys.exit("error: --gguf needs --llama-bin, the folder holding llama-bench")
    if args.openvino and args.ov_python is None:
        sys.exit("error: --openvino needs --ov-python, the python of the environment OpenVINO is installed in")
    sources_ = {(load_manifest(b).record.source or {}).get("spec") for b in args.bundles}
    if len(sources_) != 1:
        sys.exit(f"error: the bundles come from different sources ({', '.join(sorted(sources_))}); give one source's bundles")
    source = sources_.pop()
    genai_dir = args.genai
    if genai_dir is None:
        import genai_reference

        ckpt = genai_reference.export_gemma(source, args.out / "genai" / f"{source}-gemma")
        genai_dir = genai_reference.build_genai(ckpt, args.out / "genai" / f"{source}-genai-int4")

    opts = BenchOptions(bundles=tuple(args.bundles), reference_dtypes=("bf16", "fp32"), mode="speed", repeats=args.repeats,
                        new_tokens=args.new_tokens, threads=args.threads, work_dir=args.out / "bench")
    report = run_bench(opts, progress=lambda name, done, total: print(f"\r{name}: {done}/{total}  ", end="", flush=True))
    print()
    write_outputs(report, args.out / "report")
    items = json.loads((args.out / "bench" / "inputs-0" / "items.json").read_text())
    prompt_tokens = len(items[0]["input_ids"])
    threads = report["settings"]["threads"]
    cmd = [sys.executable, str(HERE / "genai_reference.py"), "time", str(genai_dir), "--prompt-tokens",
           str(prompt_tokens), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
           "--threads", str(threads)]
    peers = [{"engine": "onnxruntime-genai int4", **_last_json(cmd)}]
    for gguf in args.gguf:
        run = _last_json([sys.executable, str(HERE / "llamacpp_reference.py"), "time", str(gguf), "--llama-bin",
                          str(args.llama_bin), "--prompt-tokens", str(prompt_tokens), "--new-tokens",
                          str(args.new_tokens), "--repeats", str(args.repeats), "--threads", str(threads)])
        peers.append({**run, "engine": f"llama.cpp {gguf.stem}"})
    if args.openvino:
        peers.append(_last_json([str(args.ov_python), str(HERE / "openvino_reference.py"), "time", str(args.openvino),
                                 "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(args.new_tokens),
                                 "--repeats", str(args.repeats), "--threads", str(threads)]))
    peers[0]["size_bytes"] = sum(f.stat().st_size for f in genai_dir.iterdir() if f.suffix in (".onnx", ".data"))
    probe = _last_json([sys.executable, str(HERE / "gemm_probe.py"), "--threads", str(threads)])
    bandwidth = _last_json([sys.executable, str(HERE / "bandwidth_probe.py"), "--threads", str(threads)])

    refs = [r for r in report["runs"] if r["kind"] == "reference"]
    ref = next(r for r in refs if "bf16" in r["name"])
    ref32 = next(r for r in refs if "fp32" in r["name"])
    result = {"source": source, "threads": threads, "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "system": report["system"], "torch_bf16": _summary(ref),
              "torch_fp32": _summary(ref32), "peers": peers, "torch_gemm_gflops": probe, "bandwidth": bandwidth,
              "bundles": []}
    for run in (r for r in report["runs"] if r["kind"] == "bundle"):
        b = {"name": run["name"], "path": run["path"], **_summary(run), "size_bytes": run["size"]["total_bytes"],
             "decoder_bytes": _decoder_bytes(run["path"]), "prefill_graph": run.get("prefill_graph")}
        b["targets"] = targets(b, result["torch_bf16"], peers)
        result["bundles"].append(b)
    (args.out / "perf.json").write_text(json.dumps(result, indent=1))
    path = write_measurement(args.name, "Performance against PyTorch eager and the peer engines",
                             "benchmarks/perf_targets.py", COLUMNS, _rows(result), _notes(result), args.out_dir)
    print(path.read_text(), end="")


def _last_json(cmd: list[str]) -> dict:
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def _summary(run: dict) -> dict:
    lat = run["latency"]
    return {"ttft_ms": lat["ttft"]["median_ms"], "vision_ms": lat["vision_encoder"]["median_ms"],
            "prefill_ms": lat["prefill"]["median_ms"], "decode_ms_per_token": lat["decode_per_token"]["median_ms"],
            "decode_tokens_per_s": run["throughput"]["decode_tokens_per_s_median"],
            "peak_rss_mb": run["memory"]["peak_rss_mb"]}


def targets(bundle: dict, torch_bf16: dict, peers: list[dict]) -> list[dict]:
    """The bundle's targets against PyTorch bf16 eager and the fastest peer (fastest at each measure on its own).
    A peer's first token is its prefill, plus its vision encoder where it has one; the bundle's also holds the
    preprocessing."""
    first = min(peers, key=_first_token_ms)
    decode = max(peers, key=lambda p: p["decode_tokens_per_s"])
    over = bundle["peak_rss_mb"] * 2**20 / 1e9 - bundle["size_bytes"] / 1e9  # MiB -> GB of 10^9 bytes
    checks = [("TTFT / PyTorch bf16 eager TTFT", bundle["ttft_ms"] / torch_bf16["ttft_ms"], 1.0, "<="),
              (f"TTFT / fastest peer's first token ({first['engine']})", bundle["ttft_ms"] / _first_token_ms(first),
               TTFT_MAX, "<="),
              (f"decode tok/s / fastest peer's ({decode['engine']})",
               bundle["decode_tokens_per_s"] / decode["decode_tokens_per_s"], DECODE_MIN, ">="),
              ("peak RSS - bundle size (GB)", over, RSS_OVER_BUNDLE_GB, "<=")]
    return [{"what": what, "value": value, "target": f"{op} {limit}",
             "met": bool(value <= limit if op == "<=" else value >= limit)} for what, value, limit, op in checks]


def _decoder_bytes(bundle: str) -> int:
    """The decoder graph and its weight files: what one decode step reads (the lm_head reads the whole table)."""
    from pgexport_runtime.manifest import load_manifest

    m = load_manifest(bundle, verify=False)
    entry = m.graphs["decoder"]
    return sum(m.path(f).stat().st_size for f in (entry.file, *entry.data_files))


def _first_token_ms(peer: dict) -> float:
    return peer.get("ttft_ms", peer["prefill_ms"])


def _rows(r: dict) -> list[tuple]:
    """One row an engine: PyTorch eager, each bundle, each peer."""
    def row(name: str, covers: str, x: dict, size: int | None) -> tuple:
        return (name, covers, round(x["ttft_ms"]) if "ttft_ms" in x else None,
                round(x["vision_ms"]) if "vision_ms" in x else None, round(x["prefill_ms"]),
                round(x["decode_tokens_per_s"], 2), round(x["peak_rss_mb"]), size and round(size / 1e6))

    image = "preprocess + vision + prefill"
    return [row("PyTorch bf16 eager", image, r["torch_bf16"], None),
            row("PyTorch fp32 eager", image, r["torch_fp32"], None),
            *(row(f"bundle {b['name']}" + _prefill_words(b), image, b, b["size_bytes"]) for b in r["bundles"]),
            *(row(p["engine"], "vision + prefill (text, causal)" if "vision_ms" in p else "prefill only (text, causal)",
                  p, p.get("size_bytes")) for p in r["peers"])]


def _prefill_words(b: dict) -> str:
    """Where the runtime ran this bundle's prefills on its int8 graph (SessionConfig.prefill), the row says so."""
    graph = b.get("prefill_graph")
    return f" (prefill on {graph})" if graph not in (None, "decoder") else ""


def _notes(r: dict) -> list[str]:
    """Under the table: the setting, each bundle's targets (a table of their own), torch's GEMM speed."""
    lines = [f"{r['source']}, {r['prompt_tokens']} prefix tokens, {r['new_tokens']} new tokens, {r['threads']} "
             f"threads; medians of {r['repeats']} runs, each engine in its own process, one after the other. MiB of "
             "peak RSS are 2^20 bytes, MB on disk 10^6. The peers run the text decoder alone: their first token "
             "is a prefill with no image (OpenVINO's adds one call of its vision IR), so the comparison is the "
             "harder one for the bundle."]
    for p in r["peers"]:
        if p["engine"].startswith("llama.cpp"):
            lines += ["", f"{p['engine']}: llama-bench, build {p.get('build', '?')}, backends {p.get('backends', '?')}; "
                          "decode = new tokens / (t(prefill + decode) - t(prefill)), at the prefix's depth."]
        elif p["engine"].startswith("OpenVINO"):
            lines += ["", f"{p['engine']}: OpenVINO {p['openvino']}, GenAI {p['openvino_genai']}, CPU inference "
                          f"precision {p['precision']}; prefill = the pipeline's TTFT (prefill + first token), decode "
                          "= 1000 / its TPOT; peak RSS with the vision IR and the pipeline both loaded."]
    for b in r["bundles"]:
        lines += ["", f"Targets for {b['name']}:", "", *table(("target", "measured", "wanted", "met"), [
            (c["what"], round(c["value"], 3), c["target"], "yes" if c["met"] else "NO") for c in b["targets"]])]
    gb_s = r["bandwidth"]["read_gb_s"]
    fastest = max(r["peers"], key=lambda p: p["decode_tokens_per_s"])
    lines += ["", f"Memory read bandwidth, {r['bandwidth']['threads']} threads (`bandwidth_probe.py`): {gb_s} GB/s. "
                  "A decode step reads the decoder's weights once, so bandwidth / decoder bytes bounds its rate: "
                  + "; ".join(f"{b['name']} {b['decoder_bytes'] / 1e9:.2f} GB, at most {gb_s * 1e9 / b['decoder_bytes']:.1f} "
                              f"tok/s (measured {b['decode_tokens_per_s']:.2f})" for b in r["bundles"])
                  + f". The decode target, {DECODE_MIN} x {fastest['engine']}'s, is "
                  f"{DECODE_MIN * fastest['decode_tokens_per_s']:.1f} tok/s."]
    lines += ["", "PyTorch GEMM on this machine, GFLOP/s (fp32 / bf16): " + "; ".join(
        f"{k} {v['fp32']:.0f} / {v['bf16']:.0f}" for k, v in r["torch_gemm_gflops"]["gflops"].items())]
    return lines


if __name__ == "__main__":
    main()
