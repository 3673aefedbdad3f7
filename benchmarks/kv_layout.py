"""Decode cost against context length for the KV-cache layouts "concat" and "shared".

    python benchmarks/kv_layout.py --bundle concat=/tmp/b3 --bundle shared=/tmp/b3s --lengths 256,1024,4096

Each bundle's decoder is loaded alone; for each context length its cache is filled with random values to that
length (the cost of a decode step does not depend on the values, and a real prefill of 4,096 tokens takes
minutes here), then `--steps` decode steps run through the runtime's own `decoder.decode` with IO binding.
Reported: the median milliseconds per token over `--repeats` runs, the bundles measured in turn within each
repeat, and the ratio to the first bundle, all in one run on one machine, into docs/measurements/NAME.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from pgexport.bench.harness import median_seconds, write_measurement
from pgexport_runtime import PaliGemma, decoder

COLUMNS = ("cached tokens", "bundle", "ms/token", "ratio to the first bundle")


def per_token_ms(pg: PaliGemma, length: int, steps: int) -> float:
    g = pg.geometry
    cache = pg.graphs.kv_cache(g, 1, length + steps)
    rng = np.random.default_rng(0)
    for buf in cache._keep:  # past and present sides alike: the values do not matter, their presence does
        buf[:] = rng.standard_normal(buf.shape[0], dtype=np.float32)
    cache.length = length
    masks = iter([np.ones((1, length + i), dtype=np.int64) for i in range(1, steps + 1)])
    token = np.array([g.bos_token_id])
    return 1000 * median_seconds(lambda: decoder.decode(pg.graphs, g, cache, token, next(masks)), steps, warmup=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="kv_layout", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
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
    rows = [(length, name, round(results[name][length], 1), round(results[name][length] / results[base][length], 2))
            for length in lengths for name in results]
    path = write_measurement(args.name, "Decode cost against context length per KV-cache layout",
                             "benchmarks/kv_layout.py", COLUMNS, rows,
                             [f"Medians of {args.repeats} repeats of {args.steps} decode steps, the bundles measured "
                              f"in turn within each repeat; ratio: against {base}."], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
