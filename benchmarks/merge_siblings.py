"""A copy of a bundle whose sibling MatMulNBits (q/k/v, gate/up: the 4-bit linears reading one input) are merged.

    python benchmarks/merge_siblings.py SRC DST
    python benchmarks/kv_layout.py --bundle base=SRC --bundle merged=DST --lengths 259

onnxruntime-genai's builder writes q, k and v as one MatMulNBits; the bundle has one per linear. This measures
whether that is worth doing: each packed tensor of MatMulNBits (data [N, blocks, bytes], scales and zero points)
leads with N, the output features, so the siblings' tensors stacked along N are the wider linear's, and a Split
of its output along the last axis gives each sibling's output back. Nothing is re-rounded: the logits are
bit-identical (the test compares them). On PaliGemma-3B-224 int4 it decoded at 0.98x to 1.00x the original's
time (docs/measurements), so the build does not do it.

The rewritten decoder is held in memory whole (about its size on disk); the other files are hard-linked and the
manifest gets the new hashes and a `build.derived` record.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pgexport.build.writer import derive_bundle


def merge(model: onnx.ModelProto) -> int:
    """Merge each group of sibling MatMulNBits in `model`'s graph; -> the number of groups merged."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups: dict[tuple, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) > 4 or not all(i in inits for i in node.input[1:]):
            continue  # g_idx or bias, or weights computed in the graph: left alone
        attrs = tuple(sorted((a.name, helper.get_attribute_value(a)) for a in node.attribute if a.name != "N"))
        groups[(node.input[0], len(node.input), attrs)].append(node)
    merged = 0
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        first = nodes[0]
        widths = [next(helper.get_attribute_value(a) for a in n.attribute if a.name == "N") for n in nodes]
        stacked = []
        for j in range(1, len(first.input)):
            name = f"{first.name}.merged{j}"
            arrays = [numpy_helper.to_array(inits[n.input[j]]) for n in nodes]
            graph.initializer.append(numpy_helper.from_array(np.concatenate(arrays, axis=0), name))
            stacked.append(name)
        sizes = f"{first.name}.split_sizes"
        graph.initializer.append(numpy_helper.from_array(np.array(widths, np.int64), sizes))
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        attrs["N"] = sum(widths)
        wide = helper.make_node("MatMulNBits", [first.input[0], *stacked], [f"{first.name}_merged_out"],
                                name=f"{first.name}_merged", domain="com.microsoft", **attrs)
        split = helper.make_node("Split", [wide.output[0], sizes], [n.output[0] for n in nodes],
                                 name=f"{first.name}_split", axis=-1)
        at = list(graph.node).index(first)  # every sibling's consumers come after the first sibling's input
        for n in nodes:
            graph.node.remove(n)
        graph.node.insert(at, split)
        graph.node.insert(at, wide)
        merged += 1
    used = set(_inputs(graph))
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return merged


def _inputs(graph: onnx.GraphProto):
    """The names every node reads, in the branches of an If as well (they read the outer graph's tensors)."""
    for node in graph.node:
        yield from node.input
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _inputs(sub)


def derive(src: Path, dst: Path) -> int:
    """DST: the bundle SRC with its decoder's siblings merged (DST replaced if it exists); -> the groups merged."""

    def write(writer, manifest: dict) -> dict:
        decoder = manifest["graphs"]["decoder"]
        model = onnx.load(str(src / decoder["file"]))
        n = merge(model)
        if decoder.get("data_files"):
            onnx.save(model, str(writer.path(decoder["file"])), save_as_external_data=True,
                      all_tensors_to_one_file=True, location=decoder["data_files"][0], size_threshold=1024)
        else:
            onnx.save(model, str(writer.path(decoder["file"])))
        return {"matmulnbits_siblings_merged": n}

    return derive_bundle(src, dst, write, force=True)["matmulnbits_siblings_merged"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    n = derive(args.src, args.dst)
    print(f"wrote {args.dst}: {n} groups of sibling MatMulNBits merged")


if __name__ == "__main__":
    main()
