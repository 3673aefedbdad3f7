"""Apply a recipe to the three graphs of a bundle being built (files rewritten in place)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx_ir as ir

from .blockwise import Packed
from .recipes import Recipe
from .rewrite import GraphReport, check_fast_path, rewrite_embedding, rewrite_linears, save_graph

GRAPH_COMPONENTS = {"vision_encoder": "vision_encoder", "projector": "projector", "decoder": "decoder_linear"}


class SlowPathError(RuntimeError):
    """A graph would run MatMulNBits on onnxruntime's slow path; the bundle is refused."""


def quantize_graphs(files: dict[str, Path], recipe: Recipe, gptq: dict[str, Packed] | None = None) -> dict:
    """files: graph name -> .onnx path. Returns the manifest's per-graph quantization report."""
    return {name: quantize_graph(name, path, recipe, gptq) for name, path in files.items()}


def quantize_graph(name: str, path: Path, recipe: Recipe, gptq: dict[str, Packed] | None = None) -> dict:
    """Rewrite one graph file in place per the recipe (GPTQ weights apply to the decoder); -> its report."""
    return quantize_model(name, ir.load(path), path, recipe, gptq)


def quantize_model(name: str, model: ir.Model, path: Path, recipe: Recipe,
                   gptq: dict[str, Packed] | None = None) -> dict:
    """Rewrite `model` (graph `name`) per the recipe and write it as `path`; -> its report. Weights are packed
    one at a time as the file is written, read from wherever `model`'s tensors point: the float32 file it was
    loaded from, or (a streamed build's decoder) the checkpoint, so no float32 decoder is ever written."""
    report = GraphReport()
    rewrite_linears(model.graph, GRAPH_COMPONENTS[name], recipe, report, gptq if name == "decoder" else None)
    if name == "decoder":
        rewrite_embedding(model.graph, recipe, report)
    problems = check_fast_path(model.graph)
    if problems:
        raise SlowPathError("refusing to write a slow-path MatMulNBits: " + "; ".join(problems[:3]))
    if any(label != "fp32" for label in report.weights.values()) or not path.exists():
        save_graph(model, path)
    del model
    if report.dynamic_int8:
        _dynamic_int8(path, report.dynamic_int8)
    labels = Counter(report.weights.values())
    return {
        "precision": labels.most_common(1)[0][0] if len(labels) == 1 else "mixed",
        "weights": report.weights,
        "notes": report.notes,
    }


def _dynamic_int8(path: Path, nodes: list[str]) -> None:
    """Per-channel dynamic 8-bit for the named MatMuls, via onnxruntime: uint8 activations and uint8 weights.

    Not int8 weights: onnxruntime's u8s8 product on x86 without VNNI sums pairs of products in int16 and
    saturates (VPMADDUBSW). On the demo vision encoder that is 1 - cosine 8.9e-4 against float32 where the
    same weights computed exactly give 4.5e-5; at PaliGemma-3B 8.6e-2 against 1.7e-4. u8u8 is exact on
    every CPU (4.4e-5 and 1.6e-4) for 12 % more vision time at 3B on AVX2 (benchmarks/vision_int8.py).

    In a child process: quantize_dynamic holds about three copies of the graph (4.7 GB for the 3B vision
    encoder), and the protobuf memory it frees stays with the process that allocated it."""
    from .. import child
    from .rewrite import replace_graph_files

    stage = path.parent / f".int8-{path.name}"
    stage.mkdir(exist_ok=True)
    child.run("pgexport.quant.apply", {"path": str(path), "out": str(stage / path.name), "nodes": nodes},
              stage / "job.json", lambda event, text: None)
    for f in ("job.json", "job.log"):
        (stage / f).unlink(missing_ok=True)
    replace_graph_files(path, stage)


def _child(job: dict, job_file: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .rewrite import EXTERNAL_DATA_THRESHOLD

    logging.getLogger("root").setLevel(logging.ERROR)
    path = Path(job["path"])
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    quantize_dynamic(path, Path(job["out"]), per_channel=True, weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["MatMul"], nodes_to_quantize=job["nodes"],
                     use_external_data_format=size > EXTERNAL_DATA_THRESHOLD,
                     extra_options={"MatMulConstBOnly": True})


if __name__ == "__main__":
    import sys

    from .. import child

    sys.exit(child.main(_child))
