"""What each bundle variant costs a phone-sized device: size on disk, load time and peak RSS, measured in one run.

    python benchmarks/phone_memory.py BUNDLE [BUNDLE ...] [--runtimes python,node] [--new-tokens 8] [--threads 2]

Each bundle (a built bundle, a `pgexport package` of one: ORT format, float16 activations; or a `--kv-cache static`
build) runs in a fresh process per runtime, as an app would use it: the Python runtime's `PaliGemma(bundle)` and the
JavaScript runtime's `loadBundle(bundle)` in Node (onnxruntime-node; benchmarks/phone_memory_node.mjs), each timed
(the load), then one "caption en" answer of --new-tokens tokens on a generated image. The child reads its peak RSS
after the load and after the answer. Run the variants of one model side by side, on a quiet machine: the table
gives each row's peak beside the peak of the first row of its model and runtime. Linux only (peak RSS).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("model", "variant", "format", "KV cache", "runtime", "MB on disk", "load s", "peak RSS after load MB",
           "peak RSS MB", "peak - size MB", "peak vs first row")
NODE = Path(__file__).resolve().parent / "phone_memory_node.mjs"


def child(bundle: str, new_tokens: int, threads: int) -> None:
    from pgexport.bench.harness import memory_mb
    from pgexport.verify.parity import parity_image
    from pgexport_runtime import PaliGemma, SessionConfig

    start = time.perf_counter()
    pg = PaliGemma(bundle, session=SessionConfig(intra_op_threads=threads))
    load_s = time.perf_counter() - start
    after_load = memory_mb()["peak_rss_mb"]
    pg.generate([parity_image(pg.geometry.image_size, seed=0)], ["caption en"], max_new_tokens=new_tokens)
    print(json.dumps({"load_s": load_s, "peak_after_load_mb": after_load, "peak_mb": memory_mb()["peak_rss_mb"]}))


def describe(bundle: Path) -> tuple[str, str, str, str]:
    """(model, variant, format, KV cache) from the manifest."""
    from pgexport_runtime.manifest import load_manifest

    m = load_manifest(bundle, verify=False)
    raw = json.loads((bundle / "manifest.json").read_text())
    recipe = ((raw.get("quantization") or {}).get("recipe") or {}).get("name", "fp32")
    package = raw.get("package") or {}
    activations = package.get("activations", "fp32")
    variant = recipe + (f" + {activations} activations" if activations != "fp32" else "")
    formats = sorted({Path(g.file).suffix.lstrip(".") for g in m.graphs.values()})
    model = (raw.get("source") or {}).get("spec") or "?"
    return Path(model).name, variant, "/".join(formats), m.kv_cache.layout.name


def main() -> None:
    from pgexport.bench.harness import write_measurement

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--runtimes", default="python,node", help="python, node or both (default: %(default)s)")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="phone_memory", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(str(args.bundles[0]), args.new_tokens, args.threads)
        return
    runtimes = [r for r in args.runtimes.split(",") if r]
    if unknown := [r for r in runtimes if r not in ("python", "node")]:
        sys.exit(f"error: unknown runtime {unknown[0]!r} (python, node)")
    table, first = [], {}  # the first peak of each model and runtime
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.png"
        for bundle in args.bundles:
            what = describe(bundle)
            size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file()) / 1e6
            for runtime in runtimes:
                print(f"measuring {bundle} ({runtime})", flush=True)
                if runtime == "node" and what[3] == "static":  # the JavaScript runtime refuses the layout
                    table.append((*what, runtime, round(size), *[None] * 5))
                    continue
                if runtime == "python":
                    command = [sys.executable, __file__, str(bundle), "--child", "--new-tokens", str(args.new_tokens),
                               "--threads", str(args.threads)]
                else:
                    if not image.exists():
                        from pgexport.verify.parity import parity_image

                        parity_image(224, seed=0).save(image)
                    command = ["node", str(NODE), str(bundle), str(image), str(args.new_tokens), str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"error: {bundle} ({runtime}) failed:\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                base = first.setdefault((what[0], runtime), r["peak_mb"])
                table.append((*what, runtime, round(size), round(r["load_s"], 2), round(r["peak_after_load_mb"]),
                              round(r["peak_mb"]), round(r["peak_mb"] - size), f"{r['peak_mb'] / base:.2f}x"))
    notes = [f"Each bundle runs in a fresh process per runtime with {args.threads} threads, then answers one "
             f"\"caption en\" of {args.new_tokens} tokens. MB are 10^6 bytes; peak RSS counts the pages of "
             "memory-mapped weight files the process touched as well as its own memory. The JavaScript runtime "
             "refuses the static layout (–)."]
    path = write_measurement(args.name, "Bundle variants for phones: size, load time and peak memory",
                             "benchmarks/phone_memory.py", COLUMNS, table, notes, args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
