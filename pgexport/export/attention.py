"""Attention through onnxruntime's fused operators: GroupQueryAttention in the decoder, writing the KV cache in place
(kv_cache.layout "shared"), and MultiHeadAttention in the vision encoder.

MultiHeadAttention (vision): SigLIP's attention has no mask, so the op gets query/key/value [B, N, heads * D]
and nothing else; onnxruntime's CPU kernel then runs its flash path, which never holds a [N, N] score tensor
per head (at 896 pixels, 16 heads x 4,096^2 float32 = 1.07 GB per layer in the unfused graph). CUDA and
WebGPU have MultiHeadAttention kernels too.

GroupQueryAttention (decoder, "shared" and "static" layouts):

In the "concat" layout the decoder graph returns present = past + this call's keys, a new tensor every step, so
onnxruntime copies the whole past into it each token. In the "shared" layout past and present are one
preallocated buffer of the generation's full length, [B, kv_heads, max_len, head_dim]: the runtime binds the same
memory as input and output, and com.microsoft GroupQueryAttention (onnxruntime >= 1.30 for `causal`) writes only the
new rows when it sees the two are the same. Its arguments, as this graph passes them:
- query/key/value [B, S, heads * head_dim], after the rotary embedding (do_rotary=0);
- seqlens_k [B]: the last row this call writes, per batch row (shared: T - 1 for every row, left padding
  masked by the bias as in the concat graph; static: each row's last position - 1), and
  total_sequence_length = the attention mask's length T. onnxruntime writes rows seqlens_k + 1 - S ..
  seqlens_k and attends over rows 0 .. seqlens_k of each batch row; the bias's rows are T long, so in the static
  layout (T = the buffer's length) nothing about the call depends on how much is cached;
- attention_bias [B, 1, S, T]: the prefix-LM mask, padding and (Gemma 2) the sliding window, so causal=0 and
  local_window_size=-1; softcap (Gemma 2: 50, applied before the bias, as transformers does) and the scale.
onnxruntime refuses a call with S > 1 tokens after a non-empty cache in a batch of several rows; the runtime
never makes one (prefill starts from an empty cache, decode feeds one token).

The op is a torch custom op (its eager body is the reference semantics, used for shapes when exporting) that
the exporter translates with `TRANSLATIONS`; onnx has no schema for the contrib op, so one is registered here
for the exporter to build the node from.
"""

from __future__ import annotations

from contextlib import contextmanager

import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import opset18 as op
from onnxscript.values import Opset

DOMAIN = "com.microsoft"


def _registered(name: str) -> bool:
    try:
        onnx.defs.get_schema(name, 1, DOMAIN)
        return True
    except onnx.defs.SchemaError:
        return False


@contextmanager
def contrib_schemas():
    """onnx's registry holds schemas for the contrib ops while the exporter builds their nodes, and not after:
    these schemas have no shape inference, and onnx's own inference (the mobile checker's, in `package`) would
    otherwise drop the types of their outputs that the exported graph records (a fp16 vision encoder then
    failed strict inference at the Reshape after MultiHeadAttention)."""
    added = _register_schemas()
    try:
        yield
    finally:
        for name in added:
            onnx.defs.deregister_schema(name, 1, DOMAIN)


def _register_schemas() -> list[str]:
    """Register the schemas onnx does not know; -> the names registered here."""
    added = []
    optional = OpSchema.FormalParameterOption.Optional

    def arg(name: str, types: str = "T", required: bool = True) -> OpSchema.FormalParameter:
        if required:
            return OpSchema.FormalParameter(name, types, "")
        return OpSchema.FormalParameter(name, types, "", param_option=optional)

    if not _registered("MultiHeadAttention"):
        onnx.defs.register_schema(OpSchema(
            "MultiHeadAttention", DOMAIN, 1, "onnxruntime's contrib op, the inputs and attributes pgexport uses",
            inputs=[arg("query"), arg("key"), arg("value")], outputs=[arg("output")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
            attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "", required=True),
                        OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "", required=False)]))
        added.append("MultiHeadAttention")
    if _registered("GroupQueryAttention"):
        return added
    ints = ("num_heads", "kv_num_heads", "local_window_size", "do_rotary", "causal")
    floats = ("scale", "softcap")
    onnx.defs.register_schema(OpSchema(
        "GroupQueryAttention", DOMAIN, 1, "onnxruntime's contrib op, the inputs and attributes pgexport uses",
        inputs=[arg("query"), arg("key"), arg("value"), arg("past_key"), arg("past_value"), arg("seqlens_k", "M"),
                arg("total_sequence_length", "M"), arg("cos_cache", required=False),
                arg("sin_cache", required=False), arg("position_ids", "P", required=False),
                arg("attention_bias", required=False)],
        outputs=[arg("output"), arg("present_key"), arg("present_value")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], ""),
                          ("P", ["tensor(int64)"], "")],
        attributes=[OpSchema.Attribute(n, OpSchema.AttrType.INT, "", required=False) for n in ints]
        + [OpSchema.Attribute(n, OpSchema.AttrType.FLOAT, "", required=False) for n in floats]))
    added.append("GroupQueryAttention")
    return added


