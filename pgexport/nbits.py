"""Block-wise weight quantization in MatMulNBits' layout.

A weight W [K, N] (K = input features, N = outputs) becomes, for each output column n and each block of
`block_size` consecutive k, `bits`-bit integers q and one float scale: W[k, n] ~ (q - zero) * scale.
Packed layout (onnxruntime MatMulNBits): data uint8 [N, k_blocks, block_size * bits / 8], low nibble
first for 4 bits; scales float32 [N, k_blocks]; symmetric quantization has no zero-point tensor and the
kernel uses zero = 8 (4 bits) or 128 (8 bits). K is zero-padded up to a whole number of blocks.

Round-to-nearest packing uses onnxruntime's own C++ quantizer so that what we write is exactly what
its kernels expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits


@dataclass(frozen=True)
class Layout:
    """The shapes of one packed weight W [K, N], known before it is packed."""

    bits: int
    block_size: int
    k: int
    n: int
    symmetric: bool

    @property
    def k_blocks(self) -> int:
        return -(-self.k // self.block_size)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Packed field -> shape (uint8 data and zero points, float32 scales)."""
        shapes = {"data": (self.n, self.k_blocks, self.block_size * self.bits // 8), "scales": (self.n, self.k_blocks)}
        if not self.symmetric:
            shapes["zero_points"] = (self.n, -(-self.k_blocks * self.bits // 8))
        return shapes


@dataclass
class Packed:
    data: np.ndarray  # uint8 [N, k_blocks, blob]
    scales: np.ndarray  # float32 [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks * bits / 8)] or None (symmetric)
    bits: int
    block_size: int
    k: int
    n: int
    input_perm: np.ndarray | None = None  # GPTQ act-order import: MatMulNBits reads x[..., input_perm]

    @property
    def k_blocks(self) -> int:
        return self.scales.shape[1]

    @property
    def layout(self) -> Layout:
        return Layout(self.bits, self.block_size, self.k, self.n, self.zero_points is None)

    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def pack_rtn(w_kn: np.ndarray, bits: int, block_size: int, symmetric: bool = True) -> Packed:
    """Round-to-nearest block quantization of W [K, N] (float32) with onnxruntime's quantizer."""
    k, n = w_kn.shape
    k_blocks = -(-k // block_size)
    w = np.ascontiguousarray(w_kn, dtype=np.float32)
    if k_blocks * block_size != k:
        w = np.pad(w, ((0, k_blocks * block_size - k), (0, 0)))
    data = np.zeros((n, k_blocks, block_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, -(-k_blocks * bits // 8)), dtype=np.uint8)
    fn = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    fn(data, w, scales, zero_points, block_size, n, k_blocks * block_size, symmetric)
    return Packed(data, scales, None if symmetric else zero_points, bits, block_size, k, n)


def pack_rtn_rows(read: Callable[[int, int], np.ndarray], n: int, k: int, bits: int, block_size: int,
                  symmetric: bool = True, rows: int = 16384) -> Packed:
    """pack_rtn of a weight given transposed, [N, K] (an embedding table [vocab, hidden]), `rows` rows at a
    time: read(a, b) -> float32 rows a..b. Each output column is quantized on its own, so the result is
    pack_rtn(table.T) without a float32 copy of the whole table (2.1 GB at PaliGemma-3B, 3.7 GB at 10B): a
    streamed build reads each slice from the checkpoint as stored."""
    parts = []
    for a in range(0, n, rows):
        block = read(a, min(a + rows, n))
        if block.shape != (min(rows, n - a), k):
            raise ValueError(f"rows {a}..{a + rows}: read {block.shape}, expected ({min(rows, n - a)}, {k})")
        parts.append(pack_rtn(block.T, bits, block_size, symmetric))
    zp = None if symmetric else np.concatenate([q.zero_points for q in parts])
    return Packed(np.concatenate([q.data for q in parts]), np.concatenate([q.scales for q in parts]), zp, bits,
                  block_size, k, n)


def unpack_ints(packed: Packed) -> np.ndarray:
    """The integer codes as uint8 [N, k_blocks, block_size]."""
    if packed.bits == 8:
        return packed.data.copy()
    lo, hi = packed.data & 0x0F, packed.data >> 4
    return np.stack([lo, hi], axis=-1).reshape(packed.n, packed.k_blocks, packed.block_size)


def zero_point_values(packed: Packed) -> np.ndarray:
    """Zero points as float [N, k_blocks] (the kernel's implicit 8 / 128 when symmetric)."""
    if packed.zero_points is None:
        return np.full(packed.scales.shape, 2 ** (packed.bits - 1), dtype=np.float32)
    if packed.bits == 8:
        return packed.zero_points[:, : packed.k_blocks].astype(np.float32)
    lo, hi = packed.zero_points & 0x0F, packed.zero_points >> 4
    return np.stack([lo, hi], axis=-1).reshape(packed.n, -1)[:, : packed.k_blocks].astype(np.float32)


def dequantize(packed: Packed) -> np.ndarray:
    """W [K, N] float32 as the kernel sees it."""
    q = unpack_ints(packed).astype(np.float32)
    w = (q - zero_point_values(packed)[..., None]) * packed.scales[..., None]  # [N, k_blocks, block]
    return np.ascontiguousarray(w.reshape(packed.n, -1)[:, : packed.k].T)


def pack_codes(codes: np.ndarray, scales: np.ndarray, zero: np.ndarray | None, bits: int, block_size: int,
               k: int) -> Packed:
    """Pack integer codes uint8 [N, k_blocks, block_size] chosen elsewhere (GPTQ, checkpoint import)."""
    n, k_blocks, bs = codes.shape
    if bs != block_size:
        raise ValueError("codes must be [N, k_blocks, block_size]")
    if bits == 4:
        data = (codes[..., 0::2] & 0x0F) | ((codes[..., 1::2] & 0x0F) << 4)
    else:
        data = codes
    zp = None
    if zero is not None:
        z = zero.astype(np.uint8)
        if bits == 4:
            if z.shape[1] % 2:
                z = np.pad(z, ((0, 0), (0, 1)))
            zp = (z[:, 0::2] & 0x0F) | ((z[:, 1::2] & 0x0F) << 4)
        else:
            zp = z
    return Packed(np.ascontiguousarray(data, dtype=np.uint8), np.ascontiguousarray(scales, dtype=np.float32),
                  zp, bits, block_size, k, n)
