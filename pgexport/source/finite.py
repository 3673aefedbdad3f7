"""NaN and infinity in the weights a build reads, found before the slow steps and named with their file.

A non-finite weight makes every graph's output NaN; the build would only notice at the parity check, minutes
later, as "differs from PyTorch: max |diff| nan" without saying which file is at fault. Here each float tensor
of a safetensors file is read straight from the file (memory-mapped, a chunk at a time: memory stays flat
whatever the model's size) and its exponent bits are tested: all ones is NaN or infinity in every IEEE
format. No torch, no dtype conversion: bf16 and fp8 are tested as they are stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgexport_runtime.errors import UserError

from pgexport.source import checkpoint

# safetensors dtype -> (the unsigned integer of its width, its exponent bits): a value is NaN or infinite
# exactly when all of them are set (float8 e4m3 has no infinity; its NaN is the all-ones exponent and mantissa)
_EXPONENT = {"F64": (np.uint64, 0x7FF0000000000000), "F32": (np.uint32, 0x7F800000), "F16": (np.uint16, 0x7C00),
             "BF16": (np.uint16, 0x7F80), "F8_E5M2": (np.uint8, 0x7C), "F8_E4M3": (np.uint8, 0x7F)}
CHUNK_BYTES = 64 << 20


def check_file(path: Path, what: str) -> None:
    """Refuse (one line naming `what`, the file and the tensor) a safetensors file with a NaN or infinite value."""
    path = Path(path)
    tensors = checkpoint.tensor_index(path)  # offsets checked against the file's size
    for name, (dtype, _shape, begin, end) in tensors.items():
        if dtype not in _EXPONENT or end == begin:
            continue
        kind, mask = _EXPONENT[dtype]
        width = np.dtype(kind).itemsize
        data = np.memmap(path, dtype=kind, mode="r", offset=begin, shape=((end - begin) // width,))
        step = CHUNK_BYTES // width
        for start in range(0, len(data), step):
            chunk = data[start:start + step]
            if np.any((chunk & kind(mask)) == kind(mask)):
                raise UserError(f"{what}: {path.name} holds NaN or infinite values (tensor {name!r}); a model "
                                "with them answers nothing but NaN")
        del data


def check_source(source) -> None:
    """Every weight file a build of `source` reads: the checkpoint's (not a preset's, whose weights are
    generated) and the adapter's."""
    if source.kind != "preset":
        for path in checkpoint.check_directory(source.directory).weights:
            check_file(path, f"--model {source.spec}")
    if source.adapter is not None:
        from pgexport.source.adapters import WEIGHTS_FILE

        check_file(source.adapter.directory / WEIGHTS_FILE, f"--adapter {source.adapter.directory}")
