"""Giving freed heap back to the system (pgexport_runtime/heap.py): trimming after the vision encoder and the prefill, and
the fixed mmap threshold set before a bundle loads."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from pgexport_runtime import PaliGemma, SessionConfig, heap
from pgexport_runtime.errors import LimitError

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_returns_the_free_pages_inside_the_heap():
    """Holes left between live blocks stay resident until the heap is trimmed; the live blocks keep their bytes."""
    assert heap.available()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 1024  # under glibc's mmap threshold: from the heap
    blocks = [libc.malloc(size) for _ in range(count)]
    try:
        for i, b in enumerate(blocks):
            ctypes.memset(b, i % 251 + 1, size)  # resident
        for b in blocks[::2]:
            libc.free(b)  # holes between live blocks: nothing for glibc to trim at the heap's top
        held = _rss_bytes()
        assert heap.release()
        freed = held - _rss_bytes()
        assert freed > size * count // 4, f"only {freed} bytes of {size * count // 2} freed went back"
        for i, b in list(enumerate(blocks))[1::2]:
            assert ctypes.string_at(b + size - 1, 1)[0] == i % 251 + 1
    finally:
        for b in blocks[1::2]:
            libc.free(b)


@pytest.mark.parametrize("trim", [True, False])
def test_generate_trims_after_the_vision_encoder_and_the_prefill(bundles, images, monkeypatch, trim):
    calls = []
    monkeypatch.setattr(heap, "release", lambda: calls.append(1) or True)
    pg = PaliGemma(bundles["tiny-pg1"], SessionConfig(trim_heap=trim))
    answers = pg.generate([images[0], images[1]], ["caption en", "ocr"], max_new_tokens=4)
    assert len(calls) == (2 if trim else 0)  # once after encoding the images, once after the prefill
    untrimmed = PaliGemma(bundles["tiny-pg1"], SessionConfig(trim_heap=False))
    assert answers == untrimmed.generate([images[0], images[1]], ["caption en", "ocr"], max_new_tokens=4)
    assert np.array_equal(pg.image_embeddings([images[0]]), untrimmed.image_embeddings([images[0]]))


_HOLES = """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
{setup}
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
libc.free(libc.malloc(4 << 20))  # glibc's own threshold rises past a freed mapped block: 2 MiB blocks then come from the heap
blocks = []
for i in range(64):
    blocks.append(libc.malloc(2 << 20))
    ctypes.memset(blocks[-1], 1, 2 << 20)
held = rss()
for b in blocks[::2]:  # every other one: each hole lies between live blocks, the last one allocated stays live
    libc.free(b)
print(held - rss())
"""


def _freed_at_once(setup: str) -> int:
    """Bytes of 64 MiB of freed 2 MiB blocks, each between live 2 MiB blocks, that leave RSS without a trim, in a
    fresh process (the threshold is process-wide) after SETUP."""
    out = subprocess.run([sys.executable, "-c", _HOLES.format(setup=setup)], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_fixed_mmap_threshold_returns_freed_blocks_at_once():
    assert _freed_at_once("") < (64 << 20) // 4  # glibc's own threshold: the holes stay resident
    assert _freed_at_once("from pgexport_runtime import heap; assert heap.map_blocks_from(1 << 20)") > (48 << 20)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("threshold", [None, 0])
def test_loading_a_bundle_sets_the_threshold_it_is_configured_with(bundles, threshold):
    config = "SessionConfig()" if threshold is None else f"SessionConfig(mmap_threshold={threshold})"
    freed = _freed_at_once(f"from pgexport_runtime import PaliGemma, SessionConfig\n"
                           f"PaliGemma({str(bundles['tiny-pg1'])!r}, {config})")
    if threshold is None:  # the default, 1 MiB
        assert freed > (48 << 20)
    else:
        assert freed < (64 << 20) // 4


def test_the_threshold_is_checked_before_anything_loads():
    for bad in (100, 64 << 20, -1, 1.5, True, "1M"):
        with pytest.raises(LimitError, match="mmap_threshold"):
            SessionConfig(mmap_threshold=bad)
    assert SessionConfig(mmap_threshold=0).mmap_threshold == 0
