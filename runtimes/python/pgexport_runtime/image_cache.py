"""The image-feature cache: the vision encoder and projector run once per distinct image.

Keyed by the sha256 of the preprocessed pixel values (so the same picture given as a path, a PIL image or an
array is one entry, and two files that preprocess identically share it), holding the projector's output for
one image, [num_image_tokens, text_hidden] float32. Bounded by bytes, least recently used out first: one
entry is 2 MB for a 3B model at 224 and 32 MB at 896. Thread-safe: a PaliGemma may serve several threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

DEFAULT_MAX_BYTES = 64 << 20


class ImageCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # images served from the cache / encoded

    def embeddings(self, pixels: np.ndarray, encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """pixel_values [B, 3, H, W] -> image embeddings [B, N, D]: cached rows reused, the distinct others
        encoded in one call of `encode` (none when every row is cached)."""
        keys = [_key(p) for p in pixels]
        with self._lock:
            found = {k: self._get(k) for k in dict.fromkeys(keys)}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            first = {k: keys.index(k) for k in missing}
            fresh = encode(np.ascontiguousarray(pixels[[first[k] for k in missing]]))
            with self._lock:
                for k, row in zip(missing, fresh):
                    found[k] = self._put(k, row)
        with self._lock:
            self.misses += len(missing)
            self.hits += len(keys) - len(missing)
        return np.stack([found[k] for k in keys])

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _get(self, key: bytes) -> np.ndarray | None:
        row = self._entries.get(key)
        if row is not None:
            self._entries.move_to_end(key)
        return row

    def _put(self, key: bytes, row: np.ndarray) -> np.ndarray:
        row = np.array(row, dtype=np.float32)  # a copy: the caller's batch is not kept alive
        row.setflags(write=False)
        if row.nbytes > self.max_bytes:
            return row
        if key not in self._entries:
            self._entries[key] = row
            self._bytes += row.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
        return row


def _key(pixels: np.ndarray) -> bytes:
    p = np.ascontiguousarray(pixels, dtype=np.float32)
    return hashlib.sha256(str(p.shape).encode() + p.tobytes()).digest()
