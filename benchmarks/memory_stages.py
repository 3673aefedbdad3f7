"""Where a bundle's memory goes: RSS and peak RSS after each stage of a few generations, per session setting.

    python benchmarks/memory_stages.py BUNDLE [BUNDLE ...] [--generations 3] [--new-tokens 8] [--arena both]

Each (bundle, setting) runs in a fresh process: load, then GENERATIONS times vision encoder, projector,
prefill and NEW_TOKENS - 1 decode steps on a generated image (the same one each time, the image cache off so
that every generation runs the vision encoder). After each stage the child reads VmRSS and VmHWM (the peak
so far) from /proc/self/status, and the anonymous and file-backed resident bytes from /proc/self/smaps
(file-backed: pages of the bundle's mapped weight files). --arena compares onnxruntime's CPU memory arena
on and off (SessionConfig.mem_arena). Prints one markdown table per bundle. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STAGES = ("load", "vision", "projector", "prefill", "decode")


def child(bundle: str, arena: bool, generations: int, new_tokens: int) -> None:
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
    engine = OnnxEngine(bundle, 2, SessionConfig(intra_op_threads=2, mem_arena=arena))
    rows.append(sample("load", 0))
    for n in range(1, generations + 1):
        pixels, ids = engine.preprocess(parity_image(engine.g.image_size, seed=0), "caption en")
        features = engine.vision(pixels)
        rows.append(sample("vision", n))
        embeds = engine.project(features)
        rows.append(sample("projector", n))
        token = int(np.argmax(engine.prefill(ids, embeds, ids.shape[1] + new_tokens)))
        rows.append(sample("prefill", n))
        for _ in range(new_tokens - 1):
            token = int(np.argmax(engine.decode(token)))
        rows.append(sample("decode", n))
    print(json.dumps(rows))


COLUMNS = ("bundle", "MB on disk", "arena", "stage", "RSS MB", "peak RSS MB", "anonymous MB")


def rows(bundle: str, setting: str, samples: list[dict]) -> list[tuple]:
    size = sum(p.stat().st_size for p in Path(bundle).iterdir() if p.is_file()) / 1e6
    return [(Path(bundle).name, round(size, 1), setting,
             r["stage"] if r["stage"] == "load" else f"{r['stage']} #{r['generation']}",
             round(r["rss_mb"]), round(r["peak_rss_mb"]), round(r["anonymous"] / 1e6)) for r in samples]


def main() -> None:
    from pgexport.bench.harness import write_measurement

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--arena", choices=("on", "off", "both"), default="both")
    ap.add_argument("--name", default="memory_stages", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.bundles[0], args.arena == "on", args.generations, args.new_tokens)
        return
    settings = ("on", "off") if args.arena == "both" else (args.arena,)
    table = []
    for bundle in args.bundles:
        for arena in settings:
            out = subprocess.run([sys.executable, __file__, bundle, "--child", "--arena", arena, "--generations",
                                  str(args.generations), "--new-tokens", str(args.new_tokens)],
                                 check=True, capture_output=True, text=True).stdout
            table += rows(bundle, arena, json.loads(out.strip().splitlines()[-1]))
    path = write_measurement(args.name, "Memory after each stage of a generation", "benchmarks/memory_stages.py",
                             COLUMNS, table, ["Each (bundle, arena) runs in a fresh process. MB are 10^6 bytes; "
                                              "peak RSS is the peak so far (VmHWM)."], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
