"""Rewrite one exported graph to the precisions a recipe asks for.

Weights are found structurally: a MatMul whose second input is a 2-D float initializer is a linear layer
(its module path comes from the exporter's `pkg.torch.onnx.name_scopes` metadata); in the decoder, the
Gather on the embedding table and the lm_head MatMul on Transpose(that table) are the tied pair. The tied
pair is rewritten together: ONE packed table serves GatherBlockQuantized (embedding) and MatMulNBits
(lm_head) — onnxruntime's own quantizer would skip the lm_head, whose weight is not an initializer.

Dynamic int8 is onnxruntime's pattern (DynamicQuantizeLinear, MatMulInteger with per-channel int8 weights),
written node for node as its quantize_dynamic writes it, with its own per-channel quantizer (int8.py). Every
graph is written here with onnx_ir, which keeps external data lazy, and every new weight is packed as the
file is written: a 10 GB decoder is rewritten one tensor at a time.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np
import onnx_ir as ir

from pgexport.export.bind import ROWS_KEY
from pgexport.nbits import Layout, Packed, pack_rtn, pack_rtn_rows
from pgexport.quant.int8 import PerChannel, per_channel_int8
from pgexport.quant.recipes import TABLE, Precision, Recipe
from pgexport.quant.packed_store import StoredPacked

MS_DOMAIN = "com.microsoft"
# Past 64 MiB of weights a rewritten graph keeps them in a .data file: onnxruntime then maps them instead of
# parsing a protobuf copy (a 265 MB inline 3B 4-bit vision encoder held 555 MB after load, 433 MB external).
EXTERNAL_DATA_THRESHOLD = 64 << 20


@dataclass
class GraphReport:
    """What happened to each weight: module -> precision label, plus sizes."""

    weights: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def module_name(node: ir.Node) -> str | None:
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None
    try:
        parts = [p for p in ast.literal_eval(scopes) if p]
    except (ValueError, SyntaxError):
        return None
    # ['', 'layers.0.self_attn.q_proj', 'linear'] -> 'layers.0.self_attn.q_proj'
    return parts[-2] if len(parts) >= 2 else (parts[0] if parts else None)


def _linear_weight(node: ir.Node) -> ir.Value | None:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    b = node.inputs[1]
    if b is None or b.const_value is None or not b.is_initializer():
        return None
    if len(b.const_value.shape) != 2 or b.const_value.dtype != ir.DataType.FLOAT:
        return None
    return b


def _add_initializer(graph: ir.Graph, name: str, value: np.ndarray | ir.TensorProtocol) -> ir.Value:
    tensor = ir.tensor(value) if isinstance(value, np.ndarray) else value
    v = ir.Value(name=_namer(graph).unique(name), const_value=tensor)
    tensor.name = v.name
    v.shape = ir.Shape(tensor.shape)
    v.type = ir.TensorType(tensor.dtype)
    graph.register_initializer(v)
    return v


class _Deferred:
    """One weight, packed when the first of its parts is read (as the graph is saved) and dropped once each part
    has been read: a rewritten graph never holds more than one packed weight and its float source, whatever
    the model's size, and the source may itself be read lazily (a streamed export's bound weights).

    shapes: part name -> shape; pack(float tensor) -> an object with those parts as attributes."""

    def __init__(self, weight: ir.Value, shapes: dict[str, tuple[int, ...]],
                 pack: Callable[[ir.TensorProtocol], object]):
        self.weight, self.shapes, self._pack = weight, shapes, pack
        self._packed = None
        self._unread: set[str] = set()

    def part(self, field: str) -> ir.TensorProtocol:
        if self._packed is None:
            self._packed = self._pack(self.weight.const_value)
            _release(self.weight)
            self._unread = set(self.shapes)
        array = getattr(self._packed, field)
        if array.shape != self.shapes[field]:
            raise AssertionError(f"{self.weight.name}: packed {field} {array.shape}, laid out {self.shapes[field]}")
        self._unread.discard(field)
        if not self._unread:
            self._packed = None
        return ir.tensor(array)


_FIELD_TYPES = {"data": ir.DataType.UINT8, "scales": ir.DataType.FLOAT, "zero_points": ir.DataType.UINT8,
                "quantized": ir.DataType.INT8, "scale": ir.DataType.FLOAT, "zero_point": ir.DataType.INT8}


def _deferred_values(graph: ir.Graph, deferred: _Deferred, names: dict[str, str]) -> dict[str, ir.Value]:
    """An initializer for each part of a deferred weight, named per `names` (part -> initializer name)."""
    return {part: _add_initializer(graph, names[part], ir.LazyTensor(partial(deferred.part, part), _FIELD_TYPES[part],
                                                                     ir.Shape(shape)))
            for part, shape in deferred.shapes.items()}


def _packed_values(graph: ir.Graph, base: str, packed: Packed | _Deferred, layout: Layout) -> list[ir.Value]:
    """[data, scales(, zero points)] initializers: a packed weight's arrays, or a deferred one's lazy parts."""
    names = {name: f"{base}." + (f"q{layout.bits}" if name == "data" else name) for name in layout.shapes()}
    if isinstance(packed, _Deferred):
        return list(_deferred_values(graph, packed, names).values())
    return [_add_initializer(graph, names[name], ir.tensor(getattr(packed, name))) for name in layout.shapes()]


def _rows(tensor: ir.TensorProtocol) -> Callable[[int, int], np.ndarray]:
    """Read a 2-D weight a slice of rows at a time: as its source reads them when it can (a streamed
    export's checkpoint), else from its array (an external tensor's is a memory map)."""
    if ROWS_KEY in tensor.meta:
        return tensor.meta[ROWS_KEY]
    array = tensor.numpy()
    return lambda a, b: np.asarray(array[a:b], dtype=np.float32)


def _namer(graph: ir.Graph) -> "_Namer":
    if "pgexport.namer" not in graph.meta:
        graph.meta["pgexport.namer"] = _Namer(graph)
    return graph.meta["pgexport.namer"]


class _Namer:
    def __init__(self, graph: ir.Graph):
        self.used = set(graph.initializers) | {v.name for n in graph for v in n.outputs if v.name}
        self.used |= {n.name for n in graph if n.name}

    def unique(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def _matmul_nbits(graph: ir.Graph, node: ir.Node, layout: Layout, packed: list[ir.Value], prec: Precision,
                  base: str) -> ir.Node:
    """MatMulNBits replacing `node`, reading the packed initializers [data, scales(, zero points)]."""
    attrs = {"K": layout.k, "N": layout.n, "bits": layout.bits, "block_size": layout.block_size}
    if prec.accuracy_level:
        attrs["accuracy_level"] = prec.accuracy_level
    return ir.node("MatMulNBits", [node.inputs[0], *packed], attrs, domain=MS_DOMAIN, name=(node.name or base) + "_nbits",
                   metadata_props=dict(node.metadata_props))


def _insert(graph: ir.Graph, before: ir.Node, nodes: list[ir.Node]) -> None:
    """Insert `nodes`, their outputs named after them. onnx_ir would number them from a counter that depends
    on the graph's history (exported in this process, or loaded from a file): the same rewrite would be
    written two ways."""
    graph.insert_before(before, nodes)
    for node in nodes:
        for i, out in enumerate(node.outputs):
            out.name = _namer(graph).unique(f"{node.name}_out{i}")


def _replace(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node], new_output: ir.Value) -> None:
    _insert(graph, old, new_nodes)
    out = old.outputs[0]
    name = out.name if out in graph.outputs else None
    out.replace_all_uses_with(new_output, replace_graph_outputs=True)
    if name is not None:  # a graph output keeps its contract name (e.g. "logits")
        out.name = None
        new_output.name = name
    graph.remove(old, safe=True)


def _drop_unused_initializers(graph: ir.Graph) -> None:
    for name in [n for n, v in graph.initializers.items() if not v.uses() and v not in graph.outputs]:
        graph.initializers.pop(name)


def _fp16_cast(graph: ir.Graph, weight: ir.Value, base: str) -> tuple[ir.Node, ir.Value]:
    """Cast(fp16 copy of `weight`) -> float32; the copy is made as the graph is saved (see _Deferred)."""
    source = weight.const_value

    def half() -> ir.TensorProtocol:
        w16 = ir.tensor(source.numpy().astype(np.float16))
        _release(weight)
        return w16

    w16 = _add_initializer(graph, f"{base}.fp16", ir.LazyTensor(half, ir.DataType.FLOAT16, source.shape))
    cast = ir.node("Cast", [w16], {"to": ir.DataType.FLOAT}, name=f"{base}_cast_fp32")
    return cast, cast.outputs[0]


def rewrite_linears(graph: ir.Graph, component: str, recipe: Recipe, report: GraphReport,
                    gptq: Mapping[str, Packed | StoredPacked] | None = None) -> None:
    """MatMul(x, W) -> MatMulNBits / dynamic int8 / Cast(fp16 W) per the recipe."""
    for node in list(graph):
        weight = _linear_weight(node)
        if weight is None:
            continue
        module = module_name(node) or weight.name
        comp = "lm_head" if module == "lm_head" else component
        prec = recipe.precision_for(comp, module)
        report.weights[module] = prec.label()
        base = module
        if prec.kind == "fp32":
            continue
        if prec.kind == "int8":
            _dynamic_int8(graph, node, weight, base)
            continue
        if prec.kind == "int8-rows":
            _row_int8(graph, node, weight, base)
            continue
        if prec.kind == "fp16":
            cast, w32 = _fp16_cast(graph, weight, base)
            _insert(graph, node, [cast])
            node.replace_input_with(1, w32)
            continue
        if prec.kind == "int4-gptq":
            if gptq is None or module not in gptq:
                raise RuntimeError(f"no GPTQ weights for {module}")
            packed = gptq[module]
            layout = packed.layout
            if not isinstance(packed, Packed):  # on disk (packed_store.PackedFiles): read back as the graph is written
                packed = _Deferred(weight, layout.shapes(), lambda _w, stored=packed: stored.load())
        else:
            k, n = weight.const_value.shape
            layout = Layout(prec.bits, prec.block_size, k, n, prec.symmetric)
            packed = _Deferred(weight, layout.shapes(), lambda t, prec=prec: pack_rtn(
                t.numpy(), bits=prec.bits, block_size=prec.block_size, symmetric=prec.symmetric))
        new = _matmul_nbits(graph, node, layout, _packed_values(graph, base, packed, layout), prec, base)
        pre = []
        if isinstance(packed, Packed) and packed.input_perm is not None:  # act-order GPTQ import: permute activations, not g_idx
            perm = _add_initializer(graph, f"{base}.input_perm", packed.input_perm)
            gather = ir.node("Gather", [node.inputs[0], perm], {"axis": -1}, name=f"{base}_input_perm")
            new.replace_input_with(0, gather.outputs[0])
            pre.append(gather)
        _replace(graph, node, [*pre, new], new.outputs[0])
    _drop_unused_initializers(graph)


def _dynamic_int8(graph: ir.Graph, node: ir.Node, weight: ir.Value, base: str) -> None:
    """MatMul(x, W) -> onnxruntime's dynamic int8 pattern, node for node as its quantize_dynamic writes it:
    DynamicQuantizeLinear(x) (one per distinct x), MatMulInteger with per-channel int8 W, Cast to float32,
    Mul by x_scale * W_scale. onnxruntime fuses it into DynamicQuantizeMatMul when it loads the graph."""
    k, n = weight.const_value.shape
    deferred = _Deferred(weight, PerChannel.shapes(k, n), lambda t: per_channel_int8(t.numpy()))
    w = _deferred_values(graph, deferred, {"quantized": f"{base}.q8", "scale": f"{base}.scale",
                                           "zero_point": f"{base}.zero_point"})
    props = dict(node.metadata_props)
    x = node.inputs[0]
    quantized = graph.meta.get(_QUANTIZED_INPUTS)
    if quantized is None:
        quantized = graph.meta[_QUANTIZED_INPUTS] = {}
    new = []
    if x not in quantized:
        dql = ir.node("DynamicQuantizeLinear", [x], name=f"{base}_quantize_input", num_outputs=3,
                      metadata_props=props)
        quantized[x] = tuple(dql.outputs)
        new.append(dql)
    xq, x_scale, x_zero = quantized[x]
    scales = ir.node("Mul", [x_scale, w["scale"]], name=f"{base}_scales", metadata_props=props)
    product = ir.node("MatMulInteger", [xq, w["quantized"], x_zero, w["zero_point"]], name=f"{base}_matmul_integer",
                      metadata_props=props)
    cast = ir.node("Cast", product.outputs, {"to": ir.DataType.FLOAT}, name=f"{base}_cast", metadata_props=props)
    rescale = ir.node("Mul", [cast.outputs[0], scales.outputs[0]], name=f"{base}_rescale", metadata_props=props)
    # as quantize_dynamic leaves them: the nodes' values untyped, the output typed as the MatMul's was. float16
    # conversion (pgexport package) keeps these nodes float32 and places its casts by the types at their edges;
    # typed inner values would get casts between the nodes too
    rescale.outputs[0].type, rescale.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
    _replace(graph, node, [*new, scales, product, cast, rescale], rescale.outputs[0])


_QUANTIZED_INPUTS = "pgexport.dynamic_int8_inputs"  # graph.meta: x -> its DynamicQuantizeLinear outputs
_ROW_INPUTS = "pgexport.row_int8_inputs"  # graph.meta: x -> (its rows in uint8, their scales [R, 1], x's leading shape)
_ROW_CONSTANTS = "pgexport.row_int8_constants"  # graph.meta: the constants the row nodes share
ROW_INT8 = "int8_rows"  # in the name of every node of the per-row int8 pattern (the package keeps them float32)


def _shared_constant(graph: ir.Graph, name: str, value: np.ndarray) -> ir.Value:
    return graph.initializers[name] if name in graph.initializers else _add_initializer(graph, name, value)


def _row_constants(graph: ir.Graph) -> dict[str, ir.Value]:
    if _ROW_CONSTANTS not in graph.meta:
        f32 = lambda v: np.array(v, np.float32)  # noqa: E731
        graph.meta[_ROW_CONSTANTS] = {
            name: _add_initializer(graph, f"{ROW_INT8}.{name}", value) for name, value in {
                "last_axis": np.array([-1], np.int64),
                "tiny": f32(np.finfo(np.float32).tiny), "steps": f32(127.0), "zero": f32(0.0),
                "shift": f32(128.0), "zero_128": np.array(128, np.uint8), "one": f32(1.0)}.items()}
    return graph.meta[_ROW_CONSTANTS]


def _quantize_rows(graph: ir.Graph, x: ir.Value, base: str, props: dict) -> tuple[list[ir.Node], tuple]:
    """x [..., K] -> its rows [R, K] as uint8 (int8 steps of max|row| / 127, plus 128: symmetric per row, one
    QuantizeLinear), their scales [R, 1] and x's leading shape; the nodes, once per distinct x."""
    seen = graph.meta.setdefault(_ROW_INPUTS, {})
    if x in seen:
        return [], seen[x]
    if graph.opset_imports.get("", 0) < 18:  # ReduceMax/ReduceMin take their axes as an input from opset 18
        raise ValueError(f"per-row int8 needs opset 18 or later (the graph has {graph.opset_imports.get('')})")
    c = _row_constants(graph)
    k = x.shape[-1] if x.shape is not None and isinstance(x.shape[-1], int) else None

    def node(op, inputs, name, **attrs):
        return ir.node(op, inputs, attrs, name=f"{base}_{ROW_INT8}_{name}", metadata_props=props)

    lead = node("Shape", [x], "lead", end=-1)
    if k is None:
        width = node("Shape", [x], "width", start=-1)
        shape = node("Concat", [c["last_axis"], width.outputs[0]], "rows_shape", axis=0)
        shape_nodes, rows_shape = [width, shape], shape.outputs[0]
    else:
        shape_nodes, rows_shape = [], _shared_constant(graph, f"{ROW_INT8}.rows_{k}", np.array([-1, k], np.int64))
    rows = node("Reshape", [x, rows_shape], "rows")
    hi = node("ReduceMax", [rows.outputs[0], c["last_axis"]], "max", keepdims=0)
    lo = node("ReduceMin", [rows.outputs[0], c["last_axis"]], "min", keepdims=0)
    neg = node("Neg", [lo.outputs[0]], "neg_min")
    amax = node("Max", [hi.outputs[0], neg.outputs[0], c["tiny"]], "amax")  # tiny: an all-zero row
    scale = node("Div", [amax.outputs[0], c["steps"]], "scale")  # [R]
    zeros = node("Mul", [scale.outputs[0], c["zero"]], "zeros")
    shifted = node("Add", [zeros.outputs[0], c["shift"]], "zero_float")
    zero_point = node("Cast", [shifted.outputs[0]], "zero_point", to=ir.DataType.UINT8)  # 128 for every row
    quantized = node("QuantizeLinear", [rows.outputs[0], scale.outputs[0], zero_point.outputs[0]], "quantize", axis=0)
    row_scale = node("Unsqueeze", [scale.outputs[0], c["last_axis"]], "row_scale")  # [R, 1]
    nodes = [lead, *shape_nodes, rows, hi, lo, neg, amax, scale, zeros, shifted, zero_point, quantized, row_scale]
    seen[x] = (quantized.outputs[0], row_scale.outputs[0], lead.outputs[0])
    return nodes, seen[x]


