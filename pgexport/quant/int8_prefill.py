"""The int8 prefill graph: a bundle's block-quantized decoder with its products as int8 GEMMs.

onnxruntime's 4-bit MatMulNBits computes int8 dot products on VNNI; only its int8 GEMM (MatMulIntegerToFloat)
runs on the matrix units of CPUs that have them (Intel AMX), at several times the rate on a prefill's shapes
(benchmarks/ort_kernels.py). A decode step reads every weight once and is bound by their bytes, where 4 bits
win. So a bundle may carry both: `decoder` for decode steps, and `decoder_int8` (this module) for prefills,
which the runtime picks where the CPU has int8 matrix units (SessionConfig.prefill).

`decoder_int8` takes and returns exactly what `decoder` does. Each MatMulNBits becomes the int8-rows recipe's
product (quant/rewrite.py): its weight as the 4-bit kernel sees it (nbits.dequantize), requantized to int8 per
output column, its input quantized to int8 per row. Made from the quantized weights, not the float ones, it
needs no second calibration and streams like every rewrite here (one tensor at a time as the file is written).

Left as they are: the lm_head and any weight a second node reads (a table tied to the embedding): the head
computes only the rows logits_index picks, and a second copy of a shared table would only add memory; and
products with float16 scales, g_idx or a bias, which this rewrite does not express.

It computes differently from `decoder` (per-row activation steps rather than per-block ones, int8 weights
rounded from the 4-bit ones): the build measures its answers against the reference like every graph's.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from pgexport.nbits import Packed, dequantize
from pgexport.quant.recipes import RECIPES
from pgexport.quant.rewrite import GraphReport, rewrite_linears, save_graph

GRAPH = "decoder_int8"
PRECISION = "int8-rows"


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


def _eligible(node: ir.Node, outputs: set) -> bool:
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or node.outputs[0] in outputs:
        return False
    weight, scales = node.inputs[1], node.inputs[2]
    return (len(weight.uses()) == 1 and weight.const_value is not None and scales.const_value is not None
            and scales.const_value.dtype == ir.DataType.FLOAT and all(v is None for v in node.inputs[4:]))


def to_int8(graph: ir.Graph) -> int:
    """Each eligible MatMulNBits of `graph` -> MatMul on its weight in float32 (computed as the graph is written),
    then the int8-rows recipe's rewrite of those MatMuls. -> products rewritten."""
    outputs = set(graph.outputs)
    count = 0
    for node in list(graph):
        if not _eligible(node, outputs):
            continue
        k, n = node.attributes["K"].as_int(), node.attributes["N"].as_int()
        weight_in = node.inputs[1]
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
    rewrite_linears(graph, "decoder_linear", RECIPES[PRECISION], report)
    if sorted(report.weights.values()) != [PRECISION] * count:  # a MatMul the exporter left unrewritten
        raise AssertionError(f"expected {count} {PRECISION} products, rewrote {report.weights}")
    return count


def write_prefill_graph(decoder: Path, out: Path) -> int:
    """Write `out` (+ `out`.data): the decoder graph at `decoder` with its products in int8 (to_int8). The
    decoder's files are only read. -> products rewritten (0: nothing to rewrite, and nothing written)."""
    model = ir.load(decoder)
    count = to_int8(model.graph)
    if count:
        save_graph(model, out)
    return count
