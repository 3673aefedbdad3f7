"""The manifest's informational sections: source, tools, build, parity, quantization.

Generation never reads them; `pgexport inspect` prints them and `pgexport bench` picks its reference
from `source`. Their shape is checked at load like every other section (only the fields those readers
use), so that a malformed one is the same one-line BundleError, not a TypeError inside a printer.
"""

from __future__ import annotations

from . import fields

ACCURACY = ("sequence_agreement", "token_agreement", "top1_agreement")  # fractions, as the gate writes them


def check(raw: dict) -> None:
    src = fields.section(raw, "source", "manifest", optional=True)
    if src is not None:
        for key in ("spec", "kind", "directory", "name"):  # strings or null: bench and inspect print them
            if not isinstance(src.get(key), (str, type(None))):
                raise fields.FieldError(f"source.{key} must be a string or null")
        adapter = fields.section(src, "adapter", "source", optional=True)
        if adapter is not None and not isinstance(adapter.get("name"), (str, type(None))):
            raise fields.FieldError("source.adapter.name must be a string or null")
    for key, value in (fields.section(raw, "tools", "manifest", optional=True) or {}).items():
        if isinstance(value, (dict, list)):
            raise fields.FieldError(f"tools.{key} must be a version, not {type(value).__name__}")
    fields.section(raw, "build", "manifest", optional=True)
    _parity(fields.section(raw, "parity", "manifest", optional=True))
    _quantization(fields.section(raw, "quantization", "manifest", optional=True))
    _package(fields.section(raw, "package", "manifest", optional=True))


def _parity(parity: dict | None) -> None:
    if parity is None:  # not checked (--skip-parity), or a partial manifest during the build
        return
    fields.flag(parity, "ok", "parity")
    checks = fields.section(parity, "checks", "parity")
    for name in checks:
        where = f"parity.checks.{name}"
        check = fields.section(checks, name, "parity.checks")
        fields.number(check, "relative", where, 0, float("inf"), optional=True, closed=True)
        if name == "greedy":
            fields.flag(check, "match", where)
            if not fields.integers(check, "tokens", where, 0, 1 << 22):
                raise fields.FieldError(f"{where}.tokens is empty")


def _quantization(quant: dict | None) -> None:
    if quant is None:
        return
    fields.text(fields.section(quant, "recipe", "quantization"), "name", "quantization.recipe")
    summary = fields.section(quant, "summary", "quantization")
    for i, override in enumerate(fields.objects(summary, "overrides", "quantization.summary", optional=True)):
        where = f"quantization.summary.overrides[{i}]"
        fields.text(override, "match", where)
        fields.text(override, "precision", where)
    accuracy = fields.section(quant, "accuracy", "quantization", optional=True)
    if accuracy is not None:
        for key in ACCURACY:
            fields.number(accuracy, key, "quantization.accuracy", 0, 1, closed=True)
        fields.number(accuracy, "mean_kl", "quantization.accuracy", 0, float("inf"), closed=True)
        fields.integer(accuracy, "samples", "quantization.accuracy", 0, 1 << 31)


def _package(package: dict | None) -> None:
    if package is None:
        return
    fields.text(package, "format", "package")
    for graph, eps in (fields.section(package, "mobile", "package", optional=True) or {}).items():
        for ep in eps:
            where = f"package.mobile.{graph}.{ep}"
            verdict = fields.section(eps, ep, f"package.mobile.{graph}")
            for key in ("nodes", "supported_nodes", "partitions"):
                fields.integer(verdict, key, where, 0, 1 << 31)
            fields.text(verdict, "as_is", where)
            fields.text(verdict, "fixed_shapes", where, optional=True)