def _row_int8(graph: ir.Graph, node: ir.Node, weight: ir.Value, base: str) -> None:
    """MatMul(x, W) -> an int8 GEMM with activations quantized per row: x's rows to int8 steps of max|row| / 127
    (once per distinct x: q, k and v share them), W per output column as onnxruntime's quantize_dynamic makes it
    (int8.py), MatMulIntegerToFloat applying the column scales, a Mul applying the row scales.

    Per row, unlike onnxruntime's dynamic pattern (one step for the whole tensor): a row's result depends on that
    row alone, so one outlier token, another image of the batch or a padded row cannot change it. The rows enter
    the GEMM as uint8 with a zero point of 128, the same integers as int8: onnxruntime multiplies uint8 by int8
    on its fastest kernels (AMX tiles, VNNI), int8 by int8 on a slower one."""
    k, n = weight.const_value.shape
    deferred = _Deferred(weight, PerChannel.shapes(k, n), lambda t: per_channel_int8(t.numpy()))
    w = _deferred_values(graph, deferred, {"quantized": f"{base}.q8", "scale": f"{base}.scale",
                                           "zero_point": f"{base}.zero_point"})
    props = dict(node.metadata_props)
    c = _row_constants(graph)
    pre, (rows, row_scale, lead) = _quantize_rows(graph, node.inputs[0], base, props)
    product = ir.node("MatMulIntegerToFloat", [rows, w["quantized"], c["one"], w["scale"], c["zero_128"],
                                               w["zero_point"]],
                      domain=MS_DOMAIN, name=f"{base}_{ROW_INT8}_matmul", metadata_props=props)
    scaled = ir.node("Mul", [product.outputs[0], row_scale], name=f"{base}_{ROW_INT8}_row_scales",
                     metadata_props=props)
    width = _shared_constant(graph, f"{ROW_INT8}.width_{n}", np.array([n], np.int64))
    shape = ir.node("Concat", [lead, width], {"axis": 0}, name=f"{base}_{ROW_INT8}_out_shape", metadata_props=props)
    out = ir.node("Reshape", [scaled.outputs[0], shape.outputs[0]], name=f"{base}_{ROW_INT8}_out",
                  metadata_props=props)
    out.outputs[0].type, out.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
    _replace(graph, node, [*pre, product, scaled, shape, out], out.outputs[0])


