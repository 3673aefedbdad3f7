"""`pgexport package`: a built bundle -> a variant for other targets: onnxruntime's ORT format (mobile), and/or
float16 activations (GPU and NPU execution providers).

Each graph is converted by onnxruntime's own tool (onnxruntime.tools.convert_onnx_models_to_ort), which also
writes required_operators.config, the operator list for a reduced onnxruntime build (`--include_ops_by_config`).
The optimizations baked in are those of level "extended" (fixed style): level "all" would add the layout
transforms of the machine that converts (x86's NCHWc), which an ARM phone's onnxruntime does not have. With
float16 activations, level "basic": at "extended" onnxruntime 1.32's fusions left the fp16 decoder writing a
float16 present where its declared output is float32 (the run failed; measured on the demo model).
Before conversion, onnxruntime's mobile usability checker estimates for each graph how much NNAPI and CoreML
could take (nodes, partitions, and its YES/MAYBE/NO, as the graph is and with fixed shapes); the manifest
records it under `package.mobile`. The new bundle has the same tokenizer, geometry and runtime contract, so the
Python and JavaScript runtimes load it unchanged; like a build, it is written to a temporary directory and
renamed into place.

float16 activations: onnxruntime's float16 converter (onnxruntime.transformers.float16) on every graph, with
the graph inputs and outputs kept float32 (the runtime's buffers, the KV cache included, do not change; casts
sit at the edges). Float weights become float16; 4- and 8-bit block weights stay as they are, their scales
float16. Dynamic-int8 islands (DynamicQuantizeLinear -> MatMulInteger -> rescale) stay float32: their
operators take float32 only. benchmarks/activation_range.py measures how far a model's activations stay below
float16's 65504 (the demo model: 228.8 at the most, 286x below).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import MANIFEST, load_manifest, sha256_file

from pgexport.build.writer import BundleWriter
from pgexport.files import write_errors
from pgexport.quant.rewrite import ROW_INT8

FORMATS = ("onnx", "ort")
ACTIVATIONS = ("fp32", "fp16")
_INT8_OPS = ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
OPERATORS_CONFIG = "required_operators.config"
LEVEL = {"fp32": "extended", "fp16": "basic"}  # see the module docstring


def package(bundle: Path, out: Path, fmt: str = "ort", force: bool = False, mobile_check: bool = True,
            progress=None, activations: str = "fp32", samples: int = 64) -> Path:
    """Convert `bundle` into a new bundle at `out`; -> out."""
    step = progress or (lambda name: None)
    if fmt not in FORMATS:
        raise UserError(f"unknown package format {fmt!r} (known: {', '.join(FORMATS)})")
    if activations not in ACTIVATIONS:
        raise UserError(f"unknown activation type {activations!r} (known: {', '.join(ACTIVATIONS)})")
    if fmt == "onnx" and activations == "fp32":
        raise UserError("--format onnx with float32 activations is the bundle itself: ask for --format ort, "
                        "--activations fp16, or both")
    m = load_manifest(bundle)  # every sha256 checked: what is converted is what was built
    if m.record.package is not None:
        raise UserError(f"{bundle} is already a packaged ({m.record.package.get('format')}) bundle; package the "
                        "bundle it came from")
    if Path(out).resolve() == Path(bundle).resolve():
        raise UserError("--out must differ from the bundle being packaged")
    with write_errors(out):
        writer = BundleWriter(out, force=force)
        with writer:
            stage = writer.tmp / ".onnx"
            stage.mkdir()
            for name in (m.tokenizer.file,):
                shutil.copyfile(m.path(name), writer.path(name))
            graphs, mobile = {}, {}
            # a static bundle's prefill graphs read the decoder's weight file; float16 ONNX keeps it that way
            prefill = set(m.kv_cache.prefill_graphs.values())
            for name, entry in m.graphs.items():
                for f in (entry.file, *entry.data_files):
                    shutil.copyfile(m.path(f), stage / f)
                shared = fmt == "onnx" and name in prefill
                if activations == "fp16":
                    step(f"float16 {name}")
                    if shared:
                        data = _to_float16(stage / entry.file, share=writer.path(graphs["decoder"].file))
                        for f in entry.data_files:  # the source's weights, copied for the conversion only
                            (stage / f).unlink()
                    else:
                        data = _to_float16(stage / entry.file, external=bool(prefill) and name == "decoder")
                    entry = replace(entry, precision="fp16" if entry.precision == "fp32" else entry.precision,
                                    data_files=data)
                if fmt == "ort":
                    _unsigned_int8(stage / entry.file)
                    if mobile_check:
                        step(f"check {name} for mobile EPs")
                        mobile[name] = mobile_verdicts(stage / entry.file)
                    step(f"convert {name}")
                    ort_file = _convert(stage / entry.file, writer.tmp, LEVEL[activations], entry.data_files)
                    graphs[name] = replace(entry, file=ort_file, data_files=())
                else:
                    for f in (entry.file, *(() if shared else entry.data_files)):
                        shutil.move(str(stage / f), writer.path(f))
                    graphs[name] = entry
                    if mobile_check:
                        step(f"check {name} for mobile EPs")
                        mobile[name] = mobile_verdicts(writer.path(entry.file))
            if fmt == "ort":
                _operators_config(stage, writer.tmp)
            shutil.rmtree(stage)
            step("write manifest")
            import onnxruntime

            info = {"format": fmt, "activations": activations, "from_manifest_sha256": sha256_file(m.path(MANIFEST)),
                    "onnxruntime": onnxruntime.__version__, "mobile": mobile}
            if fmt == "ort":
                info |= {"optimization": f"fixed, level {LEVEL[activations]}", "operators_config": OPERATORS_CONFIG}
            packaged = replace(m, graphs=graphs, record=replace(m.record, package=info))
            if activations == "fp16":  # the variant against the bundle it came from, on generated test cards
                writer.write_manifest(packaged.to_dict(), final=False)
                step("measure against the source bundle")
                info["accuracy_vs_source"] = measure(bundle, writer, m, samples)
            writer.write_manifest(packaged.to_dict(), final=True)
            return writer.commit()


def measure(source: Path, writer: BundleWriter, m, samples: int = 64, tokens: int = 16) -> dict:
    """Sequence / token agreement, top-1 and mean KL of the variant being written against its source bundle
    (pgexport/verify/agreement.py's measures, as the accuracy gate reports them), on `samples` held-out items:
    the demo model's evaluation split for a bundle of it, generated images otherwise."""
    from pgexport_runtime import PaliGemma

    from pgexport.verify import gate
    from pgexport.verify.samples import bundle_samples

    cards = bundle_samples(m.record.source, samples, m.geometry.image_size)
    ref = gate.bundle_reference(PaliGemma(source, verify=False), cards, tokens)
    got = PaliGemma(writer.tmp, verify=False, manifest_file=writer.partial_name)
    return gate.evaluate(got, ref, tokens)


def _convert(onnx_path: Path, out_dir: Path, level: str, data_files: tuple[str, ...] = ()) -> str:
    """One graph and its data files -> <name>.ort in out_dir (the tool writes next to its input; the .ort is
    moved). The .ort holds the weights: a static bundle's prefill graphs each get their own copy."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    work = onnx_path.parent / f".{onnx_path.stem}"
    work.mkdir()
    for f in {*onnx_path.parent.glob(onnx_path.name + "*"), *(onnx_path.parent / d for d in data_files)}:
        if f.is_file():
            shutil.move(str(f), work / f.name)
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # the tool logs each config it writes
    saved = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
    os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = level
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the tool prints a line per model
            convert_onnx_models_to_ort(work, output_dir=work, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform="arm")
    except Exception as exc:  # the tool raises its own types; a graph it cannot convert is a one-line error
        raise UserError(f"onnxruntime could not convert {onnx_path.name} to ORT format: "
                        f"{' '.join(str(exc).split())[:300]}") from None
    finally:
        if saved is None:
            os.environ.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)
        else:
            os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = saved
    (ort_file,) = work.glob("*.ort")
    target = f"{onnx_path.stem}.ort"
    shutil.move(str(ort_file), out_dir / target)
    for config in work.glob("*.config"):  # merged over all graphs by _operators_config
        shutil.move(str(config), onnx_path.parent / f"{onnx_path.stem}.config")
    shutil.rmtree(work)
    return target


def _unsigned_int8(path: Path) -> int:
    """A graph's int8 MatMulInteger weights and zero points as the uint8 they were quantized as (plus 128: the same
    products), in place; returns how many tensors changed. onnxruntime turns int8 weights into uint8 on an x86 CPU
    without VNNI, which saturates their products, only while it optimizes a graph it loads: an ORT-format graph
    comes already optimized, so it has to hold uint8 weights to be exact there (tests/test_int8_weights.py)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    head = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in head.graph.initializer}
    names = {i for n in head.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")
             for i in n.input[1:] if i in inits and inits[i].data_type == onnx.TensorProto.INT8}
    if not names:
        return 0
    model = onnx.load(str(path))
    data = {d.value for t in head.graph.initializer for d in t.external_data if d.key == "location"}
    for t in model.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).view(np.uint8) ^ np.uint8(0x80), t.name))
    for f in data:  # rewritten below from memory
        (path.parent / f).unlink()
    tmp = path.with_name(path.name + ".tmp")
    if data:
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=sorted(data)[0])
    else:
        onnx.save(model, str(tmp))
    tmp.replace(path)
    return len(names)


