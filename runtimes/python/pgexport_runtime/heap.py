"""Giving freed heap back to the system after the stages whose buffers are large and short-lived.

onnxruntime frees the vision encoder's and the prefill's activations when a call returns, but glibc's
allocator keeps much of that memory: blocks over its mmap threshold go back at once only until the first such
free, after which glibc raises the threshold and later large blocks come from the heap, where freed space
stays resident. The next generation's buffers do not always fit the holes it leaves, so RSS grows from one
generation to the next. `malloc_trim(0)` returns the free pages of every arena to the system (their address
space stays, and pages fault back in, zeroed, when used again). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library: glibc has it, musl does not
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def available() -> bool:
    return _TRIM is not None


def release() -> bool:
    """Give the allocator's free pages back to the system. True if any were."""
    return bool(_TRIM(0)) if _TRIM is not None else False