def _release(weight: ir.Value) -> None:
    """Unmap a float weight read from the graph's external data once it is packed. A mapped page stays in the
    process's resident set once read: quantizing the 3B float32 decoder (10 GB) peaked at 12.0 GB RSS."""
    release = getattr(weight.const_value, "release", None)
    if release is not None:
        release()


def _tied_pair(graph: ir.Graph) -> tuple[ir.Value, ir.Node | None, ir.Node | None, ir.Node | None]:
    """The embedding table, its Gather, and the Transpose -> MatMul of a tied lm_head."""
    gathers = [n for n in graph if n.op_type == "Gather" and n.inputs[0] is not None
               and n.inputs[0].is_initializer() and n.inputs[0].const_value is not None
               and len(n.inputs[0].const_value.shape) == 2]
    if len(gathers) != 1:
        raise RuntimeError(f"expected one embedding Gather in the decoder, found {len(gathers)}")
    gather = gathers[0]
    table = gather.inputs[0]
    transpose = next((u.node for u in table.uses() if u.node.op_type == "Transpose"), None)
    head = None
    if transpose is not None:
        head = next((u.node for u in transpose.outputs[0].uses() if u.node.op_type == "MatMul"), None)
    return table, gather, transpose, head


def _largest_dividing_block(hidden: int, block: int) -> int:
    while block > 16 and hidden % block:
        block //= 2
    return block


