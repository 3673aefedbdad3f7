"""Packed weights kept in a directory as they are made, read back one at a time when the graph is written.

A streamed build runs GPTQ before it exports the decoder; the packed 4-bit weights of a 10B decoder are
about 5 GB, which the build cannot hold until the export asks for them. Each weight is written as an .npz of its
arrays; its layout (shapes) stays in memory, so the graph can be rewritten before any array is read back.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgexport.nbits import Layout, Packed


@dataclass(frozen=True)
class StoredPacked:
    """A packed weight on disk: its layout now, its arrays when loaded."""

    path: Path
    layout: Layout
    input_perm: None = None  # what GPTQ computes here is a plain block layout (no act-order permutation)

    def load(self) -> Packed:
        lay = self.layout
        with np.load(self.path, allow_pickle=False) as z:
            return Packed(z["data"], z["scales"], z["zero_points"] if "zero_points" in z.files else None,
                          lay.bits, lay.block_size, lay.k, lay.n)


class PackedFiles(MutableMapping):
    """module name -> StoredPacked, each weight written to `directory` when assigned."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, StoredPacked] = {}

    def __setitem__(self, name: str, packed: Packed) -> None:
        if packed.input_perm is not None:
            raise ValueError(f"{name}: a permuted packed weight is not stored on disk")
        path = self.directory / f"{len(self._entries)}.npz"
        arrays = {"data": packed.data, "scales": packed.scales}
        if packed.zero_points is not None:
            arrays["zero_points"] = packed.zero_points
        np.savez(path, **arrays)
        self._entries[name] = StoredPacked(path, packed.layout)

    def __getitem__(self, name: str) -> StoredPacked:
        return self._entries[name]

    def __delitem__(self, name: str) -> None:
        self._entries.pop(name).path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
