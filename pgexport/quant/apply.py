"""Apply a recipe to the three graphs of a bundle being built (files rewritten in place)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx_ir as ir

from pgexport.nbits import Packed
from pgexport.quant.recipes import Recipe
from pgexport.quant.rewrite import GraphReport, check_fast_path, rewrite_embedding, rewrite_linears, save_graph

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
        rewrite_embedding(model.graph, recipe, report, gptq)
    problems = check_fast_path(model.graph)
    if problems:
        raise SlowPathError("refusing to write a slow-path MatMulNBits: " + "; ".join(problems[:3]))
    if any(label != "fp32" for label in report.weights.values()) or not path.exists():
        save_graph(model, path)
    del model
    labels = Counter(report.weights.values())
    return {
        "precision": labels.most_common(1)[0][0] if len(labels) == 1 else "mixed",
        "weights": report.weights,
        "notes": report.notes,
    }