def rewrite_embedding(graph: ir.Graph, recipe: Recipe, report: GraphReport,
                      gptq: Mapping[str, Packed | StoredPacked] | None = None) -> None:
    """Token embedding (+ tied lm_head sharing the same table). An `int4-gptq` table takes GPTQ's codes
    (gptq.quantize_table); a GPTQ checkpoint's import has none, and its table is rounded to nearest."""
    prec = recipe.embedding
    table, gather, transpose, head = _tied_pair(graph)
    tied = head is not None
    packed = None
    if prec.kind == "int4-gptq":
        packed = (gptq or {}).get(TABLE)
        if packed is None:
            report.notes.append("embedding: no GPTQ table (a GPTQ checkpoint's own integers cover the linears "
                                "only); rounded to nearest")
            prec = replace(prec, kind="int4")
    report.weights["embed_tokens" + (" (+ tied lm_head)" if tied else "")] = prec.label()
    if prec.kind == "fp32":
        return
    vocab, hidden = table.const_value.shape
    if prec.kind == "fp16":
        cast, e32 = _fp16_cast(graph, table, "embed_tokens")
        _insert(graph, gather, [cast])
        gather.replace_input_with(0, e32)
        if tied:
            transpose.replace_input_with(0, e32)
        _drop_unused_initializers(graph)
        return
    if packed is not None:  # GPTQ's codes, in MatMulNBits' layout already (N = vocab rows)
        layout, block = packed.layout, packed.layout.block_size
        values = packed if isinstance(packed, Packed) else _Deferred(
            table, layout.shapes(), lambda _t, stored=packed: stored.load())
    else:
        block = _largest_dividing_block(hidden, prec.block_size)
        if block != prec.block_size:
            report.notes.append(f"embedding: hidden size {hidden} is not a multiple of {prec.block_size}; "
                                f"used block {block}")
        # MatMulNBits wants W as [K, N] = [hidden, vocab]; the table is [vocab, hidden], so N = vocab rows.
        layout = Layout(prec.bits, block, hidden, vocab, prec.symmetric)
        values = _Deferred(table, layout.shapes(), lambda t: pack_rtn_rows(
            _rows(t), vocab, hidden, bits=prec.bits, block_size=block, symmetric=prec.symmetric))
    shared = _packed_values(graph, "embed_tokens", values, layout)
    data, scales = shared[:2]  # data [V, k_blocks, blob], scales [V, k_blocks]
    inputs3 = [ir.node("Reshape", [scales, _add_initializer(graph, "embed_tokens.scales_shape",
                                                             np.array([vocab, layout.k_blocks, 1], np.int64))],
                       name="embed_tokens_scales_3d")]
    gbq_inputs = [data, gather.inputs[1], inputs3[0].outputs[0]]
    if not layout.symmetric:
        inputs3.append(ir.node("Reshape", [shared[2], _add_initializer(graph, "embed_tokens.zp_shape",
                                                                       np.array([vocab, -1, 1], np.int64))],
                               name="embed_tokens_zp_3d"))
        gbq_inputs.append(inputs3[-1].outputs[0])
    # GatherBlockQuantized over the 3-D table: [B, S, k_blocks, block] -> Reshape to [B, S, hidden]
    gbq = ir.node("GatherBlockQuantized", gbq_inputs,
                  {"gather_axis": 0, "quantize_axis": 2, "block_size": block, "bits": layout.bits},
                  domain=MS_DOMAIN, name="embed_tokens_gbq")
    flat = ir.node("Reshape", [gbq.outputs[0], _add_initializer(graph, "embed_tokens.out_shape",
                                                                np.array([0, 0, hidden], np.int64))],
                   name="embed_tokens_gbq_reshape")
    _replace(graph, gather, [*inputs3, gbq, flat], flat.outputs[0])
    if tied:
        new = _matmul_nbits(graph, head, layout, shared, prec, "lm_head")  # the same table, not a copy
        _replace(graph, head, [new], new.outputs[0])
        graph.remove(transpose, safe=True)
    _drop_unused_initializers(graph)


