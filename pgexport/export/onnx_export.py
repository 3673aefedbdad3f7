"""torch -> ONNX for one graph, with the checks every graph gets."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from .fusions import fuse_for_ort

OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1 << 30  # past 1 GiB of weights, write a .data file (the protobuf limit is 2 GiB)


def export_graph(module, args, path: Path, input_names, output_names, dynamic_shapes, param_bytes: int,
                 fuse: bool = True) -> dict[str, int]:
    """Export `module(*args)` to `path` with named inputs/outputs and named dynamic axes; with `fuse`, apply
    onnxruntime's operator fusions (`fusions.fuse_for_ort`) first. Returns the fusion counts."""
    module.eval()
    external = param_bytes > EXTERNAL_DATA_THRESHOLD
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=external,
            optimize=True,
            verbose=False,
            report=False,
        )
    counts = fuse_for_ort(program.model) if fuse else {}
    program.save(str(path), external_data=external)
    del program
    _check_io(path, input_names, output_names)
    return counts


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
        for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "torch._dynamo"):
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