def _to_float16(path: Path, external: bool = False, share: Path | None = None) -> tuple[str, ...]:
    """One graph file rewritten with float16 activations (inputs and outputs float32); -> its data files.

    external: weights in `<file>.data` whatever their size. share: an already converted graph of the same weights
    (a static bundle's decoder) whose external weights this graph's same-named ones become references to, so
    that they are on disk once; the converter is deterministic, so they are the same values."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from pgexport.export.onnx_export import EXTERNAL_DATA_THRESHOLD

    model = onnx.load(str(path))
    for f in path.parent.glob(path.name + ".*"):
        f.unlink()
    # float32, or untyped (an output of a contrib op written by our rewrites): every bundle output is float32
    float_outputs = [o.name for o in model.graph.output
                     if o.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.UNDEFINED)]
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST,
                                     node_block_list=_int8_islands(model.graph), disable_shape_infer=True)
    _keep_float32_outputs(model, float_outputs)
    if share is not None:
        refs = {t.name: t for t in onnx.load(str(share), load_external_data=False).graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
        used = set()
        for t in model.graph.initializer:
            ref = refs.get(t.name)
            if ref is None or (ref.data_type, list(ref.dims)) != (t.data_type, list(t.dims)):
                continue
            if not np.array_equal(numpy_helper.to_array(ref, base_dir=str(share.parent)), numpy_helper.to_array(t)):
                continue  # not the same values after all: this graph keeps its own
            t.CopyFrom(ref)
            used.update(e.value for e in ref.external_data if e.key == "location")
        onnx.save(model, str(path))
        return tuple(sorted(used))
    # the weights' bytes, not model.ByteSize(): protobuf refuses to size a message past 2 GB (EncodeError)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    external = external or weights > EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data")
    if external:  # onnx creates it private; it is as readable as the graph
        (path.parent / (path.name + ".data")).chmod(path.stat().st_mode & 0o777)
    return (path.name + ".data",) if external else ()


def _keep_float32_outputs(model, names: list[str]) -> None:
    """The converter casts an output back to float32 only when it knows the output's type; an output made by a
    contrib operator it has no shape inference for (MatMulNBits: the int4 lm_head's logits) comes out float16.
    Give every such output a Cast to float32, so the runtime's float32 buffers still fit."""
    import onnx

    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if out.name not in names:
            continue
        node = producers.get(out.name)
        is_cast = node is not None and node.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
        if node is not None and not is_cast:
            inner = out.name + "_fp16"
            node.output[list(node.output).index(out.name)] = inner
            for consumer in model.graph.node:
                consumer.input[:] = [inner if i == out.name else i for i in consumer.input]
            model.graph.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=onnx.TensorProto.FLOAT,
                                                          name=f"{inner}_to_float32"))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _int8_islands(graph) -> list[str]:
    """The nodes of the int8 patterns, which take float32 only: onnxruntime's dynamic one (DynamicQuantizeLinear
    and MatMulInteger or their fused forms, the Mul of the two scales, the Cast of the int32 product and the Mul
    that rescales it) and every node of the per-row one."""
    names, scales, products = set(), set(), set()
    for n in graph.node:
        if n.op_type in _INT8_OPS:
            names.add(n.name)
            if n.op_type == "DynamicQuantizeLinear":
                scales.add(n.output[1])
            if n.op_type == "MatMulInteger":
                products.add(n.output[0])
    casts = set()
    for n in graph.node:
        if n.op_type == "Mul" and scales & set(n.input):
            names.add(n.name)
            scales.add(n.output[0])
        if n.op_type == "Cast" and products & set(n.input):
            names.add(n.name)
            casts.add(n.output[0])
    names |= {n.name for n in graph.node if n.op_type == "Mul" and casts & set(n.input)}
    names |= {n.name for n in graph.node if ROW_INT8 in n.name}  # the per-row pattern (quant/rewrite.py), whole
    return sorted(names)