def check_fast_path(graph: ir.Graph) -> list[str]:
    """MatMulNBits nodes that would run onnxruntime's slow unpacked path: g_idx or float zero points."""
    problems = []
    for node in graph:
        if node.op_type != "MatMulNBits":
            continue
        inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
        if inputs[4] is not None:
            problems.append(f"{node.name}: has g_idx (act-order without static groups)")
        zp = inputs[3]
        if zp is not None and zp.const_value is not None and zp.const_value.dtype != ir.DataType.UINT8:
            problems.append(f"{node.name}: zero points are {zp.const_value.dtype.name}, not packed uint8")
    return problems


def save_graph(model: ir.Model, path: Path) -> None:
    """Save `model` as `path` (+ `path`.data when large), replacing the files it was loaded from."""
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    stage = path.parent / f".stage-{path.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = size > EXTERNAL_DATA_THRESHOLD
    if not external:
        # Tensors left untouched (a conv weight, a norm) still point into the old `path`.data, which
        # replace_graph_files deletes: read them in so that the new file is self-contained.
        ir.external_data.load_to_model(model)
    ir.save(model, stage / path.name, external_data=(path.name + ".data") if external else None)
    replace_graph_files(path, stage)


def replace_graph_files(path: Path, stage: Path) -> None:
    """Swap `path` and its external data for the files written into `stage`."""
    for old in path.parent.glob(path.name + "*"):
        if old.is_file():
            old.unlink()
    for new in stage.iterdir():
        new.rename(path.parent / new.name)
    stage.rmdir()
