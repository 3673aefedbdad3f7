"""Decoder-with-past graph: one graph for prefill (S > 1, empty past) and decode (S = 1).

Every module that holds weights is transformers' own (embedding, norms, q/k/v/o projections, MLP,
rotary embedding); only the wiring of a layer is written out here, because the graph has to take the
KV cache and the prefix-LM mask as plain tensors, which transformers' Cache objects and mask factories
do not export. Parity with transformers is measured at every build (pgexport.verify.parity).

Inputs (pgexport_runtime.io_names): input_ids, image_embeds, attention_mask, position_ids,
token_type_ids, logits_index, past_key_values.{i}.key/value. Outputs: logits, present.{i}.key/value.

Quirks, as transformers 5.x does them:
- text embeddings are multiplied by sqrt(hidden) inside embed_tokens; image embeddings are not scaled.
- position ids are 1-based (the runtime computes them from the padding mask).
- attention over the prefix (image + bos + prompt + "\\n", token_type 0) is bidirectional, the suffix is
  causal, padding is masked; in Gemma 2 the prefix block also ignores the sliding window (transformers
  ORs the block mask onto the sliding-window causal mask).
- Gemma 2: attention logits soft-capped before the mask, final logits soft-capped, post-attention and
  pre/post-feedforward norms, sliding window on alternate layers, scale query_pre_attn_scalar**-0.5.
- the lm_head is tied to the embedding table: the graph reuses that one initializer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_layout import CONCAT, KvLayout


class DecoderWithPast(nn.Module):
    """kv_layout (pgexport_runtime.kv_layout) "concat": past [B, kv_heads, P, D] in, present
    [B, kv_heads, P + S, D] out. "shared": past and present are one buffer [B, kv_heads, max_len, D] that the
    graph writes in place (attention.py); the cached length is then the attention mask's length less this call's
    tokens. "static": the same one buffer, but the attention mask covers all of it ([B, max_len], 1 = a row that
    holds a real token) and a token's row is its position - 1, so every row's tokens are right-aligned from row
    0: the rows each call writes follow from position_ids, and no input's length depends on the cache's."""

    def __init__(self, model, g: Geometry, kv_layout: KvLayout = CONCAT):
        super().__init__()
        lm = model.model.language_model
        self.g, self.shared, self.static = g, kv_layout.in_place, kv_layout.fixed_shape
        self.embed = lm.embed_tokens  # GemmaTextScaledWordEmbedding: lookup * sqrt(hidden)
        self.layers = lm.layers
        self.norm = lm.norm
        self.rotary = lm.rotary_emb
        self.lm_head = None if g.tie_word_embeddings else model.lm_head

    def forward(self, input_ids, image_embeds, attention_mask, position_ids, token_type_ids, logits_index, past):
        g = self.g
        hidden = self._embed(input_ids, image_embeds, token_type_ids)
        seqlens = None  # shared: every row's cache ends where the attention mask does
        if self.static:
            rows = position_ids - 1
            seqlens = rows[:, -1].to(torch.int32)  # the last row this call writes, per batch row
        else:
            past_len = attention_mask.shape[1] - input_ids.shape[1] if self.shared else past[0].shape[2]
            rows = (torch.arange(input_ids.shape[1], device=input_ids.device) + past_len).expand_as(input_ids)
        full_bias, sliding_bias = self._attention_bias(attention_mask, token_type_ids, rows)
        cos, sin = self.rotary(hidden, position_ids)

        presents = []
        for i, layer in enumerate(self.layers):
            bias = sliding_bias if g.sliding_layers[i] else full_bias
            hidden, k, v = run_layer(g, layer, hidden, cos, sin, bias, past[2 * i], past[2 * i + 1], self.shared,
                                     seqlens)
            presents += [k, v]

        hidden = self.norm(hidden)
        # Only the rows the caller asks for go through the (vocab-sized) lm_head.
        index = logits_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        hidden = torch.gather(hidden, 1, index)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)
        if g.final_softcap is not None:
            logits = torch.tanh(logits / g.final_softcap) * g.final_softcap
        return (logits, *presents)

    def _embed(self, input_ids, image_embeds, token_type_ids):
        """Token embeddings, with the k-th <image> token of each row taking image_embeds[row, k].

        As in transformers: only as many <image> tokens as there are image embeddings are replaced, and only in
        the prefix (a generated or teacher-forced <image> id, token type 1, keeps its own embedding, whatever
        image_embeds a decode step is given); ids past the embedding table (an out-of-vocabulary image token)
        are looked up as id 0 before replacement.
        """
        is_image = (input_ids == self.g.image_token_id) & (token_type_ids == 0)
        slot = torch.cumsum(is_image.to(torch.int64), dim=1) * is_image.to(torch.int64)
        is_image = is_image & (slot <= image_embeds.shape[1])
        slot = torch.where(is_image, slot, torch.zeros_like(slot))
        lookup = torch.where(input_ids >= self.embed.weight.shape[0], torch.zeros_like(input_ids), input_ids)
        text = self.embed(lookup)
        # A zero row in front: slot 0 (not an image token) reads it, so decode steps may pass no images.
        padded = F.pad(image_embeds, (0, 0, 1, 0))
        image = torch.gather(padded, 1, slot.unsqueeze(-1).expand(-1, -1, padded.shape[-1]))
        return torch.where(is_image.unsqueeze(-1), image, text)

    def _attention_bias(self, attention_mask, token_type_ids, rows):
        """Additive [B,1,S,T] biases (0 = attend, dtype-min = masked) for full and sliding layers. rows [B, S]:
        the cache row (key index) each of this call's tokens is written to, consecutive within a batch row."""
        g = self.g
        seq = token_type_ids.shape[1]
        k_pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        causal = k_pos[None, None, :] <= rows[:, :, None]  # [B, S, T]
        # Prefix block: both query and key are prefix tokens of this call. Cached keys never are, which is
        # what transformers does (the block mask is built on the first iteration only).
        offset = k_pos[None, :] - rows[:, :1]  # [B, T]: a key's index within this call's tokens
        in_call = (offset >= 0) & (offset < seq)
        key_type = torch.gather(token_type_ids, 1, offset.clamp(0, seq - 1))
        key_prefix = in_call & (key_type == 0)
        block = (token_type_ids[:, :, None] == 0) & key_prefix[:, None, :]  # [B, S, T]
        keep = attention_mask[:, None, :].to(torch.bool)
        minval = torch.finfo(torch.float32).min
        zero = torch.zeros((), dtype=torch.float32)
        full = torch.where((causal | block) & keep, zero, minval).unsqueeze(1)
        if g.sliding_window is None or not any(g.sliding_layers):
            return full, full
        in_window = (rows[:, :, None] - k_pos[None, None, :]) < g.sliding_window
        sliding = torch.where((causal & in_window | block) & keep, zero, minval).unsqueeze(1)
        return full, sliding


