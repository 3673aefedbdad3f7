"""Per-channel int8 weights for onnxruntime's dynamic int8 MatMul (MatMulInteger).

A weight W [K, N] becomes int8 codes q [K, N] with, for each output column n, a float32 scale and an int8 zero
point: W[k, n] ~ (q[k, n] - zero_point[n]) * scale[n], asymmetric over [min(W[:, n], 0), max(W[:, n], 0)].
Each column goes through onnxruntime's own `quantize_data`, the function its `quantize_dynamic` applies per
channel, as uint8 (weight_type=QUInt8); codes and zero point are then both moved down by 128, which leaves every
difference q - zero_point, and so every product, as it was.

Why int8 storage of the uint8 quantization: onnxruntime multiplies uint8 activations by int8 weights with the
int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, ARM's dot product), about twice as fast as by uint8
weights, and exactly. x86 CPUs without VNNI sum pairs of such products in int16, which saturates; there the
runtime's session option `session.x64quantprecision` makes onnxruntime turn the weights back into uint8 when
the graph loads, so every CPU computes the same integers (tests/test_int8_weights.py runs both under an
emulated AVX2 CPU). The graph is rewritten here so that one weight at a time is in memory (quantize_dynamic
holds the whole graph about three times over: 5.3 GB for the 3B vision encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PerChannel:
    quantized: np.ndarray  # int8 [K, N]
    scale: np.ndarray  # float32 [N]
    zero_point: np.ndarray  # int8 [N]

    @staticmethod
    def shapes(k: int, n: int) -> dict[str, tuple[int, ...]]:
        return {"quantized": (k, n), "scale": (n,), "zero_point": (n,)}


def per_channel_uint8(w_kn: np.ndarray) -> PerChannel:
    """W [K, N] float32 -> per-output-column asymmetric uint8, as onnxruntime's quantize_dynamic makes it
    (per_channel=True, weight_type=QUInt8, reduce_range=False)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    k, n = w_kn.shape
    columns = np.ascontiguousarray(np.asarray(w_kn, dtype=np.float32).T)
    codes = np.empty((n, k), dtype=np.uint8)
    scale = np.empty(n, dtype=np.float32)
    zero_point = np.empty(n, dtype=np.uint8)
    for j, column in enumerate(columns):
        zero_point[j], scale[j], codes[j] = quantize_data(column, TensorProto.UINT8, False)
    return PerChannel(np.ascontiguousarray(codes.T), scale, zero_point)


def to_int8(codes: np.ndarray) -> np.ndarray:
    """uint8 codes moved down by 128 into int8: 0 -> -128, 128 -> 0, 255 -> 127."""
    return (codes.view(np.uint8) ^ np.uint8(0x80)).view(np.int8)


def per_channel_int8(w_kn: np.ndarray) -> PerChannel:
    """per_channel_uint8's quantization, stored as int8 (codes and zero points minus 128)."""
    u = per_channel_uint8(w_kn)
    return PerChannel(to_int8(u.quantized), u.scale, to_int8(u.zero_point))
