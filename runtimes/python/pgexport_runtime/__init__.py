"""pgexport-runtime: run pgexport PaliGemma bundles with onnxruntime and numpy only (no torch).

The names below are imported when first used, not with the package: `pgexport-run` reaches its own error
handling (cli.py) before onnxruntime loads, so that an onnxruntime that cannot load is one line, and one that
fails for lack of memory is not mistaken for one that is missing.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PaliGemma": "pipeline", "Result": "pipeline", "Answer": "typed_answers", "Detection": "typed_answers",
    "Segment": "typed_answers", "Sampling": "sampling", "SessionConfig": "session", "Geometry": "geometry",
    "load_manifest": "manifest", "BundleError": "errors", "LimitError": "errors", "UserError": "errors",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pgexport_runtime' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"pgexport_runtime.{module}"), name)
    except ImportError as exc:
        raise import_error(exc) from None
    globals()[name] = value
    return value


class DependencyError(ImportError):
    """A package the runtime needs is missing, or installed and unable to load: said in one line."""


def import_error(exc: ImportError) -> Exception:
    """What an ImportError of the runtime's dependencies means: a package missing (how to install it), or one
    installed that could not load, for lack of memory (out_of_memory.py) or another reason (its own words)."""
    from pgexport_runtime.out_of_memory import address_space_limit, is_out_of_memory, out_of_memory

    if isinstance(exc, DependencyError):
        return exc
    missing = exc.name.split(".")[0] if isinstance(exc, ModuleNotFoundError) and exc.name else None
    if missing == "onnxruntime":
        return DependencyError("pgexport-runtime needs onnxruntime: from a pgexport checkout, pip install "
                           "'./runtimes/python[cpu]', or './runtimes/python[gpu]' for onnxruntime-gpu (one of the "
                           "two, not both)")
    if missing is not None:
        return DependencyError(f"pgexport-runtime needs {missing}: from a pgexport checkout, pip install "
                           "'./runtimes/python[cpu]'")
    if is_out_of_memory(exc) or address_space_limit() is not None:  # under `ulimit -v`, a loader failing is memory
        return out_of_memory("loading the runtime's libraries", exc)
    return DependencyError(f"pgexport-runtime could not load its libraries: {' '.join(str(exc).split())[:300]}")
