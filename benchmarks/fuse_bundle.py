"""Apply the build's onnxruntime fusions to a bundle built before the build applied them.

    python benchmarks/fuse_bundle.py OLD_BUNDLE NEW_BUNDLE

Builds since `pgexport.export.fusions` fuse every graph at export time, before parity and quantization.
A full-scale bundle takes half an hour to rebuild; this copies one built earlier, runs the same
`fuse_for_ort` over its vision encoder and decoder (quantized graphs included: the rules match norms,
GELU and rotary embedding, not MatMuls) and rewrites the manifest's file hashes, so that the effect of
the fusions on speed can be measured on the same weights (benchmarks/perf_targets.py OLD NEW).
Prints the fusion counts per graph. The result is not parity-checked: compare its tokens with the old
bundle's (pgexport bench in accuracy mode, or the parity test of the demo build).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fuse_bundle(src: Path, dst: Path) -> dict[str, dict[str, int]]:
    """DST: the bundle SRC with its vision encoder and decoder fused; -> the fusion counts per graph."""
    import onnx_ir as ir

    from pgexport.build.writer import derive_bundle
    from pgexport.export.fusions import fuse_for_ort

    if dst.exists():
        sys.exit(f"error: {dst} exists")

    def write(writer, manifest: dict) -> dict:
        counts = {}
        for name in ("vision_encoder", "decoder"):
            entry = manifest["graphs"][name]
            model = ir.load(str(src / entry["file"]))
            _shapes_of_quantized_ops(model)
            counts[name] = fuse_for_ort(model)
            data = entry.get("data_files") or []
            ir.save(model, str(writer.path(entry["file"])), **({"external_data": data[0]} if data else {}))
            del model
        return {"fused_after_build": counts}

    return derive_bundle(src, dst, write)["fused_after_build"]


def _shapes_of_quantized_ops(model) -> None:
    """ONNX shape inference does not know the com.microsoft ops of quantized graphs; the fusion rules check
    the ranks and widths of their outputs. MatMulNBits maps [..., K] to [..., N]: set that, in graph order."""
    import onnx_ir as ir

    for node in model.graph:
        if node.op_type == "MatMulNBits" and node.outputs[0].shape is None and node.inputs[0].shape is not None:
            n = node.attributes["N"].as_int()
            node.outputs[0].shape = ir.Shape([*node.inputs[0].shape[:-1], n])
            node.outputs[0].dtype = node.inputs[0].dtype
        if node.op_type in ("Add", "Mul") and node.outputs[0].shape is None:
            shapes = [v.shape for v in node.inputs if v is not None]
            if all(sh is not None for sh in shapes) and len({len(sh) for sh in shapes}) == 1 and shapes[0] == shapes[-1]:
                node.outputs[0].shape = shapes[0]
                node.outputs[0].dtype = node.inputs[0].dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args()
    print(json.dumps(fuse_bundle(args.src, args.dst), indent=1))


if __name__ == "__main__":
    main()
