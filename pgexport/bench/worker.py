"""One benchmark run in its own process: `python -m pgexport.bench.worker SPEC.json`.

A bundle or a PyTorch reference is loaded alone in a fresh process, so its peak RSS is its own. The
worker reads the spec, runs warm-up, timed repeats, greedy generation over every item and teacher-forced
scoring on the reference tokens (as asked), writes a result JSON (and per-item log-probabilities as .npy)
and reports progress to the parent (pgexport.child) for its progress bar.

Spec keys: kind ("bundle" | "reference"), bundle | source + dtype, items (items.json), threads, warmup,
repeats, generate (bool), ignore_eos (bool: fixed token counts in speed mode), teacher_tokens (a JSON of
{item id: tokens} or null), exact_weights (bool), out (result path), logprobs_dir.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from pgexport import child

from pgexport.bench.evalset import Item, as_pil, load_items
from pgexport.bench.stats import memory_mb


def staged_run(engine, item: Item, pixels: np.ndarray, ignore_eos: bool) -> tuple[list[int], dict]:
    """Greedy generation for one item, timing each stage (milliseconds). The graphs get the shared
    pixel values and token ids; the engine's own preprocessing runs (and is timed) on the image."""
    image = as_pil(item.image)  # disk read and PNG decode are not part of any stage
    ids = np.asarray([item.input_ids], dtype=np.int64)
    clock = time.perf_counter
    t0 = clock()
    engine.preprocess(image, item.prompt)
    t1 = clock()
    features = engine.vision(pixels[None])
    t2 = clock()
    embeds = engine.project(features)
    t3 = clock()
    token = int(np.argmax(engine.prefill(ids, embeds, ids.shape[1] + item.max_new_tokens)))
    t4 = clock()
    tokens, steps = [token], []
    while len(tokens) < item.max_new_tokens and (ignore_eos or token not in engine.eos_ids):
        ts = clock()
        token = int(np.argmax(engine.decode(token)))
        steps.append((clock() - ts) * 1e3)
        tokens.append(token)
    t5 = clock()
    ms = lambda a, b: (b - a) * 1e3  # noqa: E731
    times = {"preprocess": ms(t0, t1), "vision_encoder": ms(t1, t2), "projector": ms(t2, t3),
             "prefill": ms(t3, t4), "ttft": ms(t0, t4), "end_to_end": ms(t0, t5), "decode_steps": steps}
    return tokens, times


def run(spec: dict) -> dict:
    t0 = time.perf_counter()
    engine = _load(spec)
    load_s = time.perf_counter() - t0
    after_load = memory_mb()
    items, pixels = load_items(Path(spec["items"]))
    done = [0]

    def tick() -> None:
        done[0] += 1
        child.emit("progress", str(done[0]))

    checks = _input_checks(engine, items[0], pixels[0])
    for w in range(spec["warmup"]):
        staged_run(engine, items[w % len(items)], pixels[w % len(items)], spec["ignore_eos"])
        tick()
    samples: dict = {k: [] for k in ("preprocess", "vision_encoder", "projector", "prefill", "ttft", "end_to_end",
                                     "decode_per_token", "decode_tokens_per_s")}
    decode_tokens = []
    for r in range(spec["repeats"]):
        i = r % len(items)
        tokens, t = staged_run(engine, items[i], pixels[i], spec["ignore_eos"])
        for k in ("preprocess", "vision_encoder", "projector", "prefill", "ttft", "end_to_end"):
            samples[k].append(t[k])
        if t["decode_steps"]:
            per_token = float(np.mean(t["decode_steps"]))
            samples["decode_per_token"].append(per_token)
            samples["decode_tokens_per_s"].append(1e3 / per_token)
        decode_tokens.append(len(t["decode_steps"]))
        tick()
    outputs = {}
    if spec["generate"]:
        for i, item in enumerate(items):
            outputs[item.id], _ = staged_run(engine, item, pixels[i], spec["ignore_eos"])
            tick()
        if hasattr(engine, "runtime_tokens"):  # the staged loop must be the runtime's loop
            ours = outputs[items[0].id]
            theirs = engine.runtime_tokens(as_pil(items[0].image), items[0].prompt, items[0].max_new_tokens)
            checks["staged_loop_matches_runtime"] = ours == theirs
    teacher = _teacher_tokens(spec, outputs)
    if teacher:
        folder = Path(spec["logprobs_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            ids = np.asarray([item.input_ids], dtype=np.int64)
            embeds = engine.project(engine.vision(pixels[i][None]))
            np.save(folder / f"{item.id}.npy", engine.teacher_forced(ids, embeds, teacher[item.id]))
            tick()
    return {
        "kind": spec["kind"],
        "prefill_graph": engine.pg.graphs.prefill_graph if spec["kind"] == "bundle" else None,
        "threads": engine.threads,
        "load_seconds": round(load_s, 3),
        "memory": {"rss_after_load_mb": after_load["rss_mb"], **memory_mb()},
        "samples_ms": samples,
        "decode_tokens": decode_tokens,
        "outputs": outputs,
        "logprobs_dir": spec["logprobs_dir"] if teacher else None,
        "checks": checks,
    }


def _load(spec: dict):
    if spec["kind"] == "bundle":
        from pgexport.bench.onnx_engine import OnnxEngine

        return OnnxEngine(spec["bundle"], spec["threads"])
    from pgexport.verify.reference import TorchReference

    return TorchReference.load(spec["source"], spec["dtype"], spec["threads"], spec["exact_weights"])


def _input_checks(engine, item: Item, pixels: np.ndarray) -> dict:
    """The engine's own preprocessing against the shared inputs every graph is fed."""
    own_pixels, own_ids = engine.preprocess(as_pil(item.image), item.prompt)
    return {"preprocess_max_abs_diff": float(np.abs(own_pixels[0] - pixels).max()),
            "token_ids_match": own_ids[0].tolist() == list(item.input_ids)}


def _teacher_tokens(spec: dict, outputs: dict) -> dict | None:
    """Teacher forcing runs on the reference's tokens: a file for bundles, its own outputs for the reference."""
    if spec.get("teacher_tokens"):
        return json.loads(Path(spec["teacher_tokens"]).read_text())
    if spec["kind"] == "reference" and spec["generate"] and spec.get("teacher_self"):
        return outputs
    return None


def _main(spec: dict, spec_file: Path) -> None:
    Path(spec["out"]).write_text(json.dumps(run(spec)))


if __name__ == "__main__":
    sys.exit(child.main(_main))
