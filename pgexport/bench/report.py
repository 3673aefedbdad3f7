"""Writing a bench report: bench.json (schema.json), bench.md (tables) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from pgexport.files import atomic_path
from pgexport.bench import metrics
from pgexport.bench.stats import STAGES

STAGE_LABELS = {"preprocess": "preproc", "vision_encoder": "vision", "projector": "projector", "prefill": "prefill",
                "ttft": "TTFT", "decode_per_token": "decode/tok", "end_to_end": "end to end"}


def write_outputs(report: dict, out: Path) -> dict[str, Path]:
    """Write bench.json, bench.md and the plots into `out`; returns {kind: path}."""
    from pgexport.bench import plots

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md"}
    for kind, text in (("json", json.dumps(report, indent=2) + "\n"), ("markdown", markdown(report))):
        with atomic_path(paths[kind]) as tmp:
            tmp.write_text(text)
    paths.update(plots.write_plots(report, out))
    return paths


def _ms(stat: dict) -> str:
    m, p = stat["median_ms"], stat["p90_ms"]
    if m is None:
        return "–"
    fmt = (lambda x: f"{x:.0f}") if m >= 100 else (lambda x: f"{x:.2f}" if m < 10 else f"{x:.1f}")
    return f"{fmt(m)} ({fmt(p)})"


def _mb(n) -> str:
    return "–" if n is None else (f"{n / 1024:.2f} GB" if n >= 1024 else f"{n:.0f} MB")


def _bytes(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1024:.0f} KB" if n < 2**20 else _mb(n / 2**20)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def markdown(report: dict) -> str:
    s, sysinfo, runs = report["settings"], report["system"], report["runs"]
    v = sysinfo["versions"]
    lines = [
        "# pgexport bench",
        "",
        f"{s['mode']} mode, eval set `{s['eval_set']}` ({s['n_items']} items), {s['warmup']} warm-up + "
        f"{s['repeats']} timed runs, {s['threads']} threads. {sysinfo['cpu_model']} ({sysinfo['cpu_count']} CPUs; "
        f"{' '.join(sysinfo.get('cpu_flags') or ['no listed kernel flags'])}; "
        f"load {sysinfo.get('load_average')}); onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, numpy {v.get('numpy')}, Python {sysinfo['python']}.",
        "",
        "## Latency (ms, median (p90)) and memory",
        "",
        "| run | precision | " + " | ".join(STAGE_LABELS[k] for k in STAGES) + " | tok/s | peak RSS | size |",
        "|---|---|" + "---:|" * (len(STAGES) + 3),
    ]
    for r in runs:
        tps = r["throughput"]["decode_tokens_per_s_median"]
        size = r["size"]["total_bytes"] if r["size"] else None
        via = f" (prefill on {r['prefill_graph']})" if r.get("prefill_graph") not in (None, "decoder") else ""
        lines.append(f"| {r['name']} | {r['precision']}{via} | " + " | ".join(_ms(r["latency"][k]) for k in STAGES)
                     + f" | {'–' if tps is None else f'{tps:.1f}'} | {_mb(r['memory']['peak_rss_mb'])} | {_bytes(size)} |")
    sized = [r for r in runs if r["size"]]
    if sized:
        names = list(sized[0]["size"]["graphs"])
        lines += ["", "## Size on disk per graph", "", "| bundle | " + " | ".join(names) + " | total |",
                  "|---|" + "---:|" * (len(names) + 1)]
        for r in sized:
            g = r["size"]["graphs"]
            lines.append(f"| {r['name']} | " + " | ".join(_bytes(g.get(n)) for n in names)
                         + f" | {_bytes(r['size']['total_bytes'])} |")
    acc = [r for r in runs if r["accuracy"]]
    if acc:
        lines += ["", f"## Accuracy against the PyTorch reference ({acc[0]['reference']})", "",
                  "| bundle | sequence agreement | token agreement | first divergence (min / mean) | mean KL (nats) ↓ "
                  "| top-1 agreement |", "|---|---:|---:|---:|---:|---:|"]
        for r in acc:
            a, fd, tf = r["accuracy"], r["accuracy"]["first_divergence"], r["accuracy"]["teacher_forced"]
            div = "none" if fd["items_diverged"] == 0 else f"{fd['min_position']} / {fd['mean_position']:.1f} " \
                                                          f"({fd['items_diverged']} items)"
            ci = a.get("sequence_agreement_ci")
            seq = _pct(a["sequence_agreement"]) + ("" if ci is None else f" ({100 * ci[0]:.0f}-{100 * ci[1]:.0f} %)")
            lines.append(f"| {r['name']} | {seq} | {_pct(a['token_agreement'])} | {div} | "
                         f"{tf['mean_kl']:.2e} | {_pct(tf['top1_agreement'])} |")
        lines += ["", "Sequence agreement with its 95 % Wilson interval."]
    if report.get("comparisons"):
        lines += ["", "## Paired comparison (McNemar's exact test on the same items)", "",
                  "| A | B | items | only A agrees | only B agrees | p |", "|---|---|---:|---:|---:|---:|"]
        for c in report["comparisons"]:
            lines.append(f"| {c['a']} | {c['b']} | {c['items']} | {c['a_only']} | {c['b_only']} | {c['p_value']:.3g} |")
        lines += ["", "p: the chance of a split between only-A and only-B items at least this uneven if A and B "
                      "agreed with the reference equally often; below 0.05, the difference is unlikely to be chance."]
    scored = [r for r in runs if r["task_metrics"]]
    if scored:
        keys = list(dict.fromkeys(k for r in scored for k in r["task_metrics"]))
        lines += ["", "## Task metrics against ground truth (↓: lower is better)", "",
                  "| run | " + " | ".join(k + (" ↓" if metrics.lower_is_better(k) else "") for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for r in scored:
            tm = r["task_metrics"]
            lines.append(f"| {r['name']} | " + " | ".join("–" if k not in tm else f"{tm[k]:.3f}" for k in keys) + " |")
    notes = list(report["notes"]) + sorted({n for r in runs for n in r["task_metrics_skipped"] if " " in n})
    skipped = sorted({n for r in runs for n in r["task_metrics_skipped"] if " " not in n})
    if skipped:
        notes.append("not scored: " + ", ".join(skipped))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
