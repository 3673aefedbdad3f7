"""Giving freed heap back to the system after the stages whose buffers are large and short-lived.

onnxruntime frees the vision encoder's and the prefill's activations when a call returns, but glibc's
allocator keeps much of that memory: blocks over its mmap threshold go back at once only until the first such
free, after which glibc raises the threshold and later large blocks come from the heap, where freed space
stays resident. The next generation's buffers do not always fit the holes it leaves, so RSS grows from one
generation to the next. `malloc_trim(0)` returns the free pages of every arena to the system (their address
space stays, and pages fault back in, zeroed, when used again).

Trimming can only happen between onnxruntime's calls, and loading a graph is one call: its weights pass through
buffers of a few MB that it frees once they are packed, between packed weights that stay, and those holes were
the load's peak. A fixed mmap threshold (`mallopt(M_MMAP_THRESHOLD)`, which also stops glibc from raising it)
gives every block of that size or more its own mapping, unmapped the moment it is freed, so such holes never form.
Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import sys


M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MAX_MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems (HEAP_MAX_SIZE / 2)


def _glibc(name: str, argtypes: list):
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)  # the process's own C library: glibc has both, musl neither
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_TRIM = _glibc("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _glibc("mallopt", [ctypes.c_int, ctypes.c_int]) if _TRIM is not None else None


def available() -> bool:
    return _TRIM is not None


def release() -> bool:
    """Give the allocator's free pages back to the system. True if any were."""
    return bool(_TRIM(0)) if _TRIM is not None else False


def map_blocks_from(size: int) -> bool:
    """From now on, for the whole process, blocks of SIZE bytes or more get a mapping of their own, returned to the
    system when freed (1 <= SIZE <= MAX_MMAP_THRESHOLD). True if glibc took it."""
    if not 1 <= size <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap threshold {size} is out of range (1 to {MAX_MMAP_THRESHOLD} bytes)")
    return bool(_MALLOPT(M_MMAP_THRESHOLD, size)) if _MALLOPT is not None else False
