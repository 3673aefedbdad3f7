"""Parity one decoder layer at a time: what a build can check when the float32 model does not fit in memory.

The whole-model parity check (parity.py) runs the float32 decoder graph, which is as large as the model.
Here a decoder layer is exported on its own (the wiring DecoderWithPast uses, `decoder.run_layer`), and
written once per layer with that layer's weights bound as the bundle's decoder binds them (every layer has
the same graph; only its weights differ), then compared with the same layer in PyTorch on the same
activations. The activations flow layer to layer in PyTorch, as GPTQ's calibration does, so
one layer's weights (plus the embedding table, for the first hidden state) are in memory at a time, and a
layer that diverges is named rather than smeared over the logits.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_layout import CONCAT, KvLayout

from pgexport.export import decoder
from pgexport.export.onnx_export import EXTERNAL_DATA_THRESHOLD, export_graph, param_bytes
from pgexport.source.weights import materialized, meta_model, parameter_names

INPUT_NAMES = ["hidden", "cos", "sin", "bias", "past_key", "past_value"]
OUTPUT_NAMES = ["hidden_out", "present_key", "present_value"]


class LayerStep(nn.Module):
    """One decoder layer as the decoder graph runs it: (hidden, cos, sin, bias, past k/v) -> (hidden, k, v)."""

    def __init__(self, layer, g: Geometry, shared: bool = False):
        super().__init__()
        self.layer, self.g, self.shared = layer, g, shared

    def forward(self, hidden, cos, sin, bias, past_key, past_value):
        return decoder.run_layer(self.g, self.layer, hidden, cos, sin, bias, past_key, past_value, self.shared)


@dataclass(frozen=True)
class Prefill:
    """A batch the layers are compared on: the prefill of the parity prompts."""

    input_ids: np.ndarray
    image_embeds: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


def check_layers(config, g: Geometry, source, batch: Prefill, tolerance: float, onnx_source=None,
                 progress=lambda i, n: None, kv_layout: KvLayout = CONCAT) -> dict:
    """Each decoder layer's graph against PyTorch; -> {"layers": [{"layer", "relative", "ok"}...], "ok",
    "first_failure"}. `onnx_source` (default `source`) is where the graphs' weights come from: a test
    gives it a broken one. kv_layout: the bundle decoder's; "shared" layers attend through GroupQueryAttention
    into an empty cache buffer of the prefill's length, whose written rows are compared with PyTorch's keys."""
    shared = kv_layout.in_place  # written in place: attends through GroupQueryAttention
    import onnxruntime as ort

    model = meta_model(config)
    names = parameter_names(model)
    dec = decoder.DecoderWithPast(model, g)
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    types = torch.from_numpy(batch.token_type_ids)
    with torch.no_grad():
        table = dec.embed
        dec.embed = _RowsEmbedding(source, names[id(table.weight)], table)
        try:
            hidden = dec._embed(ids, torch.from_numpy(batch.image_embeds), types)
        finally:
            dec.embed = table
        full, sliding = dec._attention_bias(mask, types, torch.arange(ids.shape[1]).expand_as(ids))
        positions = (torch.cumsum(mask, dim=1) * mask).clamp(min=1)  # 1-based, as the runtime computes them
        cos, sin = dec.rotary(hidden, positions)
    empty = torch.zeros(ids.shape[0], g.num_kv_heads, ids.shape[1] if shared else 0, g.head_dim)
    entries = []
    shifted = _LayerWeights(onnx_source or source)
    with tempfile.TemporaryDirectory(prefix="pgexport-layer-") as work:
        path = Path(work) / "layer.onnx"
        graph = None
        for i, layer in enumerate(dec.layers):
            progress(i, len(dec.layers))
            bias = sliding if g.sliding_layers[i] else full
            inputs = (hidden, cos, sin, bias, empty, empty)
            with torch.no_grad(), materialized(layer, names, source):  # PyTorch's own attention, either layout
                expected = decoder.run_layer(g, layer, *inputs[:4], empty[:, :, :0], empty[:, :, :0])
            shifted.layer = i
            if graph is None:  # layer 0's parameters, read as layer i's by `shifted`
                step = LayerStep(dec.layers[0], g, shared)
                external = param_bytes(step) > EXTERNAL_DATA_THRESHOLD
                graph = export_graph(step, _sample(g, shared), path, INPUT_NAMES, OUTPUT_NAMES, _dynamic_shapes(),
                                     param_bytes(step), weights=(shifted, model))
            else:
                ir.save(graph, str(path), external_data=(path.name + ".data") if external else None)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})
            del session
            rel = max(_relative(o, e.numpy()) for o, e in zip(got, expected))
            entries.append({"layer": i, "relative": rel, "ok": bool(rel <= tolerance)})
            hidden = expected[0]
    failed = [e["layer"] for e in entries if not e["ok"]]
    return {"layers": entries, "tolerance_relative": tolerance, "ok": not failed,
            "first_failure": failed[0] if failed else None}


class _RowsEmbedding(nn.Module):
    """Gemma's scaled embedding reading only the table rows it looks up (the whole table in float32 is 2.1 GB
    at PaliGemma-3B): the rows in float32, times the scale, as transformers computes it on the float32 table."""

    def __init__(self, source, name: str, embedding):
        super().__init__()
        self.source, self.name, self.weight, self.scale = source, name, embedding.weight, embedding.embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        wanted, where = torch.unique(ids, return_inverse=True)
        rows = torch.cat([self.source.rows(self.name, i, i + 1) for i in wanted.tolist()])
        return rows[where] * self.scale.to(rows.dtype)


class _LayerWeights:
    """A weight source that reads layer 0's parameters as those of layer `layer`."""

    def __init__(self, source):
        self.source, self.layer = source, 0

    def shapes(self) -> dict:
        return self.source.shapes()

    def get(self, name: str):
        return self.source.get(self._name(name))

    def rows(self, name: str, start: int, stop: int):
        return self.source.rows(self._name(name), start, stop)

    def _name(self, name: str) -> str:
        return re.sub(r"(\.layers\.)0\.", rf"\g<1>{self.layer}.", name, count=1)


def summarize_failure(report: dict) -> str:
    e = report["layers"][report["first_failure"]]
    return (f"decoder layer {e['layer']} differs from PyTorch: relative {e['relative']:.3g} "
            f"(limit {report['tolerance_relative']:.3g})")


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(float(np.abs(want).max()), 1e-12))


def _sample(g: Geometry, shared: bool = False) -> tuple:
    """Batch 2, three new tokens after two cached ones (no dimension 0 or 1, so none is specialised; shared: in
    a buffer of 6)."""
    gen = torch.Generator().manual_seed(3)
    b, s, p = 2, 3, 2
    room = p + s + 1 if shared else p
    return (torch.randn(b, s, g.text_hidden, generator=gen), torch.randn(b, s, g.head_dim, generator=gen),
            torch.randn(b, s, g.head_dim, generator=gen), torch.zeros(b, 1, s, p + s),
            torch.randn(b, g.num_kv_heads, room, g.head_dim, generator=gen),
            torch.randn(b, g.num_kv_heads, room, g.head_dim, generator=gen))


def _dynamic_shapes() -> tuple:
    auto = torch.export.Dim.AUTO
    return ({0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 2: auto, 3: auto},
            {0: auto, 2: auto}, {0: auto, 2: auto})
