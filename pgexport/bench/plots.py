"""PNG plots of a bench report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgexport.files import atomic_path

BAR_STAGES = ("preprocess", "vision_encoder", "projector", "prefill", "decode_per_token", "ttft", "end_to_end")
LABELS = {"preprocess": "preprocess", "vision_encoder": "vision\nencoder", "projector": "projector",
          "prefill": "prefill", "decode_per_token": "decode\n(per token)", "ttft": "time to\nfirst token",
          "end_to_end": "end to end"}


def write_plots(report: dict, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    paths = {"latency_plot": out / "latency.png"}
    latency_by_stage(report, paths["latency_plot"])
    bundles = [r for r in report["runs"] if r["accuracy"]]
    if bundles:
        paths["accuracy_vs_size_plot"] = out / "accuracy_vs_size.png"
        paths["accuracy_vs_speed_plot"] = out / "accuracy_vs_speed.png"
        accuracy_vs(report, "size", paths["accuracy_vs_size_plot"])
        accuracy_vs(report, "speed", paths["accuracy_vs_speed_plot"])
    return paths


def latency_by_stage(report: dict, path: Path) -> None:
    """Grouped bars: one group per stage, one bar per run (median), whisker up to p90; log scale."""
    import matplotlib.pyplot as plt

    runs = report["runs"]
    x = np.arange(len(BAR_STAGES))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(BAR_STAGES)), 4.8))
    for k, r in enumerate(runs):
        med = np.array([r["latency"][s]["median_ms"] or np.nan for s in BAR_STAGES], dtype=float)
        p90 = np.array([r["latency"][s]["p90_ms"] or np.nan for s in BAR_STAGES], dtype=float)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, med, width, label=f"{r['name']} ({r['precision']})",
               yerr=[np.zeros_like(med), np.nan_to_num(p90 - med)], capsize=2)
    ax.set_xticks(x, [LABELS[s] for s in BAR_STAGES])
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds (median, whisker = p90)")
    s = report["settings"]
    ax.set_title(f"Latency by stage — {s['mode']} mode, {s['threads']} threads, {report['system']['cpu_model']}")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside, never over bars
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def accuracy_vs(report: dict, axis: str, path: Path) -> None:
    """Token agreement and top-1 agreement with the reference against size on disk or decode speed."""
    import matplotlib.pyplot as plt

    bundles = [r for r in report["runs"] if r["accuracy"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if axis == "size":
        xs = [r["size"]["total_bytes"] / 2**20 for r in bundles]
        ax.set_xlabel("bundle size on disk (MB)")
    else:
        xs = [r["throughput"]["decode_tokens_per_s_median"] or 0.0 for r in bundles]
        ax.set_xlabel("decode tokens/s (median)")
        for r in report["runs"]:
            tps = r["throughput"]["decode_tokens_per_s_median"]
            if r["kind"] == "reference" and tps:
                ax.axvline(tps, ls="--", color="gray", lw=1)
                ax.annotate(r["name"], (tps, 103), rotation=90, fontsize=8, color="gray", ha="right", va="top")
    tok = [100 * (r["accuracy"]["token_agreement"] or 0) for r in bundles]
    top1 = [100 * r["accuracy"]["teacher_forced"]["top1_agreement"] for r in bundles]
    ax.scatter(xs, tok, s=60, label="greedy token agreement")
    ax.scatter(xs, top1, s=60, marker="x", label="teacher-forced top-1 agreement")
    for x, y, r in zip(xs, tok, bundles):
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"% agreement with {bundles[0]['reference']}")
    ax.set_title(f"Accuracy vs {'size' if axis == 'size' else 'speed'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
