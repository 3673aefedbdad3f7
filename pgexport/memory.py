"""Giving freed memory back to the OS between build steps.

glibc's malloc serves allocations under its mmap threshold from the heap, and raises that threshold (up to
32 MB) after the first large free; so the tensors of a step (a vision tower read for one forward pass, a
layer's packed weights) often come from the heap, and once freed they stay in the process's resident set,
counted in every later step's peak. `malloc_trim` returns the free heap pages.
"""

from __future__ import annotations

import ctypes
import sys


def trim() -> None:
    """Return free heap memory to the OS (glibc only; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return
