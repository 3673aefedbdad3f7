"""A copy of a bundle whose decoder runs each layer's MLP over blocks of rows, to measure what that saves.

    python benchmarks/mlp_blocks.py SRC DST [--rows 1024]
    python benchmarks/memory_stages.py SRC DST --generations 2

At 896 pixels the prefill's largest transients are the MLP's: gate, up and their product are [4,099 x 16,384]
float32, 268 MB each, alive together in every layer. Here each MLP (gate and up MatMulNBits, FastGelu, Mul,
down MatMulNBits) moves into the body of an ONNX Loop that takes ROWS rows of its input per iteration and
appends the block's output to what the earlier iterations wrote; the weights stay where they are, read by the
body from the outer graph. Every row is computed as before (the 4-bit product quantizes each row's activations
on its own), so the logits are bit-identical (the test compares them). A decode step or a prefill of up to ROWS
rows is one iteration.

The rewritten decoder graph points at the source's weight file, which is hard-linked into DST; the manifest
gets the new hash and a `build.derived` record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pgexport.build.writer import derive_bundle

GELU = ("FastGelu", "Gelu")


def block_mlps(model: onnx.ModelProto, rows: int) -> int:
    """Move each MLP of `model`'s graph into a Loop over blocks of ROWS rows (axis 1 of its [B, S, H] input);
    -> the number of MLPs moved."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    moved = 0
    for act in [n for n in graph.node if n.op_type in GELU]:
        gate = producer.get(act.input[0])
        after = consumers.get(act.output[0], [])
        if gate is None or gate.op_type != "MatMulNBits" or len(after) != 1 or after[0].op_type != "Mul":
            continue
        mul = after[0]
        up = producer.get(next(i for i in mul.input if i != act.output[0]))
        downs = consumers.get(mul.output[0], [])
        if up is None or up.op_type != "MatMulNBits" or up.input[0] != gate.input[0] or len(downs) != 1 \
                or downs[0].op_type != "MatMulNBits":
            continue
        if any(len(consumers.get(t, [])) != 1 for t in (gate.output[0], up.output[0])):
            continue
        _into_loop(graph, gate.input[0], [gate, up, act, mul, downs[0]], rows, f"mlp_blocks_{moved}")
        moved += 1
    return moved


def _into_loop(graph: onnx.GraphProto, x: str, nodes: list[onnx.NodeProto], rows: int, name: str) -> None:
    down = nodes[-1]
    out = down.output[0]
    p = f"{name}/"

    def const(suffix: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), p + suffix))
        return p + suffix

    rows_c, axis1, zero = const("rows", [rows]), const("axis1", [1]), const("zero", [0])
    count_rows_minus_1 = const("rows_minus_1", [rows - 1])
    outer = [
        helper.make_node("Shape", [x], [p + "shape"], start=1, end=2),  # [S]
        helper.make_node("Add", [p + "shape", count_rows_minus_1], [p + "padded"]),
        helper.make_node("Div", [p + "padded", rows_c], [p + "blocks1"]),
        helper.make_node("Squeeze", [p + "blocks1"], [p + "blocks"]),  # ceil(S / rows), a scalar
        helper.make_node("Slice", [x, zero, zero, axis1], [p + "acc0"]),  # [B, 0, H]: an MLP keeps the width
    ]
    body_nodes = [
        helper.make_node("Unsqueeze", ["i", p + "b_axis0"], [p + "i1"]),
        helper.make_node("Mul", [p + "i1", rows_c], [p + "start"]),
        helper.make_node("Add", [p + "start", rows_c], [p + "end"]),
        helper.make_node("Slice", [x, p + "start", p + "end", axis1], [p + "xs"]),
    ]
    rename = {x: p + "xs", out: p + "ys"}
    for n in nodes:
        body_nodes.append(helper.make_node(n.op_type, [rename.get(i, i) for i in n.input],
                                           [rename.get(o, o) for o in n.output], name=n.name, domain=n.domain,
                                           **_attrs(n)))
    body_nodes += [helper.make_node("Concat", ["acc_in", p + "ys"], ["acc_out"], axis=1),
                   helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    body = helper.make_graph(
        body_nodes, p + "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0], np.int64), p + "b_axis0")])
    loop = helper.make_node("Loop", [p + "blocks", "", p + "acc0"], [out], name=p + "loop", body=body)
    at = list(graph.node).index(nodes[0])
    for n in nodes:
        graph.node.remove(n)
    for k, n in enumerate([*outer, loop]):
        graph.node.insert(at + k, n)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def derive(src: Path, dst: Path, rows: int) -> int:
    """DST: the bundle SRC with its decoder's MLPs over blocks of ROWS rows (DST replaced if it exists);
    -> the MLPs moved."""

    def write(writer, manifest: dict) -> dict:
        decoder = manifest["graphs"]["decoder"]
        model = onnx.load(str(src / decoder["file"]), load_external_data=False)
        n = block_mlps(model, rows)
        onnx.save(model, str(writer.path(decoder["file"])))  # external data stays where the graph points
        return {"mlp_blocks": {"rows": rows, "layers": n}}

    return derive_bundle(src, dst, write, force=True)["mlp_blocks"]["layers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--rows", type=int, default=1024, help="rows of the MLP's input per block")
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be positive")
    n = derive(args.src, args.dst, args.rows)
    print(f"wrote {args.dst}: {n} MLPs over blocks of {args.rows} rows")


if __name__ == "__main__":
    main()
