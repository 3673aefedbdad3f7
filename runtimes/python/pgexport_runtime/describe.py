"""Human-readable lines about a bundle and an answer: what `inspect` and `run` print, in both command lines
(`pgexport` and the runtime's own `python -m pgexport_runtime`)."""

from __future__ import annotations

import json
import math
from collections import Counter

from pgexport_runtime.cpu import int8_matrix_units
from pgexport_runtime.manifest import Manifest
from pgexport_runtime.session import INT8_PREFILL_GRAPH


def kv_words(m: Manifest) -> str:
    kv = m.kv_cache
    return kv.layout.describe(kv.max_len, kv.prefill_lengths)


def describe(m: Manifest) -> list[str]:
    """`inspect`: graphs, sizes, precisions, I/O, geometry, parity, recipe, measured accuracy, tools."""
    g, record = m.geometry, m.record
    source = record.source or {}  # its shape is checked at load (provenance.py)
    spec = source.get("spec") or source.get("name") or "an unrecorded source"
    adapter = source.get("adapter")
    if isinstance(adapter, dict):  # a peft adapter merged at build (pgexport/source/adapters.py)
        spec += f" + adapter {adapter.get('name')} ({adapter.get('peft_type')}, rank {adapter.get('rank')})"
    lines = [f"bundle   {m.root}  (schema {m.schema_version}, from {spec})",
             f"model    {g.family}, {g.image_size}px / {g.num_image_tokens} image tokens, decoder {g.text_layers}x"
             f"{g.text_hidden} ({g.num_heads} heads, {g.num_kv_heads} kv), vocab {g.vocab_size}",
             f"kv cache {m.kv_cache.layout.name} ({kv_words(m)}), {m.kv_cache.dtype}",
             "graphs"]
    prefill = set(m.kv_cache.prefill_graphs.values())
    for name, entry in m.graphs.items():
        shared = name in prefill  # the decoder's graph at another length, reading the decoder's weight file
        size = sum((m.root / f).stat().st_size for f in (entry.file, *(() if shared else entry.data_files)))
        note = ", the decoder's weights" if shared else ""
        lines += [f"  {name:<15} {entry.file:<22} {fmt_bytes(size):>9}  {entry.precision}{note}",
                  f"  {'':<15} in:  {io_summary(entry.inputs)}",
                  f"  {'':<15} out: {io_summary(entry.outputs)}"]
    parity, quant = record.parity, record.quantization
    lines.append("parity   " + ("not checked" if parity is None else ("ok" if parity["ok"] else "FAILED")
                                + f"{parity_label(quant)}: {parity_line(parity)}"))
    lines.append("recipe   " + ("fp32 (not quantized)" if not quant else
                                f"{quant['recipe']['name']}: {recipe_line(quant['summary'])}"))
    if quant and quant.get("auto"):
        lines.append("auto     " + auto_line(quant["auto"]))
    if quant and quant.get("accuracy"):
        lines.append("accuracy " + accuracy_line(quant["accuracy"]))
        if isinstance(quant["accuracy"].get(INT8_PREFILL_GRAPH), dict):
            lines.append(f"  prefills on {INT8_PREFILL_GRAPH}: " + accuracy_line(quant["accuracy"][INT8_PREFILL_GRAPH]))
    if INT8_PREFILL_GRAPH in m.graphs:
        lines.append("prefill  " + prefill_line())
    lines.append("tools    " + ", ".join(f"{k} {v}" for k, v in record.tools.items() if v is not None))
    if record.package is not None:
        lines += package_lines(record.package)
    return lines


def prefill_line() -> str:
    """Which graph runs a prefill on this CPU by default, for a bundle with an int8 prefill graph."""
    if int8_matrix_units():
        return (f"{INT8_PREFILL_GRAPH} on this CPU (it has int8 matrix units: AMX); decode steps on decoder; "
                "--prefill decoder forces the decoder")
    return (f"decoder on this CPU (no int8 matrix units: {INT8_PREFILL_GRAPH} is not read); --prefill int8 "
            "forces it")


MOBILE_EPS = {"nnapi": "NNAPI", "coreml_nn": "CoreML NeuralNetwork", "coreml_mlprogram": "CoreML MLProgram"}


