"""Accuracy of every quantization recipe on the demo model against its PyTorch fp32 reference.

    python benchmarks/quant_table.py [--model SRC] [--work quant-table] [--limit 100] [--recipes a,b,...]

Builds one bundle per recipe (reused when it already exists for the same model and recipe), runs
`pgexport bench` on all of them with the fp32 PyTorch reference on the demo held-out set (interleaved across
tasks), and writes WORK/report/bench.json and the table to docs/measurements/NAME.md. Per recipe: size on
disk, sequence exact match and token agreement of greedy outputs, mean KL and top-1 agreement of
teacher-forced next-token distributions (on the reference's sequences), the task metrics against ground truth
and their largest drop in points against the reference (IoUs and rates x 100; a CER rise counts as a drop).
The quantization targets are checked at the end: int8 >= 99 % sequence agreement with drop <= 0.5 points;
int4-gptq >= 97 % with drop <= 1.5 points and mean KL below int4 RTN at the same block size (the `int4`
recipe: RTN, block 32, the same as `int4-rtn-b32`, which differs from int4-gptq only in how the decoder
linears are rounded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from readme_table import ensure_bundle

from pgexport.source import sources
from pgexport.bench import BenchOptions, run_bench
from pgexport.bench.harness import write_measurement
from pgexport.bench.report import write_outputs

RECIPES = ["fp32", "fp16", "int8", "int8-dynamic", "int8-wo", "int4", "int4-rtn-b64", "int4-rtn-b128", "int4-gptq"]
COLUMNS = ("recipe", "size MiB", "seq match %", "token agr %", "mean KL", "top-1 %", "caption EM", "VQA EM", "OCR CER",
           "det IoU", "det recall", "seg mIoU", "max drop")
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
    rows = [("PyTorch fp32 (reference)", None, None, None, None, None, *(_metric(ref_tm, k) for k in METRICS), None)]
    by_recipe = {}
    for r in report["runs"]:
        if r["kind"] == "reference":
            continue
        acc, tm = r["accuracy"], r["task_metrics"] or {}
        tf = acc["teacher_forced"]
        recipe = r["name"].removeprefix("bundle-")
        v = by_recipe[recipe] = {"seq": acc["sequence_agreement"], "tok": acc["token_agreement"],
                                 "kl": tf["mean_kl"], "top1": tf["top1_agreement"], "drop": drop_points(ref_tm, tm),
                                 "mb": r["size"]["total_bytes"] / 2**20}
        rows.append((recipe, round(v["mb"], 1), round(100 * v["seq"], 1), round(100 * v["tok"], 1),
                     float(f"{v['kl']:.2e}"), round(100 * v["top1"], 1), *(_metric(tm, k) for k in METRICS),
                     round(v["drop"], 1)))
    note = (f"{report['settings']['n_items']} held-out items of the demo set (all five tasks), greedy decoding, "
            "against the PyTorch fp32 reference on the same inputs; max drop = the largest loss of a task metric "
            "against the reference, in points.")
    return rows, note, by_recipe


def _metric(tm: dict, key: str) -> float | None:
    return round(tm[key], 3) if key in tm else None


def targets(v: dict) -> list[str]:
    out = []
    if "int8" in v:
        ok = v["int8"]["seq"] >= 0.99 and v["int8"]["drop"] <= 0.5
        out.append(f"int8: sequence agreement {100 * v['int8']['seq']:.1f} % (>= 99), drop "
                   f"{v['int8']['drop']:.1f} points (<= 0.5): {'met' if ok else 'NOT met'}")
    if "int4-gptq" in v:
        g = v["int4-gptq"]
        ok = g["seq"] >= 0.97 and g["drop"] <= 1.5
        out.append(f"int4-gptq: sequence agreement {100 * g['seq']:.1f} % (>= 97), drop {g['drop']:.1f} points "
                   f"(<= 1.5): {'met' if ok else 'NOT met'}")
        rtn = "int4" if "int4" in v else "int4-rtn-b32"
        if rtn in v:
            r = v[rtn]
            out.append(f"int4-gptq mean KL {g['kl']:.3e} vs {rtn} (RTN, block 32) {r['kl']:.3e}: "
                       f"{'lower (met)' if g['kl'] < r['kl'] else 'NOT lower'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Model source (default: the demo model).")
    ap.add_argument("--work", type=Path, default=Path("quant-table"))
    ap.add_argument("--recipes", default=",".join(RECIPES), help="Comma-separated recipe names or recipe .json files.")
    ap.add_argument("--limit", type=int, default=100, help="Held-out items (interleaved over the five tasks).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--name", default="quant_table", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    model = args.model or sources.default_model()
    bundles = [ensure_bundle(model, r, args.work / f"bundle-{Path(r).stem}", args.rebuild)
               for r in args.recipes.split(",")]
    report = run_bench(BenchOptions(bundles=tuple(bundles), mode="full", reference_dtypes=("fp32",), limit=args.limit,
                                    warmup=0, repeats=1, threads=args.threads, work_dir=args.work / "report" / "work"),
                       progress=lambda name, done, total: print(f"\r{name:<28} {done}/{total}", end="", file=sys.stderr))
    print(file=sys.stderr)
    write_outputs(report, args.work / "report")
    rows, note, by_recipe = table(report)
    path = write_measurement(args.name, "Accuracy of the quantization recipes on the demo model",
                             "benchmarks/quant_table.py", COLUMNS, rows,
                             [note, "", *(f"- {t}" for t in targets(by_recipe))], args.out_dir)
    print(path.read_text(), end="")


if __name__ == "__main__":
    main()
