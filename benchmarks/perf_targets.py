"""The full-scale performance targets, all ratios from ONE run of this script.

    python benchmarks/perf_targets.py BUNDLE [--genai DIR] [--repeats 3] [--new-tokens 32] [--out bench-perf]

BUNDLE is a bundle built from a random-weight preset (e.g. `pgexport build --model paligemma-3b-224
--quant int4-rtn-b32`: random weights need no calibration). In one run, each engine in its own process, one
after the other:
  1. `pgexport bench` speed mode: the bundle and the PyTorch bf16 eager reference on the same generated
     image + prompt (time to first token = preprocessing + vision + projector + prefill), EOS ignored;
  2. onnxruntime-genai (benchmark-only extra) on the same decoder geometry and the same random weights,
     built by genai's own builder (`benchmarks/genai_reference.py`; built here when --genai is not given),
     prefilled with as many tokens as the bundle's prefix, then greedy decode.
Writes OUT/perf.json (and the bench report beside it) and the table, with the ratios against their targets,
to docs/measurements/NAME.md.
Targets (at 224 pixels, against onnxruntime-genai): TTFT <= 0.8x
the peer's prefill alone; decode tokens/s >= 1.15x the peer's; runtime peak RSS <= the bundle's size + 0.4 GB.
PyTorch bf16 and fp32 eager are reported beside them, as context.
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
COLUMNS = ("engine", "TTFT ms", "vision ms", "prefill ms", "decode tok/s", "peak RSS MiB")


def main() -> None:
    from pgexport.bench import BenchOptions, run_bench
    from pgexport.bench.report import write_outputs
    from pgexport_runtime.manifest import load_manifest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", type=Path, nargs="+", help="bundles of the same random-weight preset")
    parser.add_argument("--genai", type=Path, help="a built onnxruntime-genai model folder (default: build one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="0: every core, for every engine")
    parser.add_argument("--out", type=Path, default=Path("bench-perf"))
    parser.add_argument("--name", default="perf_targets", help="docs/measurements/NAME.md is written")
    parser.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = parser.parse_args()

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
    genai = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    probe = json.loads(subprocess.run([sys.executable, str(HERE / "gemm_probe.py"), "--threads", str(threads)],
                                      check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    refs = [r for r in report["runs"] if r["kind"] == "reference"]
    ref = next(r for r in refs if "bf16" in r["name"])
    ref32 = next(r for r in refs if "fp32" in r["name"])
    result = {"source": source, "threads": threads, "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
              "system": report["system"], "torch_bf16": _summary(ref), "torch_fp32": _summary(ref32), "genai_int4": genai,
              "torch_gemm_gflops": probe, "bundles": []}
    for run in (r for r in report["runs"] if r["kind"] == "bundle"):
        ttft = run["latency"]["ttft"]["median_ms"] / genai["prefill_ms"]
        decode = run["throughput"]["decode_tokens_per_s_median"] / genai["decode_tokens_per_s"]
        rss, size = run["memory"]["peak_rss_mb"] * 2**20 / 1e9, run["size"]["total_bytes"] / 1e9  # MiB -> GB
        ttft32 = run["latency"]["ttft"]["median_ms"] / ref32["latency"]["ttft"]["median_ms"]
        checks = [("TTFT / genai int4 prefill", ttft, f"<= {TTFT_MAX}", ttft <= TTFT_MAX),
                  ("decode tok/s / genai int4", decode, f">= {DECODE_MIN}", decode >= DECODE_MIN),
                  ("peak RSS - bundle size (GB = 1e9 bytes)", rss - size, f"<= {RSS_OVER_BUNDLE_GB}",
                   rss - size <= RSS_OVER_BUNDLE_GB)]
        result["bundles"].append({"name": run["name"], "path": run["path"], **_summary(run), "bundle_gb": size,
                                  "ttft_vs_torch_fp32": ttft32,
                                  "targets": [{"what": w, "value": v, "target": t, "met": bool(ok)}
                                              for w, v, t, ok in checks]})
    (args.out / "perf.json").write_text(json.dumps(result, indent=1))
    path = write_measurement(args.name, "Performance targets: bundles against PyTorch eager and onnxruntime-genai",
                             "benchmarks/perf_targets.py", COLUMNS, _rows(result), _notes(result), args.out_dir)
    print(path.read_text(), end="")


def _summary(run: dict) -> dict:
    lat = run["latency"]
    return {"ttft_ms": lat["ttft"]["median_ms"], "vision_ms": lat["vision_encoder"]["median_ms"],
            "prefill_ms": lat["prefill"]["median_ms"], "decode_ms_per_token": lat["decode_per_token"]["median_ms"],
            "decode_tokens_per_s": run["throughput"]["decode_tokens_per_s_median"],
            "peak_rss_mb": run["memory"]["peak_rss_mb"]}


def _rows(r: dict) -> list[tuple]:
    """One row an engine: PyTorch eager, each bundle, onnxruntime-genai."""
    def row(name: str, x: dict) -> tuple:
        return (name, round(x["ttft_ms"]), round(x["vision_ms"]), round(x["prefill_ms"]),
                round(x["decode_tokens_per_s"], 2), round(x["peak_rss_mb"]))

    g = r["genai_int4"]
    return [row("PyTorch bf16 eager", r["torch_bf16"]), row("PyTorch fp32 eager", r["torch_fp32"]),
            *(row(f"bundle {b['name']}", b) for b in r["bundles"]),
            ("onnxruntime-genai int4 (text only, causal)", None, None, round(g["prefill_ms"]),
             round(g["decode_tokens_per_s"], 2), round(g["peak_rss_mb"]))]


def _notes(r: dict) -> list[str]:
    """Under the table: the setting, each bundle's targets (a table of their own), torch's GEMM speed."""
    lines = [f"{r['source']}, {r['prompt_tokens']} prefix tokens, {r['new_tokens']} new tokens, {r['threads']} "
             "threads; medians."]
    for b in r["bundles"]:
        lines += ["", f"Targets for {b['name']}:", "", *table(("target", "measured", "wanted", "met"), [
            (c["what"], round(c["value"], 3), c["target"], "yes" if c["met"] else "NO") for c in b["targets"]]), "",
                  f"Not targets: TTFT / PyTorch fp32 eager {b['ttft_vs_torch_fp32']:.3f}; "
                  f"TTFT / PyTorch bf16 eager {b['ttft_ms'] / r['torch_bf16']['ttft_ms']:.3f}."]
    lines += ["", "PyTorch GEMM on this machine, GFLOP/s (fp32 / bf16): " + "; ".join(
        f"{k} {v['fp32']:.0f} / {v['bf16']:.0f}" for k, v in r["torch_gemm_gflops"]["gflops"].items())]
    return lines


if __name__ == "__main__":
    main()
