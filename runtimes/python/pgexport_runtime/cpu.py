"""What this CPU offers onnxruntime's integer kernels, as far as the runtime can tell without running them."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # /proc/cpuinfo's names of the int8 dot-product instructions
_INT8_TILE_FLAGS = ("amx_int8",)  # and of the int8 matrix units (Intel AMX), which onnxruntime's int8 GEMM uses


@functools.cache
def int8_weights_saturate() -> bool:
    """True unless this CPU is known to multiply uint8 by int8 exactly: an x86 CPU without VNNI (or one whose flags
    cannot be read) sums pairs of such products in int16 in onnxruntime's kernels, and saturates; other
    architectures do not."""
    if platform.machine().lower() not in _X86:
        return False
    flags = _x86_flags()
    return flags is None or not any(f in flags for f in _VNNI_FLAGS)


@functools.cache
def int8_matrix_units() -> bool:
    """True on an x86 CPU whose int8 matrix units (AMX) onnxruntime's int8 GEMM runs on: there an int8 prefill
    is several times faster than the 4-bit products' (docs/benchmarks.md). False elsewhere, or when the flags
    cannot be read."""
    if platform.machine().lower() not in _X86:
        return False
    flags = _x86_flags()
    return flags is not None and any(f in flags for f in _INT8_TILE_FLAGS)


def _x86_flags() -> set[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return set(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":  # Intel Macs: sysctl's leaf-7 feature names (AVX512VNNI)
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.leaf7_features"], capture_output=True, text=True,
                                 timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return {"avx512_vnni"} if "AVX512VNNI" in out.split() else set()
    return None
