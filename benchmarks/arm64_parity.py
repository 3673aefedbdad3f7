"""Do onnxruntime's ARM kernels compute what its x86 kernels do? The demo model's bundles, built on this machine as
users build them, answered on emulated ARM64 CPUs and here, and compared with each other and with transformers.

    python benchmarks/arm64_parity.py [--limit 60] [--cpus cortex-a53,cortex-a76,max] [--work bench-arm64]

Builds (or reuses, under --work) the demo model's fp32, int8 and int4 bundles. The first --limit items of the
held-out eval split (the five tasks interleaved) are answered greedily by the Python runtime on this machine and,
through tools/arm64.py (a Debian arm64 Python under qemu-user-static), on each emulated ARM CPU, and by
transformers in float32. Per bundle and CPU: the answers identical to this machine's (with a 95 % Wilson
interval), the tokens that agree with them, and the answers identical to transformers'. The table goes to
docs/measurements/NAME.md. Needs Debian's qemu-user-static and debootstrap. Emulation takes seconds per answer
and says nothing about an ARM CPU's speed: no time is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from readme_table import ensure_bundle  # noqa: E402

from pgexport.bench.harness import write_measurement  # noqa: E402
from pgexport.source import sources  # noqa: E402
from pgexport.verify import image_prompts  # noqa: E402
from pgexport.verify.agreement import mcnemar, sequences  # noqa: E402
from pgexport_runtime.describe import wilson_interval  # noqa: E402
from tools import arm64  # noqa: E402

COLUMNS = ("bundle", "CPU", "kernels see", "items", "same answer as x86 %", "95 % CI", "same tokens as x86 %",
           "same answer as transformers %", "p vs x86 (McNemar)")
RECIPES = ("fp32", "int8", "int4")
GREEDY = HERE.parent / "tools" / "greedy_tokens.py"
KLEIDIAI_CPUS = ("cortex-a76", "max")  # the CPUs with the int8 dot product that onnxruntime's KleidiAI kernels need


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=60, help="held-out eval items (default 60)")
    ap.add_argument("--cpus", default=",".join(arm64.CPUS), help="qemu CPU models (default: %(default)s)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="bundles to build and compare (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("bench-arm64"), help="bundles and answers (reused)")
    ap.add_argument("--name", default="arm64_parity", help="docs/measurements/NAME.md is written")
    ap.add_argument("--out-dir", type=Path, default=None, help="write NAME.md here instead of docs/measurements")
    args = ap.parse_args()
    if missing := arm64.missing_tools():
        sys.exit(f"error: emulating ARM64 needs the Debian packages {', '.join(missing)} (apt-get install them)")
    cpus = [c for c in args.cpus.split(",") if c]
    if unknown := [c for c in cpus if c not in arm64.CPUS]:
        sys.exit(f"error: unknown CPU {unknown[0]!r}; one of {', '.join(arm64.CPUS)}")

    model = sources.default_model()
    recipes = [r for r in args.recipes.split(",") if r]
    bundles = {r: str(ensure_bundle(model, r, args.work / r, False).resolve()) for r in recipes}
    rows = image_prompts.read(image_prompts.DEMO_SET, "eval", limit=args.limit)
    items = [{"image": str(r.image), "prompt": r.prompt, "max_new_tokens": r.max_new_tokens or 32} for r in rows]
    job = args.work / "job.json"
    job.write_text(json.dumps({"bundles": list(bundles.values()), "items": items}))

    kleidiai = args.work / "job-kleidiai.json"  # the runtime's KleidiAI option on (SessionConfig.kleidiai)
    kleidiai.write_text(json.dumps({"bundles": list(bundles.values()), "items": items, "session": {"kleidiai": True}}))

    print(f"x86: {len(items)} items x {len(bundles)} bundles", flush=True)
    answers = {"x86": _tokens([sys.executable, str(GREEDY)], job, args.work / "x86.json")}
    root = arm64.ensure_root(sources.cache_dir())
    runs = [(cpu, False) for cpu in cpus] + [(cpu, True) for cpu in cpus if cpu in KLEIDIAI_CPUS]
    for cpu, on in runs:
        print(f"arm64 {cpu}{', KleidiAI' * on}: {len(items)} items x {len(bundles)} bundles (emulated)", flush=True)
        answers[cpu, on] = _tokens(None, kleidiai if on else job, args.work / f"arm64-{cpu}{'-kleidiai' * on}.json",
                                   root, cpu)
    reference = _reference(model, rows, args.work / "transformers.json")

    eos = _eos(bundles[recipes[0]])
    table = []
    for recipe, bundle in bundles.items():
        x86 = [_strip(t, eos) for t in answers["x86"][bundle]]
        x86_right = _same(x86, reference)
        table.append((recipe, "x86 (this machine)", "–", len(items), None, None, None, _pct(x86_right), None))
        for cpu, on in runs:
            got = [_strip(t, eos) for t in answers[cpu, on][bundle]]
            same = _same(got, x86)
            low, high = wilson_interval(sum(same), len(same))
            right = _same(got, reference)
            name = f"arm64 {cpu}" + (", KleidiAI on" if on else "")
            table.append((recipe, name, arm64.CPUS[cpu][0], len(items), _pct(same),
                          f"{100 * low:.1f}-{100 * high:.1f}", round(100 * sequences(x86, got)["token_agreement"], 1),
                          _pct(right), round(mcnemar(right, x86_right)["p_value"], 3)))
    notes = [f"Bundles built on this machine by `pgexport build` (the recipes `{'`, `'.join(recipes)}`) from the "
             f"demo model; items: the first {len(items)} of its held-out eval split. ARM64: Debian {arm64.SUITE}'s "
             f"Python under qemu-user-static with onnxruntime {arm64.versions()['onnxruntime']}'s aarch64 wheel "
             "(tools/arm64.py); the CPU model decides which kernels onnxruntime picks (NEON, dot product, i8mm). "
             "The runtime runs with onnxruntime's KleidiAI kernels off unless told (SessionConfig.kleidiai); the "
             "rows \"KleidiAI on\" have them on. "
             "Token agreement counts matching positions over the longer answer of each pair; p: exact McNemar test "
             "of the ARM and x86 answers' agreement with transformers on the same items."]
    path = write_measurement(args.name, "The demo model's bundles on ARM64 (emulated) against x86 and transformers",
                             "benchmarks/arm64_parity.py", COLUMNS, table, notes, args.out_dir)
    print(f"wrote {path}")


def _tokens(command, job: Path, out: Path, root: Path | None = None, cpu: str | None = None) -> dict:
    if out.is_file():
        print(f"reusing {out}", flush=True)
        return json.loads(out.read_text())["tokens"]
    if command is not None:
        done = subprocess.run([*command, str(job), str(out)], capture_output=True, text=True)
    else:
        done = arm64.python(root, cpu, str(GREEDY), str(job.resolve()), str(out.resolve()), timeout=6 * 3600)
    if done.returncode != 0:
        sys.exit(f"error: answering on {cpu or 'x86'} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())["tokens"]


def _reference(model: str, rows, out: Path) -> list[list[int]]:
    from pgexport.demo import Question, reference_tokens

    if out.is_file():
        print(f"reusing {out}", flush=True)
        return json.loads(out.read_text())
    print("transformers fp32 reference", flush=True)
    tokens = reference_tokens(model, [Question(r.task, r.image, r.prompt, r.answer, r.max_new_tokens) for r in rows],
                              32)
    out.write_text(json.dumps(tokens))
    return tokens


def _eos(bundle: str) -> int:
    from pgexport_runtime.manifest import load_manifest

    return load_manifest(bundle).geometry.eos_token_id


def _strip(tokens: list[int], eos: int) -> list[int]:
    return [t for t in tokens if t != eos]


def _same(a: list[list[int]], b: list[list[int]]) -> list[bool]:
    return [x == y for x, y in zip(a, b, strict=True)]


def _pct(same: list[bool]) -> float:
    return round(100 * sum(same) / len(same), 1)


if __name__ == "__main__":
    main()
