"""Concurrency and soak: one PaliGemma object shared by N threads, and many generations in a row.

    python benchmarks/soak.py [BUNDLE] [--threads 4 8] [--generations 500] [--new-tokens 16]

1. Concurrency: the same (image, prompt) jobs run sequentially, then from N threads sharing one runtime object;
   the outputs must be identical (onnxruntime sessions are thread-safe for Run; each generation owns its KV
   buffers). Prints the number of differing answers per thread count.
2. Soak: `--generations` greedy generations on one object, cycling through the jobs. Prints RSS after the
   first 100 and at the end (growth in %), and median ms per token over the first and the last 50 generations.
The default bundle is the demo model's (built once, as `pgexport demo` does). Linux only (RSS from /proc).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgexport.bench.harness import cpu, memory_mb, timed


def jobs(n: int):
    """Deterministic, distinct (image, prompt) pairs from the demo generator."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not installed
    from tools.demo_model.generator import make_example

    tasks = ("caption", "vqa", "ocr", "detect", "segment")
    out = []
    for i in range(n):
        ex = make_example(20261130, i, task=tasks[i % len(tasks)])
        out.append((ex.scene.image, ex.prefix))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", type=Path, default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from pgexport_runtime import PaliGemma, SessionConfig

    bundle = args.bundle
    if bundle is None:
        from pgexport.demo import ensure_bundle

        bundle = ensure_bundle(Path("demo-bundle"))
    pg = PaliGemma(bundle, SessionConfig(intra_op_threads=1))
    work = jobs(args.jobs)
    n = args.new_tokens

    sequential = [pg(im, p, max_new_tokens=n).tokens for im, p in work]
    report: dict = {"cpu": cpu(), "bundle": str(bundle), "jobs": len(work), "new_tokens": n, "concurrency": {}}
    for threads in args.threads:
        with ThreadPoolExecutor(threads) as pool:
            shared = list(pool.map(lambda job: pg(job[0], job[1], max_new_tokens=n).tokens, work))
        report["concurrency"][threads] = sum(a != b for a, b in zip(shared, sequential))
        print(f"{threads} threads on one object: {report['concurrency'][threads]} of {len(work)} answers differ "
              "from sequential", flush=True)

    counts = []  # tokens per generation

    def generate() -> None:
        im, p = work[len(counts) % len(work)]
        counts.append(len(pg(im, p, max_new_tokens=n).tokens))

    first_100 = min(100, args.generations)
    seconds = timed(generate, first_100, warmup=0)
    rss_at_100 = memory_mb()["rss_mb"]
    seconds += timed(generate, args.generations - first_100, warmup=0)
    rss_end = memory_mb()["rss_mb"]
    ms_per_token = [1000 * t / max(1, c) for t, c in zip(seconds, counts)]
    first, last = statistics.median(ms_per_token[:50]), statistics.median(ms_per_token[-50:])
    report["soak"] = {"generations": args.generations, "rss_mb_after_100": round(rss_at_100, 1),
                      "rss_mb_end": round(rss_end, 1), "rss_growth_pct": round(100 * (rss_end / rss_at_100 - 1), 2),
                      "ms_per_token_first_50": round(first, 2), "ms_per_token_last_50": round(last, 2)}
    s = report["soak"]
    print(f"soak, {args.generations} generations on {report['cpu']}: RSS {s['rss_mb_after_100']} MB after 100, "
          f"{s['rss_mb_end']} MB at the end ({s['rss_growth_pct']:+.2f} %); ms per token {first:.2f} "
          f"(first 50) vs {last:.2f} (last 50, median)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
