"""Rebuild the README's performance table end to end: build the variants, bench them, write the report.

    python benchmarks/readme_table.py [--model SRC] [--work bench-readme] [--limit 20] [--update-readme]

Builds one bundle per variant (reused when it already exists for the same model and recipe), runs
`pgexport bench` on all of them against the PyTorch reference (bf16, plus fp32 with --fp32-reference), writes
the full report (bench.json, bench.md, plots) to WORK/report and the README table to WORK/report/readme_table.md;
--update-readme replaces the table between the bench-table markers in README.md.

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
from pgexport.bench.report import write_outputs
from pgexport.build.bundle_steps import BuildOptions, build
from pgexport.quant.recipes import resolve_recipe

VARIANTS = ["fp32", "fp16", "int8", "int8-wo", "int4", "int4-gptq"]

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def supported(recipe: str) -> str | None:
    """None if this pgexport can build `recipe`, else why not."""
    if recipe == "fp32":
        return None
    if "quant" not in {f.name for f in dataclasses.fields(BuildOptions)}:
        return "this pgexport has no --quant build option yet"
    try:
        from pgexport.quant.recipes import resolve_recipe

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
        built = (raw.get("quantization") or {}).get("recipe")
        wanted = None if recipe == "fp32" else resolve_recipe(recipe).to_dict()
        # The whole recipe must match, not just its name: a named recipe's settings can change between versions.
        same_model = (raw.get("source") or {}).get("sha256") == sources.resolve(model).describe().get("sha256")
        if same_model and built == wanted:
            print(f"reusing {out}", flush=True)
            return out
    print(f"building {out} ({recipe})", flush=True)
    kw = {} if recipe == "fp32" else {"quant": recipe}
    return build(BuildOptions(model=model, out=out, force=out.exists(), **kw))


def readme_table(report: dict) -> str:
    """The README's table: one row per run, the numbers a reader compares variants by."""
    tm_keys = list(dict.fromkeys(k for r in report["runs"] for k in (r["task_metrics"] or {})))[:4]
    head = ["variant", "size", "TTFT ms", "decode tok/s", "end to end ms", "peak RSS", "token agreement", "top-1"]
    lines = ["| " + " | ".join(head + tm_keys) + " |", "|---|" + "---:|" * (len(head) + len(tm_keys) - 1)]
    for r in report["runs"]:
        acc = r["accuracy"] or {}
        tf = acc.get("teacher_forced") or {}
        size = f"{r['size']['total_bytes'] / 2**20:.0f} MB" if r["size"] else "–"
        tps = r["throughput"]["decode_tokens_per_s_median"]
        cells = [r["name"], size, f"{r['latency']['ttft']['median_ms']:.0f}", "–" if tps is None else f"{tps:.1f}",
                 f"{r['latency']['end_to_end']['median_ms']:.0f}", f"{r['memory']['peak_rss_mb']:.0f} MB",
                 "reference" if r["kind"] == "reference" else f"{100 * acc.get('token_agreement', 0):.1f} %",
                 "" if r["kind"] == "reference" else f"{100 * tf.get('top1_agreement', 0):.1f} %"]
        cells += ["–" if k not in (r["task_metrics"] or {}) else f"{r['task_metrics'][k]:.3f}" for k in tm_keys]
        lines.append("| " + " | ".join(cells) + " |")
    s, sysinfo = report["settings"], report["system"]
    ref = next((r["reference"] for r in report["runs"] if r.get("reference")), "the PyTorch reference")
    lines.append(f"\n{s['eval_set']} set, {s['n_items']} items, {s['threads']} threads on {sysinfo['cpu_model']}; "
                 f"medians; token and top-1 agreement against {ref} on the same inputs (`pgexport bench`).")
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> bool:
    text = README.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    README.write_text(head + START + "\n" + table + END + rest.split(END, 1)[1])
    return True


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
    ap.add_argument("--update-readme", action="store_true")
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
    table = readme_table(report)
    (args.work / "report" / "readme_table.md").write_text(table)
    print(table)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.update_readme:
        print("README.md updated" if update_readme(table) else f"README.md has no {START} ... {END} markers")


if __name__ == "__main__":
    main()
