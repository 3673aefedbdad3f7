"""How fast this machine reads memory: the ceiling of a decode step, which reads every 4-bit weight once.

    python benchmarks/bandwidth_probe.py [--threads N] [--gib 1]

Each of N threads (default: os.cpu_count()) ORs its share of a GIB-sized buffer into one word with numpy,
which releases the GIL and touches each 8-byte word once; the buffer is four times larger than any CPU cache
here, so it streams from memory. Median of 5 passes after one warm-up, in GB/s (10^9 bytes). One JSON line.

A decode step reads the decoder's weights (the lm_head reads the whole token table), so no engine decodes
faster than bandwidth / decoder bytes: `perf_targets.py` prints that ceiling beside the decode target.
"""

from __future__ import annotations

import argparse
import json
import os
import threading

import numpy as np

from pgexport.bench.harness import median_seconds


def read_gb_s(threads: int, gib: float) -> float:
    words = np.ones(int(gib * (1 << 30)) // 8, dtype=np.uint64)
    parts = np.array_split(words, threads)

    def one_pass():
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return words.nbytes / median_seconds(one_pass, repeats=5, warmup=1) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0: one per CPU")
    parser.add_argument("--gib", type=float, default=1.0, help="buffer size in GiB")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    print(json.dumps({"threads": threads, "read_gb_s": round(read_gb_s(threads, args.gib), 2)}))


if __name__ == "__main__":
    main()
