"""The static layout's graphs (`--kv-cache static`): every dimension of every graph fixed, the decoder split into a
decode graph and one prefill graph per prefix length, all reading the one decoder weight file.

The decoder is exported (and quantized) once with symbolic dimensions, in the static layout's semantics
(decoder.DecoderWithPast: a mask over the whole buffer, a token's row its position - 1). Fixing shapes is then a
matter of the graph's declared dimensions (onnxruntime.tools.onnx_model_utils): no length in the graph depends on a
value (the rotary tables have one row per token of the call, fusions.py). The prefill graphs are copies of the
decode graph's protobuf with other sizes whose initializers name the same external-data file at the same offsets,
so a bundle holds the decoder's weights once however many lengths it has (a decoder small enough to hold its
weights inside the graph file is first given a data file of its own, for the same reason). Every intermediate shape
is then inferred by onnxruntime's symbolic shape inference and recorded, so that tools that read the file (the
mobile usability checker, execution providers that partition before running) see no dynamic dimension either.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx
import onnx.numpy_helper
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.manifest import GraphEntry, KvCache, prefill_graph

from pgexport.files import atomic_path


class StaticShapeError(Exception):
    """A graph still has a dimension that is not a number after fixing (a build bug)."""


def fix_bundle(directory: Path, graphs: dict[str, GraphEntry], g: Geometry, kv: KvCache) -> dict[str, GraphEntry]:
    """Fix the shapes of every graph in `directory` in place and write the prefill graphs; -> the graph entries
    with the prefill graphs added."""
    out = dict(graphs)
    sizes = {io.BATCH: 1, io.IMAGE_TOKENS: g.num_image_tokens, io.TOTAL: kv.max_len, io.PAST: kv.max_len,
             io.KEEP: 1}
    decoder = graphs["decoder"]
    if not decoder.data_files:
        decoder = replace(decoder, data_files=(_externalize(directory / decoder.file),))
        out["decoder"] = decoder
    for n in kv.prefill_lengths:
        name = prefill_graph(n)
        _fix(directory / decoder.file, directory / f"{name}.onnx", sizes | {io.SEQ: n})
        out[name] = replace(decoder, file=f"{name}.onnx")
    _fix(directory / decoder.file, directory / decoder.file, sizes | {io.SEQ: 1, io.IMAGE_TOKENS: 1})
    for name, entry in graphs.items():
        if name != "decoder":
            _fix(directory / entry.file, directory / entry.file, sizes)
    return out


def _externalize(path: Path) -> str:
    """Move a graph's weights from its protobuf into `<file>.data`; -> that file's name."""
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(path)
    data = f"{path.name}.data"
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data, size_threshold=1024)
    mode = path.stat().st_mode & 0o777
    with atomic_path(path) as tmp:
        onnx.save_model(model, tmp)  # the weights go to `data` beside it, a name the bundle did not hold
    (path.parent / data).chmod(mode)  # onnx creates it private; it is as readable as the graph
    return data


def _fix(source: Path, target: Path, sizes: dict[str, int]) -> None:
    model = onnx.load(source, load_external_data=False)
    for param, value in sizes.items():
        make_dim_param_fixed(model.graph, param, value)
    del model.graph.value_info[:]
    model.graph.value_info.extend(_inferred(model))
    dynamic = _dynamic(model, intermediate=True)
    if dynamic:
        raise StaticShapeError(f"{target.name}: {', '.join(dynamic[:4])} still dynamic after fixing shapes")
    with atomic_path(target) as tmp:
        tmp.write_bytes(model.SerializeToString())


def dynamic_dimensions(path: Path) -> list[str]:
    """Inputs and outputs of a graph file with a dimension that is not a number, as name[axis]."""
    return _dynamic(onnx.load(path, load_external_data=False))


def _inferred(model: onnx.ModelProto) -> list:
    """Every intermediate value's shape, by onnxruntime's symbolic shape inference (it knows the contrib ops).
    It is given the external weights as inputs of their shape: it must not read them (their file is beside the
    graph, not in the working directory, and large)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    external = [t for t in probe.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        probe.graph.initializer.remove(t)
        probe.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return list(SymbolicShapeInference.infer_shapes(probe).graph.value_info)


def _dynamic(model: onnx.ModelProto, intermediate: bool = False) -> list[str]:
    values = [*model.graph.input, *model.graph.output, *(model.graph.value_info if intermediate else ())]
    return [f"{v.name}[{i}]" for v in values for i, d in enumerate(v.type.tensor_type.shape.dim)
            if not d.HasField("dim_value")]
