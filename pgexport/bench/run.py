"""`pgexport bench`: latency, memory and accuracy of bundles against their PyTorch reference.

The parent process never loads a model. It prepares the inputs once per reference (images, token ids and
pixel values from the runtime's own preprocessing), then runs every PyTorch reference and every bundle in
its own worker process (`pgexport.bench.worker`), one after the other, so that peak memory and timings
do not mix. The references run first: their greedy tokens are what the bundles are teacher-forced on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import MANIFEST, load_manifest

from pgexport.verify import image_prompts

from pgexport.bench import accuracy, evalset, stats, tasks
from pgexport.bench.schema import SCHEMA, SCHEMA_VERSION, validate

MODES = ("auto", "full", "speed")


@dataclass(frozen=True)
class BenchOptions:
    bundles: tuple[Path, ...]
    reference: str | None = None  # model source for the reference; default: each bundle's manifest source
    # default: ("fp32",) in full mode (an exact fp32 bundle must read 100 %, not bf16's rounding), ("bf16", "fp32")
    # in speed mode (random weights: latency and memory against both)
    reference_dtypes: tuple[str, ...] | None = None
    eval_set: str | None = None  # "demo", a JSONL path; default: demo (full mode), generated inputs (speed mode)
    limit: int | None = None  # items; default 20 (full mode), 1 (speed mode)
    mode: str = "auto"  # auto: speed mode when the reference is a random-weight preset, else full
    warmup: int = 1
    repeats: int = 5
    threads: int = 0  # 0: every CPU core, for onnxruntime and torch alike
    new_tokens: int = 32  # speed mode: tokens per run, EOS ignored
    max_new_tokens: int | None = None  # full mode: cap on tokens per item (default: per task / 32)
    work_dir: Path = Path("bench-work")


@dataclass
class _Worker:
    name: str
    spec: dict
    units: int
    group: int
    bundle: Path | None = None
    manifest: object | None = None
    source: str = ""
    dtype: str | None = None


Progress = Callable[[str, int, int], None]  # (run name, units done, units total)


def run_bench(opts: BenchOptions, progress: Progress | None = None) -> dict:
    """Run the benchmark and return the report (validated against schema.json)."""
    if not opts.bundles:
        raise UserError("give at least one bundle")
    manifests = [load_manifest(b) for b in opts.bundles]
    specs = [opts.reference or _source_spec(m) for m in manifests]
    mode = _mode(opts, manifests)
    dtypes = list(opts.reference_dtypes or (("bf16", "fp32") if mode == "speed" else ("fp32",)))
    threads = opts.threads or os.cpu_count() or 1
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    from pgexport.build import plan

    memory = plan.machine_memory()

    items, eval_name = _items(opts, mode, manifests[0])
    groups = list(dict.fromkeys(specs))  # one reference (and one set of inputs) per model source
    workers: list[_Worker] = []
    for k, spec in enumerate(groups):
        members = [i for i, s in enumerate(specs) if s == spec]
        items_file = evalset.materialize(items, opts.bundles[members[0]], work / f"inputs-{k}")
        common = {"items": str(items_file), "threads": threads, "warmup": opts.warmup, "repeats": opts.repeats,
                  "generate": mode == "full", "ignore_eos": mode == "speed"}
        suffix = f" ({spec})" if len(groups) > 1 else ""
        ref_tokens = work / f"reference-{k}-tokens.json"
        for j, dtype in enumerate(dtypes):
            primary = j == 0 and mode == "full"
            need = reference_bytes(manifests[members[0]].geometry, dtype)
            if need > memory:  # it cannot load: say so, rather than be killed for memory part way through
                if primary:
                    raise UserError(f"the {dtype} PyTorch reference of {spec} needs at least {need / 1e9:.1f} GB "
                                    f"(its weights), more than this machine's {memory / 1e9:.1f} GB: measure "
                                    "latency and memory alone with --mode speed")
                notes.append(f"torch-{dtype}{suffix} not run: its weights alone need {need / 1e9:.1f} GB, more "
                             f"than this machine's {memory / 1e9:.1f} GB")
                continue
            name = f"torch-{dtype}{suffix}"
            spec_ = {**common, "kind": "reference", "source": spec, "dtype": dtype, "teacher_self": primary,
                     "exact_weights": mode == "full", "logprobs_dir": str(work / f"logprobs-ref-{k}")}
            workers.append(_Worker(name, spec_, _units(opts, len(items), mode, primary), k, source=spec, dtype=dtype))
        for i in members:
            spec_ = {**common, "kind": "bundle", "bundle": str(Path(opts.bundles[i]).resolve()),
                     "teacher_tokens": str(ref_tokens) if mode == "full" else None,
                     "logprobs_dir": str(work / f"logprobs-{i}")}
            workers.append(_Worker(_bundle_name(opts.bundles, i), spec_, _units(opts, len(items), mode, mode == "full"),
                                   k, bundle=Path(opts.bundles[i]), manifest=manifests[i], source=spec))

    total = sum(w.units for w in workers)
    done = 0
    results = {}
    for n, w in enumerate(workers):
        w.spec["out"] = str(work / f"result-{n}.json")
        results[w.name] = _run_worker(w, work / f"worker-{n}.json", lambda u, w=w, base=done: progress and progress(
            w.name, base + u, total))
        done += w.units
        if w.dtype is not None and w.spec.get("teacher_self"):
            (work / f"reference-{w.group}-tokens.json").write_text(json.dumps(results[w.name]["outputs"]))
    if progress:
        progress("done", total, total)

    decode_fn, why = (None, None)
    if mode == "full" and any(it.masks for it in items):
        decode_fn, why = tasks.load_mask_decoder(manifests)
        if why:
            notes.append(why)
    runs = []
    for w in workers:
        ref = next((x for x in workers if x.group == w.group and x.spec.get("teacher_self")), None)
        runs.append(_run_entry(w, results[w.name], ref and results[ref.name], ref and ref.name, items, decode_fn,
                               manifests[specs.index(w.source)], mode))
    if mode == "speed":
        notes.append("speed mode: the reference is a random-weight preset, so accuracy and task metrics are skipped")
    system = stats.system_info()
    if (busy := stats.overloaded(system)) is not None:
        notes.append(busy)
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_unix": int(time.time()),
        "settings": {"mode": mode, "eval_set": eval_name, "n_items": len(items), "warmup": opts.warmup,
                     "repeats": opts.repeats, "threads": threads, "reference_dtypes": dtypes,
                     "new_tokens": opts.new_tokens if mode == "speed" else None,
                     "max_new_tokens": opts.max_new_tokens},
        "system": system,
        "items": [{"id": it.id, "task": it.task, "prompt": it.prompt, "answer": it.answer} for it in items],
        "runs": runs,
        "comparisons": accuracy.paired(runs),
        "notes": notes,
    }
    validate(report)
    return report


def reference_bytes(g, dtype: str) -> float:
    """The least a PyTorch reference holds: the interpreter and libraries, and the model's weights at `dtype`."""
    from pgexport.estimate import BASE_RSS, parameters

    return BASE_RSS + sum(parameters(g).values()) * {"fp32": 4, "bf16": 2}[dtype]