_msft = Opset(DOMAIN, 1)


@torch.library.custom_op("pgexport::group_query_attention", mutates_args=())
def group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
                          past_value: torch.Tensor, seqlens: torch.Tensor, bias: torch.Tensor, num_heads: int,
                          kv_heads: int, scale: float, softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output [B, S, heads * D], present key, present value [B, kv_heads, max_len, D]): row b's keys and values
    written at rows seqlens[b] + 1 - S .. seqlens[b] of copies of the buffers, attention over their first T rows
    (those past seqlens[b] are masked by the bias, as onnxruntime never reads them)."""
    b, s, _ = query.shape
    d = past_key.shape[3]
    total = bias.shape[-1]
    present_key, present_value = past_key.clone(), past_value.clone()
    for row, last in enumerate(seqlens.tolist()):
        present_key[row, :, last + 1 - s:last + 1] = key[row].view(s, kv_heads, d).transpose(0, 1)
        present_value[row, :, last + 1 - s:last + 1] = value[row].view(s, kv_heads, d).transpose(0, 1)
    groups = num_heads // kv_heads
    q = query.view(b, s, num_heads, d).transpose(1, 2)
    k = present_key[:, :, :total].repeat_interleave(groups, 1)
    v = present_value[:, :, :total].repeat_interleave(groups, 1)
    scores = q @ k.transpose(2, 3) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    out = torch.softmax(scores + bias, dim=-1) @ v
    return out.transpose(1, 2).reshape(b, s, num_heads * d), present_key, present_value


@group_query_attention.register_fake
def _shapes(query, key, value, past_key, past_value, seqlens, bias, num_heads, kv_heads, scale, softcap):
    return query.new_empty(query.shape), past_key.new_empty(past_key.shape), past_value.new_empty(past_value.shape)


def _to_onnx(query, key, value, past_key, past_value, seqlens, bias, num_heads: int, kv_heads: int, scale: float,
             softcap: float):
    total = op.Shape(bias, start=-1)  # [1] int64: T
    return _msft.GroupQueryAttention(
        query, key, value, past_key, past_value, seqlens, op.Cast(op.Squeeze(total), to=onnx.TensorProto.INT32),
        None, None, None, bias, num_heads=num_heads, kv_num_heads=kv_heads, scale=scale, softcap=softcap,
        causal=0, do_rotary=0, local_window_size=-1)


@torch.library.custom_op("pgexport::multi_head_attention", mutates_args=())
def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                         scale: float) -> torch.Tensor:
    """Unmasked attention: query and the output [B, N, heads * D], key and value [B, T, heads * D]."""
    b, n, width = query.shape
    q, k, v = (t.view(b, -1, num_heads, width // num_heads).transpose(1, 2) for t in (query, key, value))
    out = torch.softmax(q @ k.transpose(2, 3) * scale, dim=-1) @ v
    return out.transpose(1, 2).reshape(b, n, width)


@multi_head_attention.register_fake
def _mha_shape(query, key, value, num_heads, scale):
    return query.new_empty(query.shape)


def _mha_to_onnx(query, key, value, num_heads: int, scale: float):
    return _msft.MultiHeadAttention(query, key, value, num_heads=num_heads, scale=scale)


def unmasked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function (AttentionInterface) over `multi_head_attention`, for attention without
    a mask: query/key/value [B, heads, N, D] in, ([B, N, heads, D], None) out, as transformers' own return."""
    if attention_mask is not None or dropout or kwargs.get("is_causal"):
        raise ValueError("unmasked_attention: this attention has a mask, dropout or is causal")
    b, heads, n, d = query.shape
    flat = [t.transpose(1, 2).reshape(b, t.shape[2], heads * d) for t in (query, key, value)]
    scale = d ** -0.5 if scaling is None else float(scaling)
    return multi_head_attention(*flat, heads, scale).view(b, n, heads, d), None


TRANSLATIONS = {torch.ops.pgexport.group_query_attention.default: _to_onnx,
                torch.ops.pgexport.multi_head_attention.default: _mha_to_onnx}
