"""Decode cost against context length for the KV-cache layouts "concat" and "shared".

    python benchmarks/kv_layout.py --bundle concat=/tmp/b3 --bundle shared=/tmp/b3s --lengths 256,1024,4096

Each bundle's decoder is loaded alone; for each context length its cache is filled with random values to that
length (the cost of a decode step does not depend on the values, and a real prefill of 4,096 tokens takes
minutes here), then `--steps` decode steps run through the runtime's own `decoder.decode` with IO binding.
Reported: the median milliseconds per token over `--repeats` runs, the bundles measured in turn within each
repeat, and the ratio to the first bundle, all in one run on one machine (name the CPU beside the figures: `lscpu`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pgexport_runtime import PaliGemma, decoder


def per_token_ms(pg: PaliGemma, length: int, steps: int) -> float:
    g = pg.geometry
    cache = pg.graphs.kv_cache(g, 1, length + steps)
    rng = np.random.default_rng(0)
    for buf in cache._keep:  # past and present sides alike: the values do not matter, their presence does
        buf[:] = rng.standard_normal(buf.shape[0], dtype=np.float32)
    cache.length = length
    mask = np.ones((1, length), dtype=np.int64)
    token = np.array([g.bos_token_id])
    times = []
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        t = time.perf_counter()
        decoder.decode(pg.graphs, g, cache, token, mask)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    bundles = {name: PaliGemma(path, load="decoder") for name, _, path in (s.partition("=") for s in args.bundle)}
    # interleaved: each repeat measures every bundle in turn, so a drift of the machine touches them alike (one
    # bundle measured after the other differed by up to 25 % at 256 tokens, in either order)
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in lengths} for name in bundles}
    for _ in range(args.repeats):
        for n in lengths:
            for name, pg in bundles.items():
                times[name][n].append(per_token_ms(pg, n, args.steps))
    results = {name: {n: statistics.median(v) for n, v in per.items()} for name, per in times.items()}
    base = next(iter(results))
    print("| cached tokens | " + " | ".join(f"{n} ms/token" for n in results) + " | " +
          " | ".join(f"{n} / {base}" for n in list(results)[1:]) + " |")
    print("|---:|" + "---:|" * (2 * len(results) - 1))
    for length in lengths:
        cells = [f"{results[n][length]:.1f}" for n in results]
        ratios = [f"{results[n][length] / results[base][length]:.2f}" for n in list(results)[1:]]
        print(f"| {length} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
