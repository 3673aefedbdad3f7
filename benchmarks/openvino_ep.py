"""Can onnxruntime's OpenVINO execution provider run the bundles' graphs, exactly and faster than its CPU provider?

    python benchmarks/openvino_ep.py --ov-python VENV/bin/python [--speed-bundle DIR] [--limit 20] [--work bench-arm64]

VENV is a Python environment with `onnxruntime-openvino` (a build of onnxruntime with the OpenVINO provider,
installed instead of `onnxruntime`), numpy, pillow, tokenizers and the runtime (`pip install --no-deps -e
runtimes/python`). Every measurement runs in that interpreter, so the CPU provider it is compared with is the same
onnxruntime build. (The plugin package `onnxruntime-ep-openvino` offers its provider only for devices whose
vendor is Intel, so on other CPUs it cannot be measured at all.)
  1. Coverage: each graph of the demo model's fp32, int8 and int4 bundles (built under --work as arm64_parity.py
     builds them) loaded with the OpenVINO provider first: whether it loads, how many nodes each provider runs,
     and into how many OpenVINO subgraphs the graph is cut.
  2. Exactness: the first --limit held-out items answered greedily with the decoder and projector on OpenVINO
     (the vision encoder too where it loads), against the CPU provider's answers.
  3. Speed, with --speed-bundle (a full-size bundle): load time, time to first token and decode tokens/s of one
     generated image + prompt, the CPU provider against OpenVINO's, medians of --repeats, and the peak RSS of each
     process.
The tables go to docs/measurements/NAME.md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRAPHS = ("vision_encoder", "projector", "decoder")
COLUMNS = ("bundle", "graph", "loads on OpenVINO", "OpenVINO subgraphs", "nodes left to the CPU provider", "their ops")
_PLACED = re.compile(r"(?:Node\(s\)|All nodes) placed on \[(\w+)\]\. Number of nodes: (\d+)")


def main() -> None:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from readme_table import ensure_bundle

    from pgexport.bench.harness import table, write_measurement
    from pgexport.source import sources
    from pgexport.verify import image_prompts
    from pgexport.verify.agreement import sequences
    from pgexport_runtime.describe import wilson_interval

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ov-python", type=Path, required=True, help="an interpreter with onnxruntime-openvino")
    ap.add_argument("--speed-bundle", type=Path, help="a full-size bundle to time on both providers")
    ap.add_argument("--limit", type=int, default=20, help="held-out eval items (default 20)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("bench-arm64"), help="the demo bundles (built or reused)")
    ap.add_argument("--name", default="openvino_ep", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    version = _worker(args.ov_python, "version")
    if "OpenVINOExecutionProvider" not in version["providers"]:
        sys.exit(f"error: {args.ov_python} has onnxruntime {version['onnxruntime']} without the OpenVINO provider")

    model = sources.default_model()
    bundles = {r: ensure_bundle(model, r, args.work / r, False).resolve() for r in ("fp32", "int8", "int4")}
    coverage, loads = [], {}
    for recipe, bundle in bundles.items():
        for graph in GRAPHS:
            got = _worker(args.ov_python, "place", str(bundle / f"{graph}.onnx"))
            loads[recipe, graph] = got["loads"]
            left = ", ".join(f"{op} {n}" for op, n in sorted(got["cpu_ops"].items(), key=lambda kv: -kv[1]))
            coverage.append((recipe, graph, "yes" if got["loads"] else f"no: {got['error']}", got["subgraphs"],
                             got["nodes"].get("CPUExecutionProvider", 0) if got["loads"] else None, left or None))
            print(coverage[-1], flush=True)

    rows = image_prompts.read(image_prompts.DEMO_SET, "eval", limit=args.limit)
    items = [{"image": str(r.image), "prompt": r.prompt, "max_new_tokens": r.max_new_tokens or 32} for r in rows]
    answers = []
    for recipe, bundle in bundles.items():
        on_ov = [g for g in GRAPHS if loads[recipe, g]]
        job = {"bundle": str(bundle), "items": items}
        cpu = _worker(args.ov_python, "tokens", json.dumps(job), "")["tokens"]
        ov = _worker(args.ov_python, "tokens", json.dumps(job), ",".join(on_ov))["tokens"]
        same = [a == b for a, b in zip(cpu, ov)]
        low, high = wilson_interval(sum(same), len(same))
        answers.append((recipe, ", ".join(on_ov), len(items), round(100 * sum(same) / len(same), 1),
                        f"{100 * low:.1f}-{100 * high:.1f}", round(100 * sequences(cpu, ov)["token_agreement"], 1)))
        print(answers[-1], flush=True)

    notes = [f"onnxruntime {version['onnxruntime']} (onnxruntime-openvino), OpenVINO provider device_type CPU; the "
             "demo model's bundles as `pgexport build` writes them.", "",
             "Answers with the graphs that load on OpenVINO run there (the others on the CPU provider), against "
             "the CPU provider alone, in the same onnxruntime build:", "",
             *table(("bundle", "graphs on OpenVINO", "items", "same answer %", "95 % CI", "same tokens %"), answers)]
    if args.speed_bundle:
        speed = []
        for ep in ("", "projector,decoder"):
            got = _worker(args.ov_python, "speed", str(args.speed_bundle.resolve()), ep, str(args.repeats),
                          str(args.new_tokens))
            speed.append(("CPU provider" if not ep else f"OpenVINO ({ep.replace(',', ', ')}), vision on CPU",
                          round(got["load_s"], 1), round(got["ttft_ms"]), round(got["decode_tokens_per_s"], 2),
                          round(got["peak_rss_mb"])))
            print(speed[-1], flush=True)
        notes += ["", f"Speed of {args.speed_bundle.name} ({_source(args.speed_bundle)}): one generated image and "
                  f"\"caption en\", {args.new_tokens} new tokens, medians of {args.repeats} runs after a warm-up, "
                  "each provider in its own process:", "",
                  *table(("providers", "load s", "TTFT ms", "decode tok/s", "peak RSS MiB"), speed)]
    path = write_measurement(args.name, "onnxruntime's OpenVINO execution provider on the bundles' graphs",
                             "benchmarks/openvino_ep.py", COLUMNS, coverage, notes, args.out_dir)
    print(f"wrote {path}")


def _source(bundle: Path) -> str:
    record = json.loads((bundle / "manifest.json").read_text())
    return f"{(record.get('source') or {}).get('spec', '?')}, {record['quantization']['recipe']['name']}"


def _worker(python: Path, *argv: str) -> dict:
    done = subprocess.run([str(python), __file__, "--worker", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: the OpenVINO worker failed ({argv[0]}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the worker: runs in the onnxruntime-openvino interpreter, imports no pgexport -------------------------------

def _providers(on_ov: bool) -> list:
    return [("OpenVINOExecutionProvider", {"device_type": "CPU"}), "CPUExecutionProvider"] if on_ov \
        else ["CPUExecutionProvider"]


def _use_openvino_for(graphs: set[str]) -> None:
    """Make the runtime load the named graphs with the OpenVINO provider first (the runtime offers no such option:
    this measures whether it should)."""
    from pgexport_runtime import pipeline, session

    original = session.create_session

    def create(path, cfg):
        on_ov = Path(path).stem in graphs
        session.SessionConfig.providers = property(lambda self: _providers(on_ov))
        return original(path, cfg)

    pipeline.create_session = create


def _place(graph: str) -> dict:
    """Load one graph with verbose logging in a child, and read the node placement onnxruntime logs."""
    code = ("import onnxruntime as ort, sys; ort.set_default_logger_severity(0); o = ort.SessionOptions(); "
            "o.log_severity_level = 0; ort.InferenceSession(sys.argv[1], o, providers=[('OpenVINOExecutionProvider', "
            "{'device_type': 'CPU'}), 'CPUExecutionProvider'])")
    done = subprocess.run([sys.executable, "-c", code, graph], capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        reason = re.findall(r"(Expected [^\n]*|OpenVINO-EP\] [^\n]*)", log)
        return {"loads": False, "error": (reason[-1] if reason else log.strip().splitlines()[-1])[:160], "nodes": {},
                "cpu_ops": {}, "subgraphs": None}
    return {"loads": True, "error": None, **placement(log)}


def placement(log: str) -> dict:
    """From onnxruntime's verbose log: nodes per provider, the CPU provider's ops, and the OpenVINO subgraphs (each
    is one fused node placed on that provider)."""
    nodes, cpu_ops, current = {}, {}, None
    for line in log.splitlines():
        if m := _PLACED.search(line):
            current = m.group(1)
            nodes[current] = int(m.group(2))
        elif current == "CPUExecutionProvider" and "VerifyEachNodeIsAssignedToAnEp]" in line:
            op = line.split("VerifyEachNodeIsAssignedToAnEp]", 1)[1].split()
            if op:
                cpu_ops[op[0]] = cpu_ops.get(op[0], 0) + 1
    return {"nodes": nodes, "cpu_ops": cpu_ops, "subgraphs": nodes.get("OpenVINOExecutionProvider", 0)}


def _tokens(job: dict, graphs: str) -> dict:
    from pgexport_runtime import PaliGemma

    _use_openvino_for(set(filter(None, graphs.split(","))))
    pg = PaliGemma(job["bundle"])
    return {"tokens": [pg.generate([it["image"]], [it["prompt"]], max_new_tokens=it["max_new_tokens"])[0].tokens
                       for it in job["items"]]}


def _speed(bundle: str, graphs: str, repeats: int, new_tokens: int) -> dict:
    import numpy as np
    from PIL import Image

    from pgexport_runtime import PaliGemma

    _use_openvino_for(set(filter(None, graphs.split(","))))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8))
    start = time.perf_counter()
    pg = PaliGemma(bundle)
    load = time.perf_counter() - start

    def run(n: int) -> tuple[float, int]:
        start = time.perf_counter()
        tokens = pg.generate([image], ["caption en"], max_new_tokens=n)[0].tokens
        return time.perf_counter() - start, len(tokens)

    run(1), run(new_tokens + 1)  # warm-up
    first = statistics.median(run(1)[0] for _ in range(repeats))
    full = [run(new_tokens + 1) for _ in range(repeats)]
    per_token = statistics.median((t - first) / max(n - 1, 1) for t, n in full)
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"load_s": load, "ttft_ms": 1e3 * first, "decode_tokens_per_s": 1 / per_token,
            "tokens": [n for _, n in full], "peak_rss_mb": hwm / 1024}


def _work(argv: list[str]) -> dict:
    mode, rest = argv[0], argv[1:]
    if mode == "version":
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    if mode == "place":
        return _place(rest[0])
    if mode == "tokens":
        return _tokens(json.loads(rest[0]), rest[1])
    if mode == "speed":
        return _speed(rest[0], rest[1], int(rest[2]), int(rest[3]))
    raise SystemExit(f"unknown worker mode {mode}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(_work(sys.argv[2:])))
    else:
        main()
