"""The manifest's informational sections: source, tools, build, parity, quantization.

Generation never reads them; `pgexport inspect` prints them and `pgexport bench` picks its reference
from `source`. Their shape is checked at load like every other section (only the fields those readers
use), so that a malformed one is the same one-line BundleError, not a TypeError inside a printer.
"""

from __future__ import annotations

from pgexport_runtime import typed_json

ACCURACY = ("sequence_agreement", "token_agreement", "top1_agreement")  # fractions, as the gate writes them


def check(raw: dict) -> None:
    src = typed_json.section(raw, "source", "manifest", optional=True)
    if src is not None:
        for key in ("spec", "kind", "directory", "name"):  # strings or null: bench and inspect print them
            if not isinstance(src.get(key), (str, type(None))):
                raise typed_json.FieldError(f"source.{key} must be a string or null")
        adapter = typed_json.section(src, "adapter", "source", optional=True)
        if adapter is not None and not isinstance(adapter.get("name"), (str, type(None))):
            raise typed_json.FieldError("source.adapter.name must be a string or null")
    for key, value in (typed_json.section(raw, "tools", "manifest", optional=True) or {}).items():
        if isinstance(value, (dict, list)):
            raise typed_json.FieldError(f"tools.{key} must be a version, not {type(value).__name__}")
    typed_json.section(raw, "build", "manifest", optional=True)
    _parity(typed_json.section(raw, "parity", "manifest", optional=True))
    _quantization(typed_json.section(raw, "quantization", "manifest", optional=True))
    _package(typed_json.section(raw, "package", "manifest", optional=True))


def _parity(parity: dict | None) -> None:
    if parity is None:  # not checked (--skip-parity), or a partial manifest during the build
        return
    typed_json.flag(parity, "ok", "parity")
    checks = typed_json.section(parity, "checks", "parity")
    for name in checks:
        where = f"parity.checks.{name}"
        check = typed_json.section(checks, name, "parity.checks")
        typed_json.number(check, "relative", where, 0, float("inf"), optional=True, closed=True)
        if name == "greedy":
            typed_json.flag(check, "match", where)
            if not typed_json.integers(check, "tokens", where, 0, 1 << 22):
                raise typed_json.FieldError(f"{where}.tokens is empty")


def _quantization(quant: dict | None) -> None:
    if quant is None:
        return
    typed_json.text(typed_json.section(quant, "recipe", "quantization"), "name", "quantization.recipe")
    summary = typed_json.section(quant, "summary", "quantization")
    for i, override in enumerate(typed_json.objects(summary, "overrides", "quantization.summary", optional=True)):
        where = f"quantization.summary.overrides[{i}]"
        typed_json.text(override, "match", where)
        typed_json.text(override, "precision", where)
    accuracy = typed_json.section(quant, "accuracy", "quantization", optional=True)
    if accuracy is not None:
        for key in ACCURACY:
            typed_json.number(accuracy, key, "quantization.accuracy", 0, 1, closed=True)
        typed_json.number(accuracy, "mean_kl", "quantization.accuracy", 0, float("inf"), closed=True)
        typed_json.integer(accuracy, "samples", "quantization.accuracy", 0, 1 << 31)
    auto = typed_json.section(quant, "auto", "quantization", optional=True)
    if auto is not None:  # what `--quant auto` measured (describe.auto_line reads these)
        typed_json.number(auto, "target_agreement", "quantization.auto", 0, 1, closed=True)
        typed_json.integer(auto, "calibration_samples", "quantization.auto", 0, 1 << 31)
        units = typed_json.integer(auto, "units", "quantization.auto", 0, 1 << 20)
        if len(typed_json.texts(auto, "promoted", "quantization.auto", max_len=1 << 20)) > units:
            raise typed_json.FieldError("quantization.auto.promoted names more units than quantization.auto.units")
        for key in ("extra_bytes", "four_bit_bytes"):
            typed_json.integer(auto, key, "quantization.auto", 0, 1 << 50)
        calibration = typed_json.section(auto, "calibration", "quantization.auto")
        for key in ("four_bit", "chosen"):
            step = typed_json.section(calibration, key, "quantization.auto.calibration")
            typed_json.number(step, "sequence_agreement", f"quantization.auto.calibration.{key}", 0, 1, closed=True)
            typed_json.number(step, "mean_kl", f"quantization.auto.calibration.{key}", 0, float("inf"), closed=True)


def _package(package: dict | None) -> None:
    if package is None:
        return
    typed_json.text(package, "format", "package")
    for graph, eps in (typed_json.section(package, "mobile", "package", optional=True) or {}).items():
        for ep in eps:
            where = f"package.mobile.{graph}.{ep}"
            verdict = typed_json.section(eps, ep, f"package.mobile.{graph}")
            for key in ("nodes", "supported_nodes", "partitions"):
                typed_json.integer(verdict, key, where, 0, 1 << 31)
            typed_json.text(verdict, "as_is", where)
            typed_json.text(verdict, "fixed_shapes", where, optional=True)
