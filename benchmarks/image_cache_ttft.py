"""Time to first token of several prompts about one image, with the runtime's image-feature cache on and off.

    python benchmarks/image_cache_ttft.py BUNDLE [--prompts 3] [--repeats 3] [--threads 2]

Each setting runs in this process on its own PaliGemma (the same bundle), one after the other: one warm-up
generation, then REPEATS rounds, each on a new generated image (so the first prompt of a round is a cache miss)
asking PROMPTS different prompts about it one call at a time, as an app would. TTFT is the time from the call
to the first token's callback (`on_token`): preprocessing, the vision encoder and projector when they run,
prefill. Prints, per prompt position and setting, the median TTFT and the median time spent getting the image's
features (`image_embeddings`: preprocessing, the cache lookup, and the vision encoder and projector when they run;
the rest of TTFT is tokenizing and prefill), and the vision graph's runs per round (counted by wrapping the
session's `run`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

PROMPTS = ("caption en", "answer en what is on the left?", "detect circle", "ocr", "answer en how many shapes?")


def measure(bundle: str, cache_bytes: int, prompts: int, repeats: int, threads: int) -> dict:
    from pgexport.verify.parity import parity_image
    from pgexport_runtime import PaliGemma, SessionConfig

    pg = PaliGemma(bundle, SessionConfig(intra_op_threads=threads), image_cache_bytes=cache_bytes)
    runs = {"vision": 0}
    vision_run = pg.graphs.vision.run

    def counted(*args, **kwargs):
        runs["vision"] += 1
        return vision_run(*args, **kwargs)

    pg.graphs.vision.run = counted
    image_s = []
    embeddings = pg.image_embeddings

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = embeddings(*args, **kwargs)
        image_s.append(time.perf_counter() - t0)
        return out

    pg.image_embeddings = timed
    size = pg.geometry.image_size
    pg.generate([parity_image(size, seed=1000)], ["caption en"], max_new_tokens=2)  # warm-up, another image
    ttft = [[] for _ in range(prompts)]
    features = [[] for _ in range(prompts)]
    vision_runs = []
    for r in range(repeats):
        image, before = parity_image(size, seed=r), runs["vision"]
        for i in range(prompts):
            first = []
            t0 = time.perf_counter()
            pg.generate([image], [PROMPTS[i % len(PROMPTS)]], max_new_tokens=2,
                        on_token=lambda *_: first or first.append(time.perf_counter()))
            ttft[i].append(first[0] - t0)
            features[i].append(image_s[-1])
        vision_runs.append(runs["vision"] - before)
    return {"ttft_s": [statistics.median(t) for t in ttft], "image_s": [statistics.median(t) for t in features],
            "vision_runs_per_round": vision_runs}


COLUMNS = ("setting", "prompt", "TTFT ms", "image features ms", "vision runs per round")


def main() -> None:
    from pgexport.bench.harness import write_measurement

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="image_cache_ttft", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    rows = []
    for name, cache in (("cache off", 0), ("cache on", 64 << 20)):
        r = measure(args.bundle, cache, args.prompts, args.repeats, args.threads)
        runs = ", ".join(map(str, r["vision_runs_per_round"]))
        rows += [(name, i + 1, round(t * 1e3), round(v * 1e3), runs) for i, (t, v) in
                 enumerate(zip(r["ttft_s"], r["image_s"]))]
    path = write_measurement(args.name, f"Time to first token with the image cache on and off ({args.bundle})",
                             "benchmarks/image_cache_ttft.py", COLUMNS, rows,
                             [f"Medians of {args.repeats} rounds; each round asks {args.prompts} prompts about one "
                              "new image, one call per prompt. Image features: preprocessing, the cache lookup and, "
                              "on a miss, the vision encoder and projector."], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
