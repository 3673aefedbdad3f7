"""Accuracy of every quantization recipe on the demo model against its PyTorch fp32 reference.

    python benchmarks/quant_table.py [--model SRC] [--work quant-table] [--limit 100] [--recipes a,b,...]
        [--eval FRESH/heldout.jsonl]

Builds one bundle per recipe (reused when it already exists for the same model and recipe), runs
`pgexport bench` on all of them with the fp32 PyTorch reference on the demo held-out set (interleaved across
tasks; `--eval` another set in its format, e.g. fresh items from tools/demo_model/write_heldout.py --fresh), and
writes WORK/report/bench.json and the table to docs/measurements/NAME.md. Per recipe: size on
disk, sequence exact match and token agreement of greedy outputs, mean KL and top-1 agreement of
teacher-forced next-token distributions (on the reference's sequences), the task metrics against ground truth
and their largest drop in points against the reference (IoUs and rates x 100; a CER rise counts as a drop).
Sequence agreement carries its 95 % Wilson interval, and a second table splits it by task. Each recipe is
compared with int4-rtn-b32 (round to nearest, blocks of 32) on the same items by McNemar's exact test. The gate's
own sequence agreement (the build's held-out gate split, read from each bundle's manifest) stands beside it, so
that the gate's ranking can be compared with this one.
The quantization targets are checked at the end: int8 >= 99 % sequence agreement with no task drop; the best
4-bit recipe without 8-bit layers >= 80 %, every task's drop <= 1.5 points and mean KL <= 0.5 x int4-rtn-b32's;
`auto` at its default target >= 90 %, every task's drop <= 1 point, size <= 1.25 x the 4-bit bundle; and how
many pairs of recipes the gate orders as the held-out items do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from readme_table import ensure_bundle

from pgexport.source import sources
from pgexport.bench import BenchOptions, run_bench
from pgexport.bench.harness import table as harness_table, write_measurement
from pgexport.bench.report import write_outputs

_R = "benchmarks/recipes/"
RTN = "int4-rtn-b32"  # the baseline every recipe is compared with: 4-bit round-to-nearest, blocks of 32
RECIPES = ["int8", "int8-wo", f"{_R}int8-acc4.json",
           *(f"{_R}int8-{c}-only.json" for c in ("vision", "decoder", "table")),
           RTN, "int4-gptq", "int4-awq", "int4",
           "int4-rtn-b64", *(f"{_R}int4-{m}-b64.json" for m in ("gptq", "awq", "awq-gptq")),
           "int4-rtn-b128", *(f"{_R}int4-{m}-b128.json" for m in ("gptq", "awq", "awq-gptq")),
           *(f"{_R}int4-{m}-b128-table.json" for m in ("gptq", "awq-gptq")),
           "auto", f"{_R}auto-80.json"]
COLUMNS = ("recipe", "size MiB", "seq match % (95 % CI)", "vs RTN: p", "gate seq %", "token agr %", "mean KL",
           "top-1 %", "caption EM", "VQA EM", "OCR CER", "det IoU", "det recall", "seg mIoU", "max drop")
TASKS = ("caption", "vqa", "ocr", "detect", "segment")
TASK_COLUMNS = ("recipe", "caption", "VQA", "OCR", "detect", "segment")
METRICS = ("caption_em", "vqa_em", "ocr_cer", "detect_miou", "detect_recall", "segment_miou")  # as COLUMNS names them
LOWER_IS_BETTER = {"ocr_cer"}


def drop_points(ref: dict, got: dict) -> float:
    """Largest loss against the reference over the task metrics, in points (x 100); negative = all improved."""
    drops = []
    for key in METRICS:
        if key in ref and key in got:
            d = (got[key] - ref[key]) if key in LOWER_IS_BETTER else (ref[key] - got[key])
            drops.append(100 * d)
    return max(drops) if drops else float("nan")


def table(report: dict) -> tuple[list[tuple], str, dict]:
    """The rows (the reference first), the note under them, and per recipe the figures the targets check."""
    ref = next(r for r in report["runs"] if r["kind"] == "reference")
    ref_tm = ref["task_metrics"] or {}
    rows = [("PyTorch fp32 (reference)", *[None] * (COLUMNS.index("caption EM") - 1),
             *(_metric(ref_tm, k) for k in METRICS), None)]
    by_recipe = {}
    base = f"bundle-{RTN}"
    vs_rtn = {c["b"] if c["a"] == base else c["a"]: c["p_value"] for c in report.get("comparisons", [])
              if base in (c["a"], c["b"])}
    for r in report["runs"]:
        if r["kind"] == "reference":
            continue
        acc, tm = r["accuracy"], r["task_metrics"] or {}
        tf = acc["teacher_forced"]
        recipe = r["name"].removeprefix("bundle-")
        v = by_recipe[recipe] = {"seq": acc["sequence_agreement"], "tok": acc["token_agreement"],
                                 "kl": tf["mean_kl"], "top1": tf["top1_agreement"], "drop": drop_points(ref_tm, tm),
                                 "mb": r["size"]["total_bytes"] / 2**20, "gate": _gate(r), "four_bit": _four_bit(r)}
        low, high = acc["sequence_agreement_ci"]
        p = vs_rtn.get(r["name"])
        rows.append((recipe, round(v["mb"], 1), f"{100 * v['seq']:.1f} ({100 * low:.0f}-{100 * high:.0f})",
                     None if p is None else float(f"{p:.2g}"), None if v["gate"] is None else round(100 * v["gate"], 1),
                     round(100 * v["tok"], 1), float(f"{v['kl']:.2e}"), round(100 * v["top1"], 1),
                     *(_metric(tm, k) for k in METRICS), round(v["drop"], 1)))
    where = ("the demo set's eval split" if report["settings"]["eval_set"] == "demo" else
             f"{Path(report['settings']['eval_set']).parent.name}/ (items no build or test has seen)")
    note = (f"{report['settings']['n_items']} held-out items of {where}, all five tasks, greedy decoding, "
            "against the PyTorch fp32 reference on the same inputs; max drop = the largest loss of a task metric "
            "against the reference, in points.")
    return rows, note, by_recipe


def by_task(report: dict) -> list[tuple]:
    """Per recipe, the sequence agreement of each task's items, in %."""
    task = {item["id"]: item["task"] for item in report["items"]}
    rows = []
    for r in report["runs"]:
        if r["kind"] == "reference":
            continue
        per_item = r["accuracy"]["first_divergence"]["per_item"]
        cells = []
        for t in TASKS:
            same = [d is None for k, d in per_item.items() if task.get(k) == t]
            cells.append(round(100 * sum(same) / len(same), 1) if same else None)
        rows.append((r["name"].removeprefix("bundle-"), *cells))
    return rows