def package_lines(package: dict) -> list[str]:
    """`pgexport package`: the format, the reduced-build operator list, and onnxruntime's mobile usability checker
    per execution provider and graph (supported nodes / nodes, partitions, its verdict as is and with fixed shapes)."""
    what = f"{package['format']}, {package.get('activations', 'fp32')} activations"
    if package.get("operators_config"):
        what += f" ({package.get('optimization')}); operators for a reduced build: {package['operators_config']}"
    lines = [f"package  {what}"]
    acc = package.get("accuracy_vs_source")
    if acc:
        lines.append("  vs the bundle it came from: " + accuracy_line(acc))
    mobile = package.get("mobile") or {}
    for ep, label in MOBILE_EPS.items():
        parts = []
        for graph, eps in mobile.items():
            v = eps.get(ep)
            if v is not None:
                fixed = f", fixed shapes {v['fixed_shapes']}" if v.get("fixed_shapes") else ""
                n = v["partitions"]
                parts.append(f"{graph} {v['supported_nodes']}/{v['nodes']} nodes, {n} partition{'s' * (n != 1)} "
                             f"({v['as_is']}{fixed})")
        if parts:
            lines.append(f"  {label}: " + "; ".join(parts))
    return lines


def answer_lines(result, as_json: bool = False, streamed: bool = False) -> list[str]:
    """`run`: the answer's text (unless it was streamed), then each object's label and box in pixels of the
    original image (and mask area); or the whole answer as one JSON object."""
    if as_json:
        return [json.dumps(result.to_json())]
    lines = [] if streamed else [result.text]
    for obj in [*result.detections, *result.segments]:
        x0, y0, x1, y1 = obj.box
        area = f", mask {int(obj.mask.sum())} px" if getattr(obj, "mask", None) is not None else ""
        lines.append(f"  {obj.label}: box ({x0:.0f}, {y0:.0f}) - ({x1:.0f}, {y1:.0f}) px{area}")
    return lines


def recipe_line(summary: dict, listed: int = 4) -> str:
    """The recipe's components, then its overrides: each one when there are a few, counted per precision when
    there are more (`auto` may set dozens; the manifest and the recipe file name them all)."""
    parts = [f"{k}={v}" for k, v in summary.items() if k != "overrides"]
    overrides = summary.get("overrides", [])
    if len(overrides) <= listed:
        parts += [f"{o['match']}={o['precision']}" for o in overrides]
    else:
        for precision, n in Counter(o["precision"] for o in overrides).items():
            parts.append(f"{n} modules={precision}")
    return ", ".join(parts)


def parity_label(quant: dict | None) -> str:
    # parity runs on the float32 graphs, before any recipe rewrites them: a quantized bundle's own agreement
    # with PyTorch is the accuracy line, and must never be read off the parity line
    return " (float32 graphs, before quantization)" if quant else ""


def parity_line(parity: dict) -> str:
    checks = parity["checks"]
    parts = [f"{k} {c['relative']:.1e}" for k, c in checks.items() if "relative" in c and k != "preprocessing"]
    greedy = checks.get("greedy", {})
    if greedy:
        parts.append(f"greedy {'=' if greedy['match'] else '!='} transformers ({max(greedy['tokens'])} tokens)")
    return ", ".join(parts)


def auto_line(auto: dict) -> str:
    """What `--quant auto` bought: the units it moved to 8 bits, their size, and the calibration agreement."""
    before, after = auto["calibration"]["four_bit"], auto["calibration"]["chosen"]
    share = auto["extra_bytes"] / auto["four_bit_bytes"] if auto["four_bit_bytes"] else 0.0
    return (f"{len(auto['promoted'])} of {auto['units']} units at 8 bits (+{fmt_bytes(auto['extra_bytes'])}, "
            f"{share:+.0%} over all 4-bit) for {auto['target_agreement']:.0%} sequence agreement on "
            f"{auto['calibration_samples']} calibration samples: {before['sequence_agreement']:.1%} all 4-bit, "
            f"{after['sequence_agreement']:.1%} chosen (mean KL {before['mean_kl']:.2e} -> {after['mean_kl']:.2e})")


def accuracy_line(acc: dict) -> str:
    n = acc["samples"]
    low, high = wilson_interval(round(acc["sequence_agreement"] * n), n)
    return (f"sequence agreement {acc['sequence_agreement']:.1%} (95 % CI {low:.0%}-{high:.0%}), token agreement "
            f"{acc['token_agreement']:.1%}, top-1 {acc['top1_agreement']:.1%}, mean KL {acc['mean_kl']:.2e} "
            f"({n} held-out samples)")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default): honest at small n and near 0 or 1,
    where the normal approximation gives intervals past [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def io_summary(names) -> str:
    names = list(names)
    kv = [n for n in names if n.startswith(("past_key_values.", "present."))]
    rest = [n for n in names if n not in kv]
    if kv:
        rest.append(f"{kv[0].split('.')[0]}.{{0..{len(kv) // 2 - 1}}}.key/value")
    return ", ".join(rest)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
