"""The JavaScript runtime against the Python runtime on one bundle, in one run: time to first token (image decode,
preprocessing, vision encoder, projector, prefill) and decode tokens/s, medians over repeats, same thread count.

    python benchmarks/web_bench.py BUNDLE [--repeats 10] [--threads 1] [--max-new-tokens 40]

Rows: the Python runtime (onnxruntime), Node with onnxruntime-node, Node with onnxruntime-web's WASM backend
(the browser's engine, without the browser). The image and prompt are a held-out demo caption item with a long
answer, so that decoding is timed over many tokens; every row should produce the same greedy tokens (reported).
Needs `npm ci` in runtimes/web. Writes the table to docs/measurements/NAME.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JS = Path(__file__).with_name("web_bench.mjs")
COLUMNS = ("runtime", "load ms", "time to first token ms", "decode tokens/s")


def python_runs(bundle: Path, image: Path, prompt: str, max_new: int, repeats: int, threads: int) -> dict:
    from pgexport_runtime import PaliGemma, SessionConfig
    from pgexport_runtime.images import load_image

    t0 = time.perf_counter()
    pg = PaliGemma(bundle, SessionConfig(intra_op_threads=threads))
    load_ms = (time.perf_counter() - t0) * 1000
    runs = []
    for i in range(repeats + 1):  # the first run warms up and is not counted
        first = []
        start = time.perf_counter()
        img = load_image(image)
        (r,) = pg.generate([img], [prompt], max_new_tokens=max_new,
                           on_token=lambda *_: first or first.append(time.perf_counter()))
        end = time.perf_counter()
        if i:
            runs.append({"ttft_ms": (first[0] - start) * 1000, "decode_tok_s": (len(r.tokens) - 1) / (end - first[0]),
                         "tokens": r.tokens})
    return {"load_ms": load_ms, "runs": runs}


def node_runs(bundle: Path, image: Path, prompt: str, max_new: int, repeats: int, backend: str, threads: int) -> dict:
    r = subprocess.run(["node", str(JS), str(bundle), str(image), prompt, str(max_new), str(repeats), backend,
                        str(threads)], capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"node {backend}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--name", default="web_bench", help="docs/measurements/NAME.md is written")
    p.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    a = p.parse_args()
    from pgexport.bench.evalset import demo_items
    from pgexport.bench.harness import write_measurement

    # the caption item (of the first 50 held-out items) with the longest reference answer: decoding gets timed
    item = max((i for i in demo_items(50, None)[0] if i.task == "caption"), key=lambda i: len(i.answer or ""))
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "item.png"
        item.pil.save(image)
        rows = {"Python runtime (onnxruntime)": python_runs(a.bundle, image, item.prompt, a.max_new_tokens, a.repeats,
                                                            a.threads)}
        for backend, name in (("node", "Node, onnxruntime-node"), ("wasm", "Node, onnxruntime-web WASM")):
            rows[name] = node_runs(a.bundle, image, item.prompt, a.max_new_tokens, a.repeats, backend, a.threads)
    tokens = {json.dumps(run["tokens"]) for row in rows.values() for run in row["runs"]}
    n = len(next(iter(rows.values()))["runs"][0]["tokens"])
    table = [(name, round(row["load_ms"]), round(statistics.median(r["ttft_ms"] for r in row["runs"]), 1),
              round(statistics.median(r["decode_tok_s"] for r in row["runs"]), 1)) for name, row in rows.items()]
    path = write_measurement(a.name, f"The JavaScript runtime against the Python runtime ({a.bundle.name})",
                             "benchmarks/web_bench.py", COLUMNS, table,
                             [f"{a.bundle.name}: {item.prompt!r}, {n} tokens, {a.threads} thread(s), median of "
                              f"{a.repeats}; same tokens in every run: {len(tokens) == 1}."], a.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