def _gate(run: dict) -> float | None:
    """The sequence agreement the build's gate measured, from the bundle's manifest (None: no gate ran)."""
    import json

    manifest = Path(run["path"]) / "manifest.json" if run.get("path") else None
    if manifest is None or not manifest.is_file():
        return None
    acc = (json.loads(manifest.read_text()).get("quantization") or {}).get("accuracy") or {}
    return acc.get("sequence_agreement")


def _four_bit(run: dict) -> bool:
    """Whether the bundle's decoder linears and table are all 4-bit, with no layer kept at 8 bits."""
    import json

    manifest = Path(run["path"]) / "manifest.json" if run.get("path") else None
    if manifest is None or not manifest.is_file():
        return False
    summary = (json.loads(manifest.read_text()).get("quantization") or {}).get("summary") or {}
    labels = [summary.get("decoder_linear", ""), summary.get("embedding", "")]
    labels += [o["precision"] for o in summary.get("overrides", [])]
    return all(label.startswith("int4") for label in labels)


def _metric(tm: dict, key: str) -> float | None:
    return round(tm[key], 3) if key in tm else None


def targets(v: dict) -> list[str]:
    out = []
    if "int8" in v:
        ok = v["int8"]["seq"] >= 0.99 and v["int8"]["drop"] <= 0
        out.append(f"int8: sequence agreement {100 * v['int8']['seq']:.1f} % (>= 99), drop "
                   f"{v['int8']['drop']:.1f} points (<= 0): {'met' if ok else 'NOT met'}")
    four = {k: x for k, x in v.items() if x["four_bit"]}
    if four and RTN in v:
        name, best = max(four.items(), key=lambda kv: kv[1]["seq"])
        ok = best["seq"] >= 0.80 and best["drop"] <= 1.5 and best["kl"] <= 0.5 * v[RTN]["kl"]
        out.append(f"best 4-bit recipe, {name}: sequence agreement {100 * best['seq']:.1f} % (>= 80), drop "
                   f"{best['drop']:.1f} points (<= 1.5), mean KL {best['kl']:.2e} = "
                   f"{best['kl'] / v[RTN]['kl']:.2f} x {RTN}'s (<= 0.5): {'met' if ok else 'NOT met'}")
    if "auto" in v and RTN in v:  # every int4 recipe at blocks of 32 has the same size
        a = v["auto"]
        ok = a["seq"] >= 0.90 and a["drop"] <= 1 and a["mb"] <= 1.25 * v[RTN]["mb"]
        out.append(f"auto at its default target: sequence agreement {100 * a['seq']:.1f} % (>= 90), drop "
                   f"{a['drop']:.1f} points (<= 1), size {a['mb'] / v[RTN]['mb']:.2f} x the 4-bit bundle "
                   f"(<= 1.25): {'met' if ok else 'NOT met'}")
    gated = {k: x for k, x in v.items() if x["gate"] is not None}
    if len(gated) > 1:
        by_eval = sorted(gated, key=lambda k: -gated[k]["seq"])
        by_gate = sorted(gated, key=lambda k: -gated[k]["gate"])
        agree, pairs = concordance(gated)
        out.append(f"ranking by these items: {', '.join(by_eval)}; by the build's gate: {', '.join(by_gate)}; "
                   f"of the {pairs} pairs of recipes these items tell apart, the gate orders {agree} the same way")
    return out


