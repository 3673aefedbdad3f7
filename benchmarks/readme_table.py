"""Size, speed, memory and accuracy of a model's main variants: build them, bench them, write the table.

    python benchmarks/readme_table.py [--model SRC] [--work bench-readme] [--limit 20]

Builds one bundle per variant (reused when it already exists for the same model and recipe), runs
`pgexport bench` on all of them against the PyTorch reference (bf16, plus fp32 with --fp32-reference), writes
the full report (bench.json, bench.md, plots) to WORK/report and the table to docs/measurements/NAME.md.

Variants are quantization recipe names (`pgexport build --quant RECIPE`); add or remove them here. A recipe
the installed pgexport does not know yet (or a pgexport without --quant) is skipped with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pgexport.source import sources
from pgexport.bench import BenchOptions, run_bench
from pgexport.bench.harness import write_measurement
from pgexport.bench.report import write_outputs
from pgexport.build.bundle_steps import BuildOptions, build
from pgexport.quant.recipes import recipe_from_dict, resolve_recipe

VARIANTS = ["fp32", "fp16", "int8", "int8-wo", "int4", "int4-gptq"]
# the last four: task metrics as `pgexport bench` names them, those the demo's held-out set scores first
COLUMNS = ("variant", "size MiB", "TTFT ms", "decode tok/s", "end to end ms", "peak RSS MiB", "token agreement %",
           "top-1 %", "caption_em", "vqa_em", "ocr_cer", "ocr_em")


def supported(recipe: str) -> str | None:
    """None if this pgexport can build `recipe`, else why not."""
    if recipe == "fp32":
        return None
    if "quant" not in {f.name for f in dataclasses.fields(BuildOptions)}:
        return "this pgexport has no --quant build option yet"
    try:
        from pgexport.quant.recipes import recipe_from_dict, resolve_recipe

        resolve_recipe(recipe)
    except ImportError:
        return "pgexport.quant is not installed"
    except Exception as exc:  # unknown recipe name: the library says why
        return str(exc).splitlines()[0]
    return None


def ensure_bundle(model: str, recipe: str, out: Path, rebuild: bool) -> Path:
    manifest = out / "manifest.json"
    if manifest.is_file() and not rebuild:
        raw = json.loads(manifest.read_text())
        quant = raw.get("quantization") or {}
        built = (quant.get("auto") or {}).get("base") or quant.get("recipe")  # `auto`: the recipe it started from
        # compared as recipes, every field: a named recipe's settings can change between versions, and a field
        # the stored recipe lacks reads as its default
        built = None if built is None else recipe_from_dict(built, built.get("name", "recipe"))
        wanted = None if recipe == "fp32" else resolve_recipe(recipe)
        same_model = (raw.get("source") or {}).get("sha256") == sources.resolve(model).describe().get("sha256")
        if same_model and built == wanted:
            print(f"reusing {out}", flush=True)
            return out
    print(f"building {out} ({recipe})", flush=True)
    kw = {} if recipe == "fp32" else {"quant": recipe}
    return build(BuildOptions(model=model, out=out, force=out.exists(), **kw))


def readme_table(report: dict) -> tuple[list[tuple], str]:
    """The table's rows, one per run: the numbers a reader compares variants by; and the note under them."""
    rows = []
    for r in report["runs"]:
        acc, tm = r["accuracy"] or {}, r["task_metrics"] or {}
        tps = r["throughput"]["decode_tokens_per_s_median"]
        rows.append((r["name"], round(r["size"]["total_bytes"] / 2**20) if r["size"] else None,
                     round(r["latency"]["ttft"]["median_ms"]), None if tps is None else round(tps, 1),
                     round(r["latency"]["end_to_end"]["median_ms"]), round(r["memory"]["peak_rss_mb"]),
                     "reference" if r["kind"] == "reference" else round(100 * acc.get("token_agreement", 0), 1),
                     None if r["kind"] == "reference" else
                     round(100 * (acc.get("teacher_forced") or {}).get("top1_agreement", 0), 1),
                     *(round(tm[k], 3) if k in tm else None for k in COLUMNS[8:])))
    s = report["settings"]
    ref = next((r["reference"] for r in report["runs"] if r.get("reference")), "the PyTorch reference")
    return rows, (f"{s['eval_set']} set, {s['n_items']} items, {s['threads']} threads; medians; token and top-1 "
                  f"agreement against {ref} on the same inputs (`pgexport bench`).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Model source (default: the demo model, or tiny-pg1 before it ships).")
    ap.add_argument("--work", type=Path, default=Path("bench-readme"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated recipe names.")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--fp32-reference", action="store_true", help="Also time the fp32 PyTorch reference.")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--name", default="readme_table", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    model = args.model or sources.default_model()

    bundles = []
    for recipe in args.variants.split(","):
        why = supported(recipe)
        if why:
            print(f"skipping {recipe}: {why}", flush=True)
            continue
        bundles.append(ensure_bundle(model, recipe, args.work / f"bundle-{recipe}", args.rebuild))
    if not bundles:
        sys.exit("no variant could be built")
    dtypes = ("bf16", "fp32") if args.fp32_reference else ("bf16",)
    report = run_bench(BenchOptions(bundles=tuple(bundles), mode="full", reference_dtypes=dtypes, limit=args.limit,
                                    repeats=args.repeats, threads=args.threads, work_dir=args.work / "report" / "work"),
                       progress=lambda name, done, total: print(f"\r{name:<28} {done}/{total}", end="", file=sys.stderr))
    print(file=sys.stderr)
    paths = write_outputs(report, args.work / "report")
    rows, note = readme_table(report)
    path = write_measurement(args.name, "Size, speed, memory and accuracy of the main variants",
                             "benchmarks/readme_table.py", COLUMNS, rows, [note], args.out_dir)
    print(path.read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in [*paths.values(), path]))


if __name__ == "__main__":
    main()