def _units(opts: BenchOptions, n: int, mode: str, teacher: bool) -> int:
    return opts.warmup + opts.repeats + (n if mode == "full" else 0) + (n if teacher else 0)


def _source_spec(m) -> str:
    """The model a bundle was built from, when the manifest names one this machine has (a preset, a hub id,
    the repository's own demo model); else the user passes --reference."""
    src = m.record.source or {}
    spec = src.get("spec")
    if src.get("adapter"):
        raise UserError(f"{m.root}: built with the adapter {src['adapter'].get('name')}; pass --reference "
                        "ADAPTER_DIR (an adapter directory whose config names its base)")
    if not spec:
        raise UserError(f"{m.root}: built from the local checkpoint {src.get('name')!r}; pass --reference DIR")
    if src.get("kind") == "local":
        from pgexport.source import sources

        if not (sources.REPO_ROOT / spec).is_dir():
            raise UserError(f"{m.root}: its source {spec} is not here; pass --reference SRC")
        return str(sources.REPO_ROOT / spec)
    return spec


def _mode(opts: BenchOptions, manifests) -> str:
    if opts.mode not in MODES:
        raise UserError(f"--mode {opts.mode}: use one of {', '.join(MODES)}")
    if opts.mode != "auto":
        return opts.mode
    from pgexport.source import sources

    if opts.reference is not None:
        return "speed" if opts.reference in sources.list_presets() else "full"
    # presets carry seeded random weights: there is nothing meaningful to be accurate about
    return "speed" if all((m.record.source or {}).get("kind") == "preset" for m in manifests) else "full"


def _items(opts: BenchOptions, mode: str, manifest) -> tuple[list, str]:
    eval_set = opts.eval_set or (evalset.DEMO if mode == "full" else evalset.GENERATED)
    limit = opts.limit or (20 if mode == "full" else 1)
    if eval_set == evalset.GENERATED:
        return evalset.generated_items(limit, manifest.geometry.image_size, opts.new_tokens), eval_set
    if mode == "speed":  # speed mode on real images: fixed token counts all the same
        max_new = opts.new_tokens
    else:
        max_new = opts.max_new_tokens
    if eval_set == evalset.DEMO:
        return evalset.set_items(image_prompts.DEMO_SET, limit, max_new, split="eval"), eval_set
    return evalset.set_items(Path(eval_set), limit, max_new), str(eval_set)


def _bundle_name(bundles, i: int) -> str:
    name = Path(bundles[i]).resolve().name
    same = [j for j, b in enumerate(bundles) if Path(b).resolve().name == name]
    return name if len(same) == 1 else f"{name}#{same.index(i) + 1}"