def _operators_config(stage: Path, out_dir: Path) -> None:
    """One required-operators config for all graphs: the union of each graph's domain;opset;ops lines."""
    ops: dict[tuple[str, str], set[str]] = {}
    for config in sorted(stage.glob("*.config")):
        for line in config.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                domain, opset, names = line.split(";")
                ops.setdefault((domain, opset), set()).update(names.split(","))
    lines = ["# The operators of this bundle's graphs, for a reduced onnxruntime build:",
             "#   build.sh --minimal_build --include_ops_by_config " + OPERATORS_CONFIG]
    lines += [f"{d};{o};{','.join(sorted(n))}" for (d, o), n in sorted(ops.items(), key=lambda k: (k[0][0], int(k[0][1])))]
    (out_dir / OPERATORS_CONFIG).write_text("\n".join(lines) + "\n")


def mobile_verdicts(onnx_path: Path) -> dict:
    """onnxruntime's mobile usability checker, per EP: {nodes, supported_nodes, partitions, as_is, fixed_shapes}.

    `as_is` is the checker's suitability of the graph as it is (dynamic shapes count against it);
    `fixed_shapes` what it expects once the dynamic dimensions are fixed (None when there are none)."""
    import tempfile

    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import optimize_model

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(dir=onnx_path.parent) as tmp:  # as the checker's CLI: basic optimizations first
        basic = Path(tmp) / onnx_path.name
        optimize_model(onnx_path, basic, use_external_initializers=True)
        # its shape inference, on the graph without its weights (only their shapes count): the checker's own
        # loader (ModelProtoWithShapeInfo) serializes the whole model, which protobuf refuses past 2 GB
        model = onnx.shape_inference.infer_shapes(onnx.load(basic, load_external_data=False), strict_mode=True)
        dynamic, _ = uc.check_shapes(model.graph)
        checks = {"nnapi": uc.check_nnapi_partitions,
                  "coreml_nn": lambda mp, fixed: uc.check_coreml_partitions(mp, fixed, "coreml_supported_neuralnetwork_ops.md"),
                  "coreml_mlprogram": lambda mp, fixed: uc.check_coreml_partitions(mp, fixed, "coreml_supported_mlprogram_ops.md")}
        out = {}
        for ep, check in checks.items():
            info = check(model, True)
            fixed = check(model, False).suitability().name if dynamic else None
            out[ep] = {"nodes": info.num_nodes, "supported_nodes": info.num_supported_nodes,
                       "partitions": info.num_partitions, "as_is": info.suitability().name, "fixed_shapes": fixed}
    return out
