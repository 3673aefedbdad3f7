"""pgexport-runtime: run pgexport PaliGemma bundles with onnxruntime and numpy only (no torch)."""

try:
    import onnxruntime  # noqa: F401  (provided by the [cpu] or the [gpu] extra, never both)
except ImportError:  # pragma: no cover - depends on how the package was installed
    raise ImportError("pgexport-runtime needs onnxruntime: pip install 'pgexport-runtime[cpu]', or "
                      "'pgexport-runtime[gpu]' for onnxruntime-gpu (one of the two, not both)") from None

from .errors import BundleError, LimitError, UserError
from .geometry import Geometry
from .manifest import load_manifest
from .pipeline import PaliGemma, Result
from .sampling import Sampling
from .session import SessionConfig
from .structured import Answer, Detection, Segment

__all__ = ["PaliGemma", "Result", "Answer", "Detection", "Segment", "Sampling", "SessionConfig", "Geometry",
           "load_manifest", "BundleError", "LimitError", "UserError"]
__version__ = "0.1.0"
