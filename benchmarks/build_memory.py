"""Build a bundle and log wall time and memory at every build step.

    /usr/bin/time -v python benchmarks/build_memory.py --model paligemma-3b-224 --out /tmp/pg3b

Prints one line per step: elapsed seconds, current and peak RSS (VmHWM) of this process, and the peak RSS
of the PyTorch child process (load, references, export run there), so that a memory problem can be
pinned to the step that causes it. /usr/bin/time -v gives the overall peak.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from pgexport.bench.harness import memory_mb
from pgexport.build.bundle_steps import BuildOptions, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parity-tokens", type=int, default=16)
    ap.add_argument("--quant", default="fp32")
    ap.add_argument("--gate-samples", type=int, default=16)
    ap.add_argument("--gate-tokens", type=int, default=32)
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                    help="one decoder layer at a time (default: as pgexport build decides)")
    args = ap.parse_args()
    t0 = time.time()
    last = ["start"]

    def progress(name: str) -> None:
        mem = memory_mb()
        rss, peak = mem["rss_mb"] / 1e3, mem["peak_rss_mb"] / 1e3
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        print(f"{time.time() - t0:8.1f}s  rss {rss:5.1f} GB  peak {peak:5.1f} GB  child peak {child:5.1f} GB"
              f"  | done: {last[0]:<22} next: {name}", flush=True)
        last[0] = name

    path = build(BuildOptions(model=args.model, out=args.out, force=True, parity_tokens=args.parity_tokens,
                              quant=args.quant, gate_samples=args.gate_samples, gate_tokens=args.gate_tokens,
                              stream=args.stream), progress,
                 lambda text: print(f"{time.time() - t0:8.1f}s  {last[0]}: {text}", flush=True))
    progress("(finished)")
    print(f"bundle {path}: {sum(p.stat().st_size for p in path.iterdir()) / 1e9:.2f} GB on disk")


if __name__ == "__main__":
    main()
