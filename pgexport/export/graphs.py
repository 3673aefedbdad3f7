"""The bundle's graphs: their file names, and the export of each from a PyTorch model (one call per graph)."""

from __future__ import annotations

from pathlib import Path

from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_layout import CONCAT, KvLayout

from pgexport.export import decoder, mask_decoder, projector, vision
from pgexport.export.onnx_export import export_graph, param_bytes

FILES = {"vision_encoder": "vision_encoder.onnx", "projector": "projector.onnx", "decoder": "decoder.onnx",
         "mask_decoder": "mask_decoder.onnx"}  # the mask decoder only when its weights are found
IO = {  # graph -> (input names, output names)
    "vision_encoder": lambda g: (vision.INPUT_NAMES, vision.OUTPUT_NAMES),
    "projector": lambda g: (projector.INPUT_NAMES, projector.OUTPUT_NAMES),
    "decoder": lambda g: (decoder.input_names(g), decoder.output_names(g)),
    "mask_decoder": lambda g: (mask_decoder.INPUT_NAMES, mask_decoder.OUTPUT_NAMES),
}


def export_vision_encoder(model, g: Geometry, out_dir: Path) -> None:
    m = vision.VisionEncoder(model)
    export_graph(m, vision.sample_inputs(g), out_dir / FILES["vision_encoder"], vision.INPUT_NAMES,
                 vision.OUTPUT_NAMES, vision.DYNAMIC_SHAPES, param_bytes(m))


def export_projector(model, g: Geometry, out_dir: Path) -> None:
    m = projector.Projector(model)
    export_graph(m, projector.sample_inputs(g), out_dir / FILES["projector"], projector.INPUT_NAMES,
                 projector.OUTPUT_NAMES, projector.DYNAMIC_SHAPES, param_bytes(m))


def export_decoder(config, weights, g: Geometry, out_dir: Path, kv_layout: KvLayout = CONCAT, write=None) -> None:
    """The decoder, exported from the architecture alone (`config`, parameters on the meta device), its
    weights read one at a time from `weights` (pgexport.source.weights) as the file is written: the largest graph
    is never held whole, in torch or in ONNX.

    kv_layout: how the graph takes the KV cache (decoder.DecoderWithPast).
    write: None to save the float32 graph; or `write(graph, path)`, which saves it otherwise: a streamed,
    quantized build quantizes as the file is written, so that the float32 decoder (37 GB at 10B) never
    reaches the disk."""
    from pgexport.source.weights import meta_model

    model = meta_model(config)
    m = decoder.DecoderWithPast(model, g, kv_layout)
    export_graph(m, decoder.sample_inputs(g, kv_layout), out_dir / FILES["decoder"], decoder.input_names(g),
                 decoder.output_names(g), decoder.dynamic_shapes(g), param_bytes(m), weights=(weights, model),
                 write=write)


def export_mask_decoder(m: mask_decoder.MaskDecoder, out_dir: Path) -> None:
    export_graph(m, mask_decoder.sample_inputs(m._vq_vae._embedding.shape[0]), out_dir / FILES["mask_decoder"],
                 mask_decoder.INPUT_NAMES, mask_decoder.OUTPUT_NAMES, mask_decoder.DYNAMIC_SHAPES, param_bytes(m))