def run_layer(g: Geometry, layer, hidden, cos, sin, bias, past_k, past_v, shared: bool = False, seqlens=None):
    """One decoder layer on plain tensors: (hidden, present key, present value). shared: the KV cache is one
    buffer written in place (attention.py), the last row written per batch row given by seqlens [B] int32, or
    (None) the bias's last key."""
    residual = hidden
    x = layer.input_layernorm(hidden)
    if shared:
        attn_out, k, v = _shared_attention(g, layer.self_attn, x, cos, sin, bias, past_k, past_v, seqlens)
    else:
        attn_out, k, v = _attention(g, layer.self_attn, x, cos, sin, bias, past_k, past_v)
    if g.family == "paligemma2":
        hidden = residual + layer.post_attention_layernorm(attn_out)
        hidden = hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
    else:
        hidden = residual + attn_out
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, k, v


def _attention(g: Geometry, attn, x, cos, sin, bias, past_k, past_v):
    b, s, _ = x.shape
    q = attn.q_proj(x).view(b, s, g.num_heads, g.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, g.num_kv_heads, g.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, g.num_kv_heads, g.head_dim).transpose(1, 2)
    q, k = _apply_rope(q, k, cos, sin)
    k = torch.cat([past_k, k], dim=2)  # present = past + this call's keys
    v = torch.cat([past_v, v], dim=2)
    # Grouped-query attention without repeating K/V per query head: the query heads that share a KV head
    # (consecutive, as repeat_interleave would pair them) are stacked along the sequence axis, so one
    # MatMul per KV head reads the cache once. Repeating it (an Expand in the graph) copied the whole
    # cache every decode step: 7 of 106 ms per token at 3B.
    groups = g.num_heads // g.num_kv_heads
    qg = q.reshape(b, g.num_kv_heads, groups * s, g.head_dim)
    masked = _masked_attention(g)
    if g.attn_softcap is None:
        # A call of several tokens where no key is masked for any query (a batch-1 prefill of the prefix) takes
        # onnxruntime's unmasked MultiHeadAttention, whose CPU kernel never holds the scores: at 896 pixels they
        # are 8 heads x 4,099^2 float32 = 538 MB per tensor, several alive at once. A decode step's scores are
        # one row per head, and its MatMuls decode faster than that kernel (1.34x at 4,099 cached tokens). The
        # op has no soft-cap, so Gemma 2 always takes the masked path.
        # One comparison, so that a GPU backend reads one bool back for the If: the bias's minimum is 0 when
        # nothing is masked (float32's lowest otherwise), and 1 - S is 0 for a single token.
        unmasked = bias.reshape(-1).amin(0) > 1 - torch.scalar_tensor(s)
        flat = torch.cond(unmasked, _unmasked_attention(g), masked, (qg, k, v, bias))
    else:
        flat = masked(qg, k, v, bias)
    out = flat.view(b, g.num_kv_heads, groups, s, g.head_dim).reshape(b, g.num_heads, s, g.head_dim)
    out = out.transpose(1, 2).reshape(b, s, g.num_heads * g.head_dim)
    return attn.o_proj(out), k, v


