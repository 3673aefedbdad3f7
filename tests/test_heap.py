"""Giving freed heap back to the system (pgexport_runtime/heap.py) after the vision encoder and the prefill."""

from __future__ import annotations

import ctypes
import platform
import sys

import numpy as np
import pytest

from pgexport_runtime import PaliGemma, SessionConfig, heap

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
