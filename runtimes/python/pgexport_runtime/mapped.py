"""Hand back the resident pages of weight files that onnxruntime has memory-mapped and no longer reads.

With external data, onnxruntime maps every initializer from the .data file (a private copy-on-write
mapping per tensor). Prepacking then copies the MatMul weights into its own buffers, but the mapped
originals stay resident: at PaliGemma-3B int4 about 330 MB of the decoder file, counted in the process's
RSS although nothing reads those pages again. madvise(MADV_DONTNEED) drops them from this process; a
page that is read later (an embedding row in a Gather) faults back in from the page cache, unchanged.

A mapping is only released when it holds no private (copy-on-write) page, i.e. when every resident page
is an unmodified page of the file, so that nothing can be lost. Linux only; elsewhere it does nothing.

While a graph loads, onnxruntime maps and unmaps initializers itself, so an address read from smaps may be
reused before the madvise: there `released_while` uses MADV_PAGEOUT, which reclaims clean file pages and
never discards data (an anonymous page would be swapped out, or left where there is no swap). The lm_head's
prepacking reads the whole shared table last, and its pages would otherwise stay resident until the load
returns, on top of every packed weight: 0.55 GB at PaliGemma 2 10B int4.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MADV_DONTNEED = 4
MADV_PAGEOUT = 21  # Linux 5.4+; older kernels answer EINVAL and nothing happens
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def _mappings() -> list[dict]:
    """/proc/self/smaps: one dict per mapping with start, end, perms, path, rss and anonymous bytes."""
    out, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                cur = {"start": int(m[1], 16), "end": int(m[2], 16), "perms": m[3], "path": m[4].strip(),
                       "rss": 0, "anonymous": 0}
                out.append(cur)
            elif cur is not None and line.startswith(("Rss:", "Anonymous:")):
                key, value = line.split(":", 1)
                cur[key.lower()] = int(value.split()[0]) * 1024
    return out


def release_mapped_pages(files: Iterable[str | Path], advice: int = MADV_DONTNEED) -> int:
    """Drop this process's resident, unmodified pages of `files`' mappings. Returns the bytes released."""
    wanted = {os.path.realpath(p) for p in files}
    if not wanted or not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        maps = _mappings()
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    released = 0
    for m in maps:
        if m["path"] not in wanted or m["rss"] == 0 or m["anonymous"] != 0:
            continue  # not ours, nothing resident, or holds written (copy-on-write) pages: leave it alone
        if madvise(m["start"], m["end"] - m["start"], advice) == 0:
            released += m["rss"]
    return released


@contextmanager
def released_while(files: Iterable[str | Path], period: float = 0.05) -> Iterator[None]:
    """Reclaim `files`' clean resident pages every `period` seconds while the block runs (MADV_PAGEOUT: safe
    while other code maps and unmaps), then drop what is left once it returns (MADV_DONTNEED). Measured on
    the 10B geometry's shared 4-bit table alone (549 MB): load peak 1494 MB released after, 1428 MB every
    0.2 s, 977 MB every 0.05 s."""
    files = list(files)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            release_mapped_pages(files, MADV_PAGEOUT)

    worker = threading.Thread(target=loop, name="pgexport-release-mapped", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        release_mapped_pages(files)
