"""torch -> ONNX for one graph, with the checks every graph gets."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from pgexport.source.weights import parameter_names
from pgexport.export import bind
from pgexport.export.attention import TRANSLATIONS, contrib_schemas
from pgexport.export.fusions import fuse_for_ort

OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1 << 30  # past 1 GiB of weights, write a .data file (the protobuf limit is 2 GiB)


def export_graph(module, args, path: Path, input_names, output_names, dynamic_shapes, param_bytes: int,
                 fuse: bool = True, weights=None, write=None) -> ir.Model:
    """Export `module(*args)` to `path` with named inputs/outputs and named dynamic axes; with `fuse`, apply
    onnxruntime's operator fusions (`fusions.fuse_for_ort`) first. Returns the graph as written (with bound
    weights it can be written again: each weight is read from the source as it is written).

    weights: None for a module with real parameters; or (source, model) for a module whose parameters are on
    the meta device (part of `model`, a `weights.meta_model`), its weights then read from `source`
    (`pgexport.source.weights`) one tensor at a time as the file is written (`bind`).

    write: None to save the graph as exported; or `write(model, path)`, which saves it otherwise (quantized)."""
    module.eval()
    external = param_bytes > EXTERNAL_DATA_THRESHOLD
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter(), contrib_schemas():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            bind.to_meta(args) if weights is not None else args,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=external,
            optimize=weights is None,
            verbose=False,
            report=False,
            custom_translation_table=TRANSLATIONS,  # the decoder's in-place attention (attention.py)
        )
        if weights is not None:
            source, model = weights
            params = bind.unbind(program.model, _initializer_params(module, model))
            program.optimize()  # what optimize=True runs; it cannot fold what depends on a weight
            bind.bind(program.model, params, source)
    if fuse:
        fuse_for_ort(program.model)
    model = program.model
    _drop_stack_traces(model)
    del program
    if write is None:
        ir.save(model, str(path), external_data=(path.name + ".data") if external else None)
    else:
        write(model, path)
    _check_io(path, input_names, output_names)
    return model


STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(model: ir.Model) -> None:
    """The exporter records the Python stack that made each node: the exporting machine's source paths, and in
    the branches of an If, the serial numbers of torch's generated code, which change from one export to the
    next in a process (the same graph would not be the same bytes). Neither belongs in a bundle."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.pop(STACK_TRACE, None)


def _initializer_params(module, model) -> dict[str, str]:
    """The exporter's initializer names (the module's parameter names) -> the parameters' names in `model`."""
    names = parameter_names(model)
    return {name: names[id(p)] for name, p in module.named_parameters()}


def _check_io(path: Path, input_names, output_names) -> None:
    model = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(input_names) or got_out != list(output_names):
        raise RuntimeError(f"{path.name}: exported I/O {got_in} -> {got_out} differ from the contract")


class _quiet_exporter:
    """The dynamo exporter logs every step at INFO/WARNING; a build shows its own progress instead."""

    def __enter__(self):
        self._levels = {}
        for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "onnx_ir", "torch._dynamo"):
            lg = logging.getLogger(name)
            self._levels[name] = lg.level
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return False


def param_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total
