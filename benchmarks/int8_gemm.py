"""A copy of a bundle whose decoder multiplies in int8: what the matrix units of a CPU that has them would give.

    python benchmarks/int8_gemm.py SRC DST
    python benchmarks/profile_ops.py DST            # or perf_targets.py SRC DST, pgexport bench SRC DST

onnxruntime's 4-bit MatMulNBits computes int8 dot products on VNNI; only its int8 GEMM (MatMulInteger,
MatMulIntegerToFloat, DynamicQuantizeMatMul) runs on Intel's AMX tiles, at several times the rate on the
decoder's prefill shapes (`ort_kernels.py`). Here each decoder MatMulNBits becomes that GEMM as the `int8-rows`
recipe writes it (pgexport/quant/rewrite.py): its weight, as the 4-bit kernel sees it
(pgexport.nbits.dequantize), requantized to int8 per output column, its input quantized to int8 per row. What
the recipe builds from the float weights, this builds from a 4-bit bundle's: the speed of the same GEMMs,
without a build.

The lm_head (a MatMulNBits whose output is the graph's) and any weight a second node reads (a table tied to the
embedding) stay as they are: the head runs on the rows `logits_index` picks, and a copy of a shared table would
only add memory. So do the products of a float16 bundle: these nodes compute in float32.

The copy computes differently (int8 weights from the 4-bit ones, per-row rather than per-block activation steps):
its answers are compared with the source's, not assumed equal. Its decoder is twice the source's on disk and in
memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx_ir as ir

from pgexport.build.writer import derive_bundle
from pgexport.nbits import Packed, dequantize
from pgexport.quant.recipes import RECIPES
from pgexport.quant.rewrite import GraphReport, rewrite_linears, save_graph


def _dequantized(node: ir.Node):
    """A function returning W [K, N] float32 of a MatMulNBits node as its kernel sees it; it holds the node's
    weight values, which the rewrite detaches from the graph before the graph is written."""
    k, n = node.attributes["K"].as_int(), node.attributes["N"].as_int()
    bits, block = node.attributes["bits"].as_int(), node.attributes["block_size"].as_int()
    data, scales = node.inputs[1].const_value, node.inputs[2].const_value
    zero = node.inputs[3].const_value if len(node.inputs) > 3 and node.inputs[3] is not None else None

    def read() -> ir.TensorProtocol:
        packed = Packed(data.numpy(), scales.numpy().reshape(n, -1),
                        None if zero is None else zero.numpy().reshape(n, -1), bits, block, k, n)
        return ir.tensor(dequantize(packed))

    return read


def to_int8(graph: ir.Graph) -> int:
    """Each eligible MatMulNBits of `graph` -> MatMul on its weight in float32 (computed as the graph is written),
    then the int8-rows recipe's rewrite of those MatMuls. -> products rewritten."""
    outputs = set(graph.outputs)
    count = 0
    for node in list(graph):
        if node.op_type != "MatMulNBits" or node.outputs[0] in outputs:
            continue
        weight_in, scales = node.inputs[1], node.inputs[2]
        if len(weight_in.uses()) > 1 or any(v is not None for v in node.inputs[4:]) \
                or scales.const_value.dtype != ir.DataType.FLOAT:  # shared, g_idx or bias, float16
            continue
        k, n = node.attributes["K"].as_int(), node.attributes["N"].as_int()
        weight = ir.Value(name=f"{weight_in.name}.float", const_value=ir.LazyTensor(
            _dequantized(node), ir.DataType.FLOAT, ir.Shape([k, n])))
        weight.const_value.name = weight.name
        graph.register_initializer(weight)
        matmul = ir.node("MatMul", [node.inputs[0], weight], name=f"{node.name}_float",
                         metadata_props=dict(node.metadata_props))
        graph.insert_before(node, matmul)
        node.outputs[0].replace_all_uses_with(matmul.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    report = GraphReport()
    rewrite_linears(graph, "decoder_linear", RECIPES["int8-rows"], report)
    if sorted(report.weights.values()) != ["int8-rows"] * count:
        raise AssertionError(f"expected {count} int8-rows products, rewrote {report.weights}")
    return count


def derive(src: Path, dst: Path) -> int:
    """DST: the bundle SRC with its decoder's 4-bit products as per-row int8 GEMMs (DST replaced if it exists);
    -> the products rewritten."""

    def write(writer, manifest: dict) -> dict:
        name = manifest["graphs"]["decoder"]["file"]
        model = ir.load(src / name)
        count = to_int8(model.graph)
        save_graph(model, writer.path(name))
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