def concordance(v: dict) -> tuple[int, int]:
    """(pairs ordered the same way by the gate as by the held-out items, pairs the items order at all)."""
    names, agree, pairs = list(v), 0, 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d_eval = v[a]["seq"] - v[b]["seq"]
            if d_eval == 0:
                continue
            pairs += 1
            agree += d_eval * (v[a]["gate"] - v[b]["gate"]) > 0
    return agree, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Model source (default: the demo model).")
    ap.add_argument("--work", type=Path, default=Path("quant-table"))
    ap.add_argument("--recipes", default=",".join(RECIPES), help="Comma-separated recipe names or recipe .json files.")
    ap.add_argument("--limit", type=int, default=100, help="Held-out items (interleaved over the five tasks).")
    ap.add_argument("--eval", type=Path, default=None, help="A held-out JSONL (default: the demo set's eval split).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--name", default="quant_table", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    model = args.model or sources.default_model()
    bundles = [ensure_bundle(model, r, args.work / f"bundle-{Path(r).stem}", args.rebuild)
               for r in args.recipes.split(",")]
    report = run_bench(BenchOptions(bundles=tuple(bundles), mode="full", reference_dtypes=("fp32",), limit=args.limit,
                                    eval_set=None if args.eval is None else str(args.eval),
                                    warmup=0, repeats=1, threads=args.threads, work_dir=args.work / "report" / "work"),
                       progress=lambda name, done, total: print(f"\r{name:<28} {done}/{total}", end="", file=sys.stderr))
    print(file=sys.stderr)
    write_outputs(report, args.work / "report")
    rows, note, by_recipe = table(report)
    tasks = ["Sequence agreement by task, %:", "", *harness_table(TASK_COLUMNS, by_task(report))]
    path = write_measurement(args.name, "Accuracy of the quantization recipes on the demo model",
                             "benchmarks/quant_table.py", COLUMNS, rows,
                             [note, "", *(f"- {t}" for t in targets(by_recipe)), "", *tasks], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
