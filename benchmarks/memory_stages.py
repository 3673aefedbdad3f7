"""Where a bundle's memory goes: RSS and peak RSS after each stage of a few generations, per session setting.

    python benchmarks/memory_stages.py BUNDLE [BUNDLE ...] [--generations 3] [--new-tokens 8] [--arena both] [--trim on]
        [--mmap-threshold both]

Each (bundle, setting) runs in a fresh process: load, then GENERATIONS times vision encoder, projector,
prefill and NEW_TOKENS - 1 decode steps on a generated image (the same one each time, the image cache off so
that every generation runs the vision encoder). After each stage the child reads VmRSS and VmHWM (the peak
so far) from /proc/self/status, and the anonymous and file-backed resident bytes from /proc/self/smaps
(file-backed: pages of the bundle's mapped weight files), and how long the stage took (decode: all its steps; one
sample each, so a time comparison wants several generations). --arena compares onnxruntime's CPU memory arena
on and off (SessionConfig.mem_arena), --trim giving the heap's free pages back after the vision encoder and the
prefill (SessionConfig.trim_heap) on and off, --mmap-threshold the runtime's fixed 1 MiB mmap threshold
(SessionConfig.mmap_threshold) against glibc's own. Prints one markdown table. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("load", "vision", "projector", "prefill", "decode")


def child(bundle: str, arena: bool, trim: bool, mmap: bool, generations: int, new_tokens: int) -> None:
    import numpy as np

    from pgexport.bench.harness import memory_mb
    from pgexport.bench.onnx_engine import OnnxEngine
    from pgexport.verify.parity import parity_image
    from pgexport_runtime import SessionConfig
    from pgexport_runtime.mapped import _mappings

    def sample(stage: str, generation: int) -> dict:
        maps = _mappings()
        return {"stage": stage, "generation": generation, **memory_mb(),
                "anonymous": sum(m["anonymous"] for m in maps),
                "weights": sum(m["rss"] for m in maps if m["path"].startswith(str(Path(bundle).resolve())))}

    rows = []
    start = time.perf_counter()
    threshold = SessionConfig.mmap_threshold if mmap else 0  # the default, or glibc's own
    engine = OnnxEngine(bundle, 2, SessionConfig(intra_op_threads=2, mem_arena=arena, trim_heap=trim,
                                                 mmap_threshold=threshold))

    def stage(name: str, generation: int) -> None:
        nonlocal start
        ms = 1e3 * (time.perf_counter() - start)  # before reading /proc, which is not the stage's time
        rows.append({**sample(name, generation), "ms": ms})
        start = time.perf_counter()

    stage("load", 0)
    for n in range(1, generations + 1):
        pixels, ids = engine.preprocess(parity_image(engine.g.image_size, seed=0), "caption en")
        start = time.perf_counter()
        features = engine.vision(pixels)
        stage("vision", n)
        embeds = engine.project(features)
        stage("projector", n)
        token = int(np.argmax(engine.prefill(ids, embeds, ids.shape[1] + new_tokens)))
        stage("prefill", n)
        for _ in range(new_tokens - 1):
            token = int(np.argmax(engine.decode(token)))
        stage("decode", n)
    print(json.dumps(rows))


COLUMNS = ("bundle", "MB on disk", "arena", "heap trim", "mmap threshold", "stage", "ms", "RSS MB", "peak RSS MB",
           "anonymous MB")


def rows(bundle: str, arena: str, trim: str, mmap: str, samples: list[dict]) -> list[tuple]:
    from pgexport_runtime.session import SessionConfig

    size = sum(p.stat().st_size for p in Path(bundle).iterdir() if p.is_file()) / 1e6
    threshold = f"{SessionConfig.mmap_threshold >> 10} KiB" if mmap == "on" else "glibc's"
    return [(Path(bundle).name, round(size, 1), arena, trim, threshold,
             r["stage"] if r["stage"] == "load" else f"{r['stage']} #{r['generation']}", round(r["ms"]),
             round(r["rss_mb"]), round(r["peak_rss_mb"]), round(r["anonymous"] / 1e6)) for r in samples]


def main() -> None:
    from pgexport.bench.harness import write_measurement

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--arena", choices=("on", "off", "both"), default="both")
    ap.add_argument("--trim", choices=("on", "off", "both"), default="on")
    ap.add_argument("--mmap-threshold", choices=("on", "off", "both"), default="on")
    ap.add_argument("--name", default="memory_stages", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.bundles[0], args.arena == "on", args.trim == "on", args.mmap_threshold == "on", args.generations,
              args.new_tokens)
        return
    both = lambda choice: ("on", "off") if choice == "both" else (choice,)  # noqa: E731
    table = []
    for bundle in args.bundles:
        for arena in both(args.arena):
            for trim in both(args.trim):
                for mmap in both(args.mmap_threshold):
                    out = subprocess.run([sys.executable, __file__, bundle, "--child", "--arena", arena, "--trim", trim,
                                          "--mmap-threshold", mmap, "--generations", str(args.generations),
                                          "--new-tokens", str(args.new_tokens)],
                                         check=True, capture_output=True, text=True).stdout
                    table += rows(bundle, arena, trim, mmap, json.loads(out.strip().splitlines()[-1]))
    path = write_measurement(args.name, "Memory after each stage of a generation", "benchmarks/memory_stages.py",
                             COLUMNS, table, ["Each (bundle, arena, heap trim, mmap threshold) runs in a fresh process. MB are 10^6 bytes; "
                                              "peak RSS is the peak so far (VmHWM)."], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
