"""Which onnxruntime ops take the time of each stage: vision encoder, projector, prefill, decode.

    python benchmarks/profile_ops.py BUNDLE [--new-tokens 16] [--threads 0] [--top 12] [--out profile]

Runs one warm-up generation, then one profiled generation (EOS ignored) on a generated image with
onnxruntime's node profiler on, and sums node times by op type per stage. The decoder's first run of the
profiled generation is the prefill; the rest are decode steps (reported per token). Writes OUT/profile.json
and the TOP op types of each stage to docs/measurements/NAME.md. Profiling adds a little overhead per node;
the shares are what matter.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pgexport.bench.harness import write_measurement

COLUMNS = ("stage", "op", "ms", "share %")


def run(bundle: Path, new_tokens: int, threads: int, out: Path) -> dict:
    from pgexport.bench.onnx_engine import OnnxEngine
    from pgexport.verify.parity import parity_image
    from pgexport_runtime import SessionConfig

    out.mkdir(parents=True, exist_ok=True)
    prefix = str(out / f"ort-{int(time.time())}")
    engine = OnnxEngine(str(bundle), threads, SessionConfig(intra_op_threads=threads, profile_prefix=prefix))
    pixels, ids = engine.preprocess(parity_image(engine.g.image_size, seed=0), "caption en")
    warm_runs = {"vision": 1, "projector": 1, "decoder": 2}  # the warm-up's runs, dropped below
    for n in (2, new_tokens):  # warm-up, then the profiled generation (EOS ignored)
        token = int(np.argmax(engine.prefill(ids, engine.project(engine.vision(pixels)), ids.shape[1] + n)))
        for _ in range(n - 1):
            token = int(np.argmax(engine.decode(token)))
    graphs = engine.pg.graphs
    traces = {name: getattr(graphs, name).end_profiling() for name in ("vision", "projector", "decoder")}
    stages: dict[str, dict] = {}
    for name, path in traces.items():
        runs = _node_times_by_run(Path(path))[warm_runs[name]:]
        if name == "decoder":
            stages["prefill"] = _summarize(runs[:1], 1)
            stages["decode (per token)"] = _summarize(runs[1:], max(1, len(runs) - 1))
        else:
            stages[name] = _summarize(runs, len(runs))
    result = {"bundle": str(bundle), "threads": threads or os.cpu_count(), "new_tokens": new_tokens,
              "stages": stages, "traces": {k: str(v) for k, v in traces.items()}}
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    return result


CONTROL_FLOW = ("If", "Loop", "Scan")  # their kernel time spans the nodes of the subgraph they run


def _node_times_by_run(trace: Path) -> list[dict[str, float]]:
    """Per model run, microseconds summed by op type (kernel time of each node). onnxruntime profiles the nodes of
    a subgraph too, inside the time of the If/Loop/Scan that ran it: that node counts only its own time (its span
    less what ran inside it), so that the op types add up to the run."""
    events = json.loads(trace.read_text())
    runs: list[dict[str, float]] = []
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs.append({"_start": ev["ts"], "_end": ev["ts"] + ev["dur"]})
    nodes: list[list[tuple[int, int, str]]] = [[] for _ in runs]
    starts = np.array([r["_start"] for r in runs])
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, ev["ts"], side="right")) - 1
        if 0 <= i < len(runs) and ev["ts"] <= runs[i]["_end"]:
            nodes[i].append((ev["ts"], ev["dur"], ev["args"].get("op_name", "?")))
    return [_own_times(n) for n in nodes]


def _own_times(nodes: list[tuple[int, int, str]]) -> dict[str, float]:
    """(start, duration, op) of one run's nodes -> microseconds by op, control-flow nodes at their own time."""
    own = [float(dur) for _, dur, _ in nodes]
    controls = sorted((i for i, n in enumerate(nodes) if n[2] in CONTROL_FLOW), key=lambda i: nodes[i][1])
    for c in controls:  # innermost (shortest) first: a nested one's own time is known when its parent's is taken
        start, dur, _ = nodes[c]
        inside = [i for i, (ts, d, _) in enumerate(nodes) if i != c and start <= ts and ts + d <= start + dur]
        own[c] = max(0.0, dur - sum(own[i] for i in inside))
    by_op: dict[str, float] = defaultdict(float)
    for (_, _, op), us in zip(nodes, own):
        by_op[op] += us
    return dict(by_op)


def _summarize(runs: list[dict[str, float]], per: int) -> dict:
    total: dict[str, float] = defaultdict(float)
    for r in runs:
        for op, us in r.items():
            total[op] += us
    ms = {op: us / 1e3 / per for op, us in sorted(total.items(), key=lambda kv: -kv[1])}
    return {"ms": sum(ms.values()), "by_op_ms": ms}


def rows(result: dict, top: int) -> list[tuple]:
    """Per stage: its node time in all, then its `top` op types by time."""
    out = []
    for stage, s in result["stages"].items():
        out.append((stage, "all", round(s["ms"], 2), 100.0))
        out += [(stage, op, round(ms, 2), round(100 * ms / s["ms"], 1)) for op, ms in list(s["by_op_ms"].items())[:top]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("profile"))
    parser.add_argument("--name", default="profile_ops", help="docs/measurements/NAME.md is written")
    parser.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = parser.parse_args()
    result = run(args.bundle, args.new_tokens, args.threads, args.out)
    path = write_measurement(args.name, f"Node time by op type per stage ({args.bundle.name})",
                             "benchmarks/profile_ops.py", COLUMNS, rows(result, args.top),
                             [f"{result['threads']} threads, one profiled generation of {args.new_tokens} tokens after "
                              "a warm-up; decode is per token. Profiling adds a little time per node: the shares are "
                              "what matter."], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
