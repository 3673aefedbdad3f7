"""onnxruntime operator fusions, applied to each exported graph before it is saved.

The exporter writes Gemma's RMSNorm as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul and the tanh GELU of
Gemma and SigLIP as seven elementwise nodes. onnxruntime's own graph optimizer fuses neither pattern
(the 3B decode profile showed them as ~9 of 90 ms per token), so the graphs are rewritten here, with
onnxscript's ORT fusion rules, into SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization
(residual add + norm), SkipLayerNormalization, FastGelu and RotaryEmbedding: contrib ops every
onnxruntime build has.

Rotary embedding: onnxscript's rule finds x*cos + rotate_half(x)*sin, but its rule for the cos/sin
inputs expects transformers' MatMul(inv_freq, position_ids), which the exporter has already simplified
to Mul(position_ids, inv_freq). `_RotaryFromPositions` matches that form and emits com.microsoft
RotaryEmbedding with cos/sin tables of one row per token of the call (row i = the i-th position id, in batch
order), the op's position ids then 0 .. B*S-1. Tables from position 0 to max(position_ids), as before, were
recomputed on every decode step: 4,131 rows a token at 896 pixels, 1.3 ms of Cos and Sin per step.

Only these rules run. In particular the FusedMatMul rules are left out: they would turn the tied
lm_head's MatMul(x, Transpose(table)) into FusedMatMul, which the quantizer's shared-table rewrite and
MatMulNBits quantization do not recognise. Parity with PyTorch is measured on the fused graphs.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import _ir_utils, pattern


class _RotaryFromPositions(pattern.RewriteRuleClassBase):
    """RotaryEmbedding(x, cos(p*f), sin(p*f)) of the fusion domain -> com.microsoft RotaryEmbedding."""

    def __init__(self):
        super().__init__("RotaryFromPositions", remove_nodes=False)  # cos/sin are shared by every layer

    def pattern(self, op, x, position_ids, axes, inv_freq, interleaved, num_heads):
        freqs = op.Mul(op.Cast(op.Unsqueeze(position_ids, axes), to=ir.DataType.FLOAT), inv_freq)
        emb = op.Concat(freqs, freqs, axis=-1)
        cos = op.Unsqueeze(op.Cos(emb), [1])
        sin = op.Unsqueeze(op.Sin(emb), [1])
        return op.RotaryEmbedding(x, cos, sin, interleaved=interleaved, num_heads=num_heads,
                                  _domain="ai.onnxruntime._fusion")

    def check(self, context, x, position_ids, axes, inv_freq, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not _ir_utils.has_rank(position_ids, 2):
            return result.fail("position_ids is not [batch, seq]", position_ids)
        if not (_ir_utils.is_1d_value(axes, [-1]) or _ir_utils.is_1d_value(axes, [2])):
            return result.fail("positions not unsqueezed on the last axis", axes)
        if inv_freq.const_value is None or inv_freq.const_value.numpy().ndim != 1:
            return result.fail("inv_freq is not a constant vector", inv_freq)
        if not _ir_utils.has_rank(x, 4):
            return result.fail("x is not [batch, heads, seq, head_dim]", x)
        return result

    def rewrite(self, op, x, position_ids, inv_freq, interleaved, num_heads, **_):
        # cos/sin tables [B*S, head_dim / 2], row i for the i-th token's position; the op indexes them by row
        positions = op.Cast(op.Reshape(position_ids, op.Constant(value_ints=[-1, 1])), to=ir.DataType.FLOAT)
        angles = op.Mul(positions, op.Reshape(inv_freq, op.Constant(value_ints=[1, -1])))
        rows = op.Reshape(op.Range(op.Constant(value_int=0), op.Size(position_ids), op.Constant(value_int=1)),
                          op.Shape(position_ids))
        return op.RotaryEmbedding(x, rows, op.Cos(angles), op.Sin(angles), interleaved=interleaved,
                                  num_heads=num_heads, _domain="com.microsoft")


def fuse_for_ort(model: ir.Model) -> dict[str, int]:
    """Rewrite `model` in place; returns how many times each fusion applied."""
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
    from onnxscript.rewriter.ort_fusions.skip_normalization import (
        fuse_skip_layer_normalization,
        fuse_skip_rms_normalization,
    )

    common_passes.ShapeInferencePass()(model)  # the rules check dtypes and ranks
    counts = {
        "SimplifiedLayerNormalization": fuse_rms_normalization(model),
        "SkipSimplifiedLayerNormalization": fuse_skip_rms_normalization(model),
        "SkipLayerNormalization": fuse_skip_layer_normalization(model),
        "FastGelu": fuse_gelu(model),
    }
    if fuse_rotary_embedding(model):  # an intermediate op: only its com.microsoft form can run
        counts["RotaryEmbedding"] = pattern.RewriteRuleSet([_RotaryFromPositions.rule()]).apply_to_model(model)
    optimize(model)  # drop what the rewrites left unused; inline intermediate fusion ops left unmatched
    return counts
