"""Per-channel uint8 weights for onnxruntime's dynamic int8 MatMul (MatMulInteger).

A weight W [K, N] becomes uint8 codes q [K, N] with, for each output column n, a float32 scale and a uint8
zero point: W[k, n] ~ (q[k, n] - zero_point[n]) * scale[n], asymmetric over [min(W[:, n], 0), max(W[:, n], 0)].
Each column goes through onnxruntime's own `quantize_data`, the function its `quantize_dynamic` applies per
channel, so the codes are exactly that tool's (tests compare the two graphs tensor by tensor); the graph is
rewritten here so that one weight at a time is in memory (quantize_dynamic holds the whole graph about three
times over: 5.3 GB for the 3B vision encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PerChannel:
    quantized: np.ndarray  # uint8 [K, N]
    scale: np.ndarray  # float32 [N]
    zero_point: np.ndarray  # uint8 [N]

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