def _masked_attention(g: Geometry):
    """Attention over the stacked query heads qg [B, kv_heads, groups * S, D] with the additive bias
    [B, 1, S, T]: the scores are computed whole. -> the output [B, kv_heads, groups * S, D], flattened (the two
    branches of torch.cond must agree on strides, and flat tensors always do)."""

    def attend(qg, k, v, bias):
        b, kv_heads, rows, _ = qg.shape
        s, total = rows // (g.num_heads // kv_heads), k.shape[2]
        scores = torch.matmul(qg, k.transpose(2, 3)).view(b, g.num_heads, s, total) * g.attn_scale
        if g.attn_softcap is not None:
            scores = torch.tanh(scores / g.attn_softcap) * g.attn_softcap
        probs = torch.softmax(scores + bias, dim=-1)
        return torch.matmul(probs.view(b, kv_heads, rows, total), v).reshape(-1)

    return attend


def _unmasked_attention(g: Geometry):
    """The same attention when the bias masks nothing, through MultiHeadAttention (attention.py): one head per
    KV head, whose query rows are the stacked query heads."""
    from pgexport.export.attention import multi_head_attention

    def attend(qg, k, v, bias):
        b, kv_heads, rows, d = qg.shape
        query, key, value = (t.transpose(1, 2).reshape(b, t.shape[2], kv_heads * d) for t in (qg, k, v))
        out = multi_head_attention(query, key, value, kv_heads, g.attn_scale)
        return out.view(b, rows, kv_heads, d).transpose(1, 2).reshape(-1)

    return attend


def _shared_attention(g: Geometry, attn, x, cos, sin, bias, past_k, past_v, seqlens=None):
    from pgexport.export.attention import group_query_attention

    b, s, _ = x.shape
    if seqlens is None:
        seqlens = torch.full_like(x[:, 0, 0], bias.shape[-1] - 1, dtype=torch.int32)
    q = attn.q_proj(x).view(b, s, g.num_heads, g.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, g.num_kv_heads, g.head_dim).transpose(1, 2)
    q, k = _apply_rope(q, k, cos, sin)
    q = q.transpose(1, 2).reshape(b, s, g.num_heads * g.head_dim)
    k = k.transpose(1, 2).reshape(b, s, g.num_kv_heads * g.head_dim)
    out, k, v = group_query_attention(q, k, attn.v_proj(x), past_k, past_v, seqlens, bias, g.num_heads,
                                      g.num_kv_heads, g.attn_scale, float(g.attn_softcap or 0.0))
    return attn.o_proj(out), k, v


def _apply_rope(q, k, cos, sin):
    """Rotary embedding as in transformers' apply_rotary_pos_emb (rotate_half convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q.shape[-1] // 2

    def rotate(x):
        return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

    return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin


def sample_inputs(g: Geometry, kv_layout: KvLayout = CONCAT) -> tuple:
    """Batch 2, three new tokens after two cached ones: no dimension is 0 or 1, so none gets specialised (shared:
    in a buffer of 6, which is neither; static: a mask of 7 over a buffer of 8, so that the two are not taken
    for one dimension)."""
    batch, seq, past = 2, 3, 2
    room = 8 if kv_layout.fixed_shape else past + seq + 1 if kv_layout.in_place else past
    ids = torch.tensor([[g.image_token_id, g.bos_token_id, 5], [g.image_token_id, g.bos_token_id, 6]])
    image_embeds = torch.randn(batch, 2, g.text_hidden, generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    if kv_layout.fixed_shape:
        attention_mask = torch.cat([attention_mask, torch.zeros(batch, 2, dtype=torch.int64)], dim=1)
    position_ids = torch.arange(past + 1, past + seq + 1).repeat(batch, 1)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.int64)
    logits_index = torch.tensor([[1, 2], [1, 2]])
    kv = [torch.randn(batch, g.num_kv_heads, room, g.head_dim) for _ in range(2 * g.text_layers)]
    return (ids, image_embeds, attention_mask, position_ids, token_type_ids, logits_index, kv)


def input_names(g: Geometry) -> list[str]:
    names = [io.INPUT_IDS, io.DECODER_IMAGE_EMBEDS, io.ATTENTION_MASK, io.POSITION_IDS, io.TOKEN_TYPE_IDS, io.LOGITS_INDEX]
    for i in range(g.text_layers):
        names += [io.past_key(i), io.past_value(i)]
    return names


def output_names(g: Geometry) -> list[str]:
    names = [io.LOGITS]
    for i in range(g.text_layers):
        names += [io.present_key(i), io.present_value(i)]
    return names


def dynamic_shapes(g: Geometry) -> tuple:
    bs = {0: io.BATCH, 1: io.SEQ}
    kv = [{0: io.BATCH, 2: io.PAST} for _ in range(2 * g.text_layers)]
    return (
        bs,
        {0: io.BATCH, 1: io.IMAGE_TOKENS},
        {0: io.BATCH, 1: io.TOTAL},
        bs,
        bs,
        {0: io.BATCH, 1: io.KEEP},
        kv,
    )
