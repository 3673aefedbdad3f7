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
import json
import os
import shutil
from pathlib import Path

import onnx

from pgexport_runtime.manifest import MANIFEST, load_manifest, sha256_file


def derive(src: Path, dst: Path, level: int) -> Path:
    manifest = load_manifest(src)
    raw = json.loads((src / MANIFEST).read_text())
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    changed = {}
    for name in raw.get("files", {}):
        path = src / name
        if path.suffix == ".onnx":
            model = onnx.load(str(path), load_external_data=False)
            n = _set_level(model, level)
            if n:
                onnx.save(model, str(tmp / name))  # external data stays where the graph points: same file names
                changed[name] = n
                continue
        _link(path, tmp / name)
    for g in manifest.graphs.values():
        for f in g.data_files:
            if not (tmp / f).exists():
                _link(src / f, tmp / f)
    for name in changed:
        raw["files"][name] = sha256_file(tmp / name)
    recipe = (raw.get("quantization") or {}).get("recipe") or {}
    for part in recipe.values():
        if isinstance(part, dict) and part.get("kind") in ("int4", "int8-wo"):
            part["accuracy_level"] = level
    if recipe:
        recipe["name"] = f"{recipe.get('name', 'custom')}-acc{level}"
    if raw.get("quantization"):
        raw["quantization"].pop("accuracy", None)  # measured on the source graphs, not these
    raw.setdefault("build", {})["derived"] = {"from": str(src.resolve()), "matmulnbits_accuracy_level": level,
                                              "nodes_changed": changed}
    (tmp / MANIFEST).write_text(json.dumps(raw, indent=1))
    load_manifest(tmp)  # every hash checks out
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
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


def _link(a: Path, b: Path) -> None:
    b.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


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