class WorkerFailed(UserError):
    """A bench worker ended without a result. `log`: the worker's log the message points to (kept by the
    command when it removes what the run wrote), or None when the message says all the log would."""

    def __init__(self, message: str, log: Path | None):
        super().__init__(message)
        self.log = log


def _run_worker(w: _Worker, job_file: Path, advance: Callable[[int], None]) -> dict:
    """The worker's spec in job_file; its stderr in the same name with .log."""
    from pgexport import child
    from pgexport_runtime.out_of_memory import out_of_memory

    try:
        child.run("pgexport.bench.worker", w.spec, job_file,
                  lambda event, text: advance(int(text)) if event == "progress" else None)
    except child.ChildOutOfMemory as exc:
        raise out_of_memory(f"running the bench worker for {w.name}", exc.words) from None
    except child.ChildFailed as exc:
        if exc.tail:
            raise WorkerFailed(f"bench worker for {w.name} failed ({exc.how}): {exc.tail[-1][:300]} "
                               f"(full log: {exc.log})", exc.log) from None
        raise WorkerFailed(f"bench worker for {w.name} failed ({exc.how}) with nothing on stderr"
                           f"{_silent_reason(exc, job_file.parent)}", None) from None
    return json.loads(Path(w.spec["out"]).read_text())


def _silent_reason(exc, work: Path) -> str:
    """Why a worker may have died without a word: a full disk takes its log too; SIGKILL is the kernel's
    out-of-memory killer's signal."""
    import shutil
    import signal

    try:
        free = shutil.disk_usage(work).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        return f": the disk holding {work} has {free / 1e6:.1f} MB free"
    if exc.code == -signal.SIGKILL:
        return " (the kernel's out-of-memory killer ends processes with SIGKILL: is memory short?)"
    return ""


def _run_entry(w: _Worker, res: dict, ref_res: dict | None, ref_name: str | None, items, decode_fn, manifest,
               mode: str) -> dict:
    samples = res["samples_ms"]
    latency = {k: stats.summarize(samples[k]) for k in stats.STAGES}
    per_tok = latency["decode_per_token"]
    throughput = {
        "decode_tokens_per_s_median": round(1e3 / per_tok["median_ms"], 2) if per_tok["median_ms"] else None,
        "decode_tokens_per_s_p90": round(1e3 / per_tok["p90_ms"], 2) if per_tok["p90_ms"] else None,
        "decode_tokens_mean": float(np.mean(res["decode_tokens"])) if res["decode_tokens"] else 0.0,
    }
    entry = {
        "name": w.name,
        "kind": res["kind"],
        "path": str(w.bundle) if w.bundle else None,
        "source": w.source,
        "precision": w.dtype or _precision(w.manifest),
        "prefill_graph": res.get("prefill_graph"),
        "threads": int(res["threads"]),
        "load_seconds": res["load_seconds"],
        "memory": res["memory"],
        "latency": latency,
        "throughput": throughput,
        "size": _size(w.manifest) if w.manifest is not None else None,
        "reference": ref_name if w.bundle is not None and mode == "full" else None,
        "accuracy": None,
        "task_metrics": None,
        "task_metrics_skipped": [],
        "checks": res["checks"],
    }
    if mode != "full":
        return entry
    outputs = res["outputs"]
    decode = _decoder(manifest)
    entry["outputs"] = [{"id": it.id, "text": decode(outputs[it.id]), "tokens": outputs[it.id]} for it in items]
    if w.bundle is not None and ref_res is not None:
        acc = accuracy.compare_sequences(ref_res["outputs"], outputs)
        acc["teacher_forced"] = accuracy.compare_distributions(Path(ref_res["logprobs_dir"]), Path(res["logprobs_dir"]),
                                                               [it.id for it in items])
        entry["accuracy"] = acc
    preds = [o["text"] for o in entry["outputs"]]
    entry["task_metrics"], entry["task_metrics_skipped"] = tasks.score(items, preds, decode_fn)
    entry["task_metrics"] = entry["task_metrics"] or None
    return entry


def _decoder(manifest):
    """Token ids -> text as the demo evaluation reads it (special tokens kept, cut at EOS)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(manifest.tokenizer_file))
    eos = manifest.tokenizer.eos_token
    return lambda ids: tasks.clean(tok.decode(ids, skip_special_tokens=False), eos)


def _precision(manifest) -> str:
    precisions = {name: g.precision for name, g in manifest.graphs.items()}
    if len(set(precisions.values())) == 1:
        return next(iter(precisions.values()))
    return ", ".join(f"{k}={v}" for k, v in precisions.items())


def _size(manifest) -> dict:
    graphs = {name: stats.dir_bytes(manifest.root / f for f in (g.file, *g.data_files))
              for name, g in manifest.graphs.items()}
    files = [manifest.root / f for f in manifest.files] + [manifest.root / MANIFEST]
    return {"total_bytes": stats.dir_bytes(files), "graphs": graphs}
