"""Weights bound to a graph exported from a meta-device module, each read only as it is written.

`torch.onnx.export(..., optimize=True)` on a real model holds the weights in torch, again in the ONNX
program, and once more for every weight its constant folding rewrites (each linear's Transpose), which is
how a 3B build reached 16 GB. Here the module is exported with shapes only (parameters on the meta
device, `optimize=False`), and then:

1. every parameter initializer loses its value, so that onnxscript's optimizer (run as the exporter runs
   it) folds all that does not depend on a weight and nothing that does;
2. the nodes that depend only on weights are folded here, lazily, under the same rule the optimizer
   applies (onnxscript 0.7 `FoldConstantsPass`: a node whose inputs are constants of at most 8,192
   elements, or a Transpose whose large input has no other consumer; so each linear's Transpose(W) becomes
   a transposed initializer and Gemma's RMSNorm `1 + w` a folded scale, while the tied embedding table
   stays one initializer under its Gather and Transpose);
3. every weight becomes an `ir.LazyTensor` that reads its tensor from the `weights` source when the file
   is written (`onnx_ir.save` writes one tensor at a time).

The result is the graph the exporter's own optimizer makes from the real weights: tests compare the two
node by node on tiny PaliGemma 1 and 2.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch

INPUT_SIZE_LIMIT = 8192  # onnxscript.optimizer DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT (0.7)


def to_meta(args):
    """Sample inputs on the meta device, as the module's parameters are."""
    if isinstance(args, (list, tuple)):
        return type(args)(to_meta(a) for a in args)
    return args.to("meta") if isinstance(args, torch.Tensor) else args


def unbind(model: ir.Model, names: dict[str, str]) -> dict[ir.Value, str]:
    """Take the value off every initializer named in `names` (initializer -> parameter name);
    -> initializer value -> parameter name."""
    weights = {}
    for init, param in names.items():
        value = model.graph.initializers[init]
        value.const_value = None
        weights[value] = param
    return weights


def bind(model: ir.Model, weights: dict[ir.Value, str], source) -> None:
    """Fold the weight-only nodes lazily, then give every weight initializer its lazy value."""
    shapes = source.shapes()
    graph = model.graph
    lazy: dict[ir.Value, _Lazy] = {}
    for value, param in weights.items():
        if value.name in graph.initializers:  # the optimizer drops unused parameters (an untied lm_head's table)
            _check_shape(value, shapes[param], param)
            lazy[value] = _Lazy(shapes[param], np.float32, lambda param=param: source.get(param).numpy(),
                                rows=lambda a, b, param=param: source.rows(param, a, b).numpy())
    for node in list(graph):
        if not _foldable(node, lazy):
            continue
        (out,) = node.outputs
        args = [lazy[v] if v in lazy else _constant(v) for v in node.inputs]
        fn = _fold_fn(node, args)
        shape = ir.Shape(fn.shape)
        folded = ir.Value(name=out.name, shape=shape, type=ir.TensorType(_dtype(fn.dtype)),
                          const_value=_lazy_tensor(fn, out.name))
        out.replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        graph.register_initializer(folded)
        lazy[folded] = fn
        for v in node.inputs:
            if v in lazy and not v.uses() and v.name in graph.initializers:
                graph.initializers.pop(v.name)
    for value, fn in lazy.items():
        if value.name in graph.initializers and value.const_value is None:
            value.const_value = _lazy_tensor(fn, value.name)


def _foldable(node: ir.Node, lazy: dict) -> bool:
    """The optimizer's rule, for a node with at least one weight input."""
    inputs = [v for v in node.inputs if v is not None]
    if len(node.outputs) != 1 or not any(v in lazy for v in inputs):
        return False
    if not all(v in lazy or v.const_value is not None for v in inputs):
        return False
    large = [v in lazy and lazy[v].size > INPUT_SIZE_LIMIT for v in inputs]
    if not any(large):
        return True
    return node.op_type == "Transpose" and node.domain in ("", "ai.onnx") and all(
        len(v.uses()) == 1 for v, big in zip(inputs, large) if big)


class _Lazy:
    """A deferred float32 array: its shape now, its values on call; a weight read as it is stored can also be
    read a slice of rows at a time (`rows(a, b)`)."""

    def __init__(self, shape, dtype, fn, rows=None):
        self.shape, self.dtype, self._fn, self.rows = tuple(shape), np.dtype(dtype), fn, rows
        self.size = int(np.prod(self.shape))

    def __call__(self) -> np.ndarray:
        return self._fn()


def _constant(value: ir.Value) -> _Lazy:
    array = value.const_value.numpy()
    return _Lazy(array.shape, array.dtype, lambda: array)


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def _fold_fn(node: ir.Node, args: list[_Lazy]) -> _Lazy:
    """The node as a deferred numpy computation, for the ops that touch weights in a PaliGemma decoder."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        raise NotImplementedError(f"weight-only node {node.name} ({node.domain}::{op})")
    if op == "Transpose":
        (a,) = args
        perm = node.attributes.get_ints("perm", None) or tuple(reversed(range(len(a.shape))))
        return _Lazy(tuple(a.shape[p] for p in perm), a.dtype, lambda: np.ascontiguousarray(a().transpose(perm)))
    if op in _BINARY:
        a, b = args
        shape = np.broadcast_shapes(a.shape, b.shape)
        dtype = np.result_type(a.dtype, b.dtype)
        return _Lazy(shape, dtype, lambda: _BINARY[op](a(), b()).astype(dtype, copy=False))
    if op in ("Cast", "CastLike"):
        a = args[0]
        to = (ir.DataType(node.attributes.get_int("to")).numpy() if op == "Cast" else args[1].dtype)
        return _Lazy(a.shape, to, lambda: a().astype(to))
    raise NotImplementedError(f"weight-only node {node.name} ({op}) has no lazy fold")


def _dtype(dtype: np.dtype) -> ir.DataType:
    return ir.DataType.from_numpy(np.dtype(dtype))


ROWS_KEY = "pgexport.rows"  # tensor.meta: rows(a, b) -> float32 rows a..b, when the tensor can be read so


def _lazy_tensor(fn: _Lazy, name: str) -> ir.LazyTensor:
    tensor = ir.LazyTensor(lambda: ir.tensor(fn(), name=name), dtype=_dtype(fn.dtype), shape=ir.Shape(fn.shape),
                           name=name)
    if fn.rows is not None:
        tensor.meta[ROWS_KEY] = fn.rows
    return tensor


def _check_shape(value: ir.Value, shape: tuple, param: str) -> None:
    if value.shape is not None and tuple(value.shape) != tuple(shape):
        raise RuntimeError(f"{value.name}: graph shape {tuple(value.shape)} != {param} {tuple(shape)}")
