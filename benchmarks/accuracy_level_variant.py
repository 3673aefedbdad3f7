"""A copy of a bundle whose MatMulNBits nodes run at another accuracy_level (the compute type of
onnxruntime's 4/8-bit GEMM: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations on VNNI).

    python benchmarks/accuracy_level_variant.py SRC DST --level 4

accuracy_level is a node attribute; the quantized weights do not depend on it. A full-size bundle takes
most of an hour to build, so to measure this lever the graphs are rewritten with only that attribute changed,
the weight files are hard-linked (or copied across file systems), and the manifest records the new recipe
settings, the new sha256 of each rewritten graph and where the bundle came from. The result is the bundle a
build with the same recipe and `accuracy_level: LEVEL` would have written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

from pgexport.build.writer import derive_bundle


def derive(src: Path, dst: Path, level: int) -> Path:
    """DST: the bundle SRC with every MatMulNBits at accuracy_level LEVEL (DST replaced if it exists)."""

    def write(writer, manifest: dict) -> dict:
        changed = {}
        for name in manifest["files"]:
            if name.endswith(".onnx"):
                model = onnx.load(str(src / name), load_external_data=False)
                if n := _set_level(model, level):
                    onnx.save(model, str(writer.path(name)))  # external data stays where the graph points
                    changed[name] = n
        recipe = (manifest.get("quantization") or {}).get("recipe") or {}
        for part in recipe.values():
            if isinstance(part, dict) and part.get("kind") in ("int4", "int8-wo"):
                part["accuracy_level"] = level
        if recipe:
            recipe["name"] = f"{recipe.get('name', 'custom')}-acc{level}"
        return {"matmulnbits_accuracy_level": level, "nodes_changed": changed}

    derive_bundle(src, dst, write, force=True)
    return dst


def _set_level(model: onnx.ModelProto, level: int) -> int:
    n = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", level)])
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--level", type=int, choices=[0, 1, 2, 3, 4], default=4)
    args = parser.parse_args()
    out = derive(args.src, args.dst, args.level)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
