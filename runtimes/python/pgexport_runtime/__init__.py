"""pgexport-runtime: run pgexport PaliGemma bundles with onnxruntime and numpy only (no torch)."""

try:
    import onnxruntime  # noqa: F401  (provided by the [cpu] or the [gpu] extra, never both)
except ImportError:  # pragma: no cover - depends on how the package was installed
    raise ImportError("pgexport-runtime needs onnxruntime: from a pgexport checkout, pip install "
                      "'./runtimes/python[cpu]', or './runtimes/python[gpu]' for onnxruntime-gpu (one of the two, "
                      "not both)") from None

from pgexport_runtime.errors import BundleError, LimitError, UserError
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.manifest import load_manifest
from pgexport_runtime.pipeline import PaliGemma, Result
from pgexport_runtime.sampling import Sampling
from pgexport_runtime.session import SessionConfig
from pgexport_runtime.typed_answers import Answer, Detection, Segment

__all__ = ["PaliGemma", "Result", "Answer", "Detection", "Segment", "Sampling", "SessionConfig", "Geometry",
           "load_manifest", "BundleError", "LimitError", "UserError"]
__version__ = "0.1.0"
