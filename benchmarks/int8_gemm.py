"""A copy of a bundle whose decoder multiplies in int8: what the matrix units of a CPU that has them would give.

    python benchmarks/int8_gemm.py SRC DST
    python benchmarks/profile_ops.py DST            # or perf_targets.py SRC DST, pgexport bench SRC DST

onnxruntime's 4-bit MatMulNBits computes int8 dot products on VNNI; only its int8 GEMM (MatMulInteger,
MatMulIntegerToFloat, DynamicQuantizeMatMul) runs on Intel's AMX tiles, at several times the rate on the
decoder's prefill shapes (`ort_kernels.py`). Here each decoder MatMulNBits becomes that GEMM: its weight, as the
kernel sees it (pgexport.nbits.dequantize), requantized to int8 per output column (symmetric, scale
max|W[:, n]| / 127), and its input quantized to int8 per row (symmetric, scale max|x[row, :]| / 127, one
QuantizeLinear), once for the products that read the same input (q, k and v; gate and up). Per row, not per
tensor: one outlier token would otherwise set the step of every other (onnxruntime's DynamicQuantizeMatMul
quantizes the whole tensor at once).

The lm_head (a MatMulNBits whose output is the graph's) and any weight a second node reads (a table tied to the
embedding) stay as they are: the head runs on the rows `logits_index` picks, and a copy of a shared table would
only add memory. So do the products of a float16 bundle: these nodes compute in float32.

The copy computes differently (int8 weights from the 4-bit ones, per-row rather than per-block activation steps):
its answers are compared with the source's, not assumed equal. It is twice the source's decoder on disk and in
memory: what it measures is the speed, before any bundle layout is chosen for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pgexport.build.writer import derive_bundle
from pgexport.nbits import Packed, dequantize


def per_column_int8(w_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] float32 -> (int8 codes [K, N], float32 scales [N]), symmetric per output column."""
    scale = np.maximum(np.abs(w_kn).max(axis=0), np.finfo(np.float32).tiny) / 127.0
    codes = np.clip(np.rint(w_kn / scale), -127, 127).astype(np.int8)
    return codes, scale.astype(np.float32)


def quantize_rows(x: str, p: str) -> list[onnx.NodeProto]:
    """x [..., K] float32 -> P+"rows" uint8 [R, K] (int8 steps + 128, symmetric per row: scale max|row| / 127),
    P+"row_scale" [R, 1], P+"lead" (x's shape but the last axis). Needs shared_constants() in the graph."""
    return [
        helper.make_node("Shape", [x], [p + "lead"], end=-1),
        helper.make_node("Shape", [x], [p + "k"], start=-1),
        helper.make_node("Concat", ["int8_gemm/minus_one", p + "k"], [p + "rows_shape"], axis=0),
        helper.make_node("Reshape", [x, p + "rows_shape"], [p + "x_rows"]),  # [R, K]: a view
        helper.make_node("ReduceMax", [p + "x_rows", "int8_gemm/last_axis"], [p + "max"], keepdims=0),
        helper.make_node("ReduceMin", [p + "x_rows", "int8_gemm/last_axis"], [p + "min"], keepdims=0),
        helper.make_node("Neg", [p + "min"], [p + "neg_min"]),
        helper.make_node("Max", [p + "max", p + "neg_min", "int8_gemm/tiny"], [p + "amax"]),  # tiny: a zero row
        helper.make_node("Div", [p + "amax", "int8_gemm/127"], [p + "scale"]),  # [R]
        helper.make_node("Mul", [p + "scale", "int8_gemm/zero"], [p + "zeros"]),
        helper.make_node("Add", [p + "zeros", "int8_gemm/128"], [p + "zero_float"]),
        helper.make_node("Cast", [p + "zero_float"], [p + "zero_point"], to=TensorProto.UINT8),  # 128 per row
        helper.make_node("QuantizeLinear", [p + "x_rows", p + "scale", p + "zero_point"], [p + "rows"], axis=0),
        helper.make_node("Unsqueeze", [p + "scale", "int8_gemm/last_axis"], [p + "row_scale"]),  # [R, 1]
    ]


def gemm_nodes(q: str, codes: str, scale: str, n: int, y: str, p: str) -> list[onnx.NodeProto]:
    """y [..., N] = the rows quantize_rows(x, q) made, times W ~ codes [K, N] * scale [N]. The rows enter the
    GEMM as uint8 with a zero point of 128, the same integers as int8: onnxruntime runs uint8 x int8 on its
    fastest kernels (AMX, VNNI) and int8 x int8 on a slower one."""
    return [
        helper.make_node("MatMulIntegerToFloat", [q + "rows", codes, "int8_gemm/one", scale, "int8_gemm/zero_128"],
                         [p + "y_columns"], domain="com.microsoft"),  # the column scales applied in the GEMM
        helper.make_node("Mul", [p + "y_columns", q + "row_scale"], [p + "y_rows"]),
        helper.make_node("Concat", [q + "lead", f"int8_gemm/width_{n}"], [p + "y_shape"], axis=0),
        helper.make_node("Reshape", [p + "y_rows", p + "y_shape"], [y]),
    ]


def shared_constants(widths=()) -> list[onnx.TensorProto]:
    """The constants quantize_rows and gemm_nodes read; one [N] shape constant per output width."""
    const = numpy_helper.from_array
    return [const(np.array([-1], np.int64), "int8_gemm/last_axis"),
            const(np.array([-1], np.int64), "int8_gemm/minus_one"),
            const(np.array(np.finfo(np.float32).tiny, np.float32), "int8_gemm/tiny"),
            const(np.array(127.0, np.float32), "int8_gemm/127"),
            const(np.array(128.0, np.float32), "int8_gemm/128"),
            const(np.array(0.0, np.float32), "int8_gemm/zero"),
            const(np.array(128, np.uint8), "int8_gemm/zero_128"),
            const(np.array(1.0, np.float32), "int8_gemm/one"),
            *(const(np.array([n], np.int64), f"int8_gemm/width_{n}") for n in sorted(set(widths)))]


def to_int8(model: onnx.ModelProto, read) -> int:
    """Rewrite every eligible MatMulNBits of `model` (read(name) -> an initializer's array) as gemm_nodes over
    its input's quantize_rows; the new weights are added as initializers. -> nodes rewritten."""
    graph = model.graph
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    nodes, dropped, count = [], set(), 0
    quantized: dict[str, str] = {}  # input -> the prefix of its quantized rows
    widths: list[int] = []
    for n in graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        extra = [i for i in n.input[4:] if i]  # g_idx, bias: not in the bundles this measures
        if n.op_type != "MatMulNBits" or n.output[0] in outputs or readers[n.input[1]] > 1 or extra:
            nodes.append(n)
            continue
        k, n_out, bits, block = a["K"], a["N"], a["bits"], a["block_size"]
        scales = read(n.input[2])
        if scales.dtype != np.float32:  # float16 activations: the int8 nodes here compute in float32
            nodes.append(n)
            continue
        zero = read(n.input[3]).reshape(n_out, -1) if len(n.input) > 3 and n.input[3] else None
        packed = Packed(read(n.input[1]), scales.reshape(n_out, -1), zero, bits, block, k, n_out)
        codes, scale = per_column_int8(dequantize(packed))
        p = f"int8_gemm/{count}/"
        graph.initializer.extend([numpy_helper.from_array(codes, p + "codes"),
                                  numpy_helper.from_array(scale, p + "scale")])
        if n.input[0] not in quantized:  # q, k and v (gate and up) read one input: quantized once
            quantized[n.input[0]] = f"int8_gemm/x{len(quantized)}/"
            nodes += quantize_rows(n.input[0], quantized[n.input[0]])
        nodes += gemm_nodes(quantized[n.input[0]], p + "codes", p + "scale", n_out, n.output[0], p)
        widths.append(n_out)
        dropped.update(i for i in n.input[1:4] if i)
        count += 1
    graph.initializer.extend(shared_constants(widths))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return count


def derive(src: Path, dst: Path) -> int:
    """DST: the bundle SRC with its decoder's 4-bit products as per-row int8 GEMMs (DST replaced if it exists);
    -> the products rewritten."""

    def write(writer, manifest: dict) -> dict:
        name = manifest["graphs"]["decoder"]["file"]
        model = onnx.load(str(src / name))  # with its weights: every initializer is written anew
        tensors = {t.name: t for t in model.graph.initializer}
        count = to_int8(model, lambda tensor_name: numpy_helper.to_array(tensors[tensor_name]))
        onnx.save(model, str(writer.path(name)), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=name + ".data", size_threshold=1024)
        return {"int8_gemm": {"products": count}}

    return derive_bundle(src, dst, write, force=True)["int8_gemm"]["products"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    n = derive(args.src, args.dst)
    print(f"wrote {args.dst}: {n} decoder products in int8")


if __name__ == "__main__":
    main()
