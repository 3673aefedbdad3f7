"""GPTQ for the decoder's linear layers, calibrated on image+prompt pairs through the real prefix-LM.

Why here and not gptqmodel: gptqmodel 7.7 requires torch>=2.14.1 (this project pins the 2.13 CPU build;
newer torch here is the multi-GB CUDA build), has no PaliGemma definition, and calibrates on text only.

The algorithm (Frantar et al., "GPTQ", 2022), as done here:
- calibration (calibration.py): each sample runs through the real SigLIP tower and projector, then the decoder
  wrapper that the ONNX graph is exported from, with the prefix-LM mask (image + prompt bidirectional) and the
  model's own greedy answer as a causal suffix, so every layer sees image-conditioned activations;
- sequential: layer i is quantized from inputs produced by the already-quantized layers < i;
- per linear: H = 2/n * sum(x x^T) over real tokens, dampened by 1 % of its mean diagonal; act-order
  (columns by decreasing H_jj) with STATIC groups: the scales of each block of 32/64/128 original columns
  are fixed before the sweep, so the result is a plain block layout and no g_idx reaches the graph;
  lazy batch updates over 128 columns; error feedback through the upper Cholesky factor of H^-1;
- grid: the symmetric 4-bit grid onnxruntime's RTN packer uses (scale = signed absmax / -8, codes 0..15,
  zero point 8), so GPTQ and RTN differ only in rounding decisions; with H = I this module returns RTN;
- output: integer codes and scales packed straight into MatMulNBits' layout (no second rounding).

The token table, when the recipe gives it `int4-gptq` (tied lm_head: one table), is quantized last, as the
lm_head it also is: H from the final-norm hidden states the quantized decoder produces. The same codes serve the
embedding lookup, whose error is each weight's own (a one-hot input's Hessian is the identity), so the table's
H is dampened by its full mean diagonal (TABLE_DAMP), which adds that identity term. Measured on the demo model
(60 fresh items, table alone at 4 bits, blocks of 32): KL 5.7e-3 round-to-nearest, 3.6e-3 GPTQ at 1 % damping
with twice RTN's weight error, 3.7e-3 at TABLE_DAMP with RTN's weight error (+10 %). Rows are independent given
H, so the table goes in slices of TABLE_ROWS rows: its float32 copies stay small at PaliGemma's 257k rows.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np
import torch
from torch import nn

from pgexport_runtime.geometry import Geometry

from pgexport.nbits import Packed, pack_codes
from pgexport.quant.calibration import ANSWER_TOKENS, calibration_inputs, run_layer
from pgexport.quant.recipes import TABLE

DAMP = 0.01
LAZY_BLOCK = 128
TABLE_DAMP = 1.0
TABLE_ROWS = 16384


def group_scales(w: torch.Tensor, block: int, bits: int = 4) -> torch.Tensor:
    """Per-block scales of W [N, K] along K, on onnxruntime's symmetric grid: signed absmax / -2**(bits-1)."""
    n, k = w.shape
    groups = -(-k // block)
    padded = torch.zeros(n, groups * block, dtype=w.dtype)
    padded[:, :k] = w
    blocks = padded.view(n, groups, block)
    idx = blocks.abs().argmax(dim=-1, keepdim=True)
    signed_max = torch.gather(blocks, -1, idx).squeeze(-1)
    scales = signed_max / -(2 ** (bits - 1))
    return torch.where(scales == 0, torch.ones_like(scales), scales)


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, block: int, bits: int = 4,
                  damp: float = DAMP, lazy: int = LAZY_BLOCK) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Quantize W [N, K] given H [K, K], which is consumed (overwritten). Returns codes uint8 [N, groups, block],
    scales [N, groups], W_q. At most two K x K float32 matrices are alive at a time (the down projection's is
    0.82 GB at 10B): the permuted copy, then each factor as the last is dropped."""
    w = w.detach().to(torch.float32).clone()
    h = hessian.detach().to(torch.float32)
    del hessian
    n, k = w.shape
    zero = 2 ** (bits - 1)
    qmax = 2**bits - 1
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = group_scales(w, block, bits)  # static groups, from the original column order

    perm = torch.argsort(torch.diag(h), descending=True)  # act-order
    w = w[:, perm]
    h = h.index_select(0, perm)
    h = h.index_select(1, perm)
    col_group = perm // block
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    h = torch.linalg.cholesky(h)
    h = torch.cholesky_inverse(h)
    hinv = torch.linalg.cholesky(h, upper=True)
    del h

    codes = torch.zeros(n, k, dtype=torch.uint8)
    q_all = torch.zeros_like(w)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = w1[:, j]
            s = scales[:, col_group[i1 + j]]
            q = torch.clamp(torch.round(col / s) + zero, 0, qmax)
            wq = (q - zero) * s
            codes[:, i1 + j] = q.to(torch.uint8)
            q_all[:, i1 + j] = wq
            e = (col - wq) / hinv1[j, j]
            w1[:, j:] -= e.unsqueeze(1) * hinv1[j, j:].unsqueeze(0)
            err1[:, j] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    del w, hinv

    inv = torch.argsort(perm)
    codes, q_all = codes[:, inv], q_all[:, inv]
    groups = scales.shape[1]
    padded = torch.full((n, groups * block), zero, dtype=torch.uint8)
    padded[:, :k] = codes
    return padded.view(n, groups, block).numpy(), scales.numpy(), q_all


def to_packed(codes: np.ndarray, scales: np.ndarray, bits: int, block: int, k: int) -> Packed:
    """MatMulNBits layout: N = output features = rows of the torch weight."""
    return pack_codes(codes, scales, None, bits, block, k)


def quantize_decoder(model, source_dir, g: Geometry, recipe, samples, progress=None,
                     into: MutableMapping | None = None) -> MutableMapping[str, Packed]:
    """GPTQ every decoder linear the recipe marks int4-gptq; module names match the exported graph's.

    The model is loaded, or streams its layers (streamed.py): a layer's weights are then read for its turn and
    dropped after it, so GPTQ holds one layer, its Hessians and the calibration activations. into: where each
    packed weight goes as it is made (packed_store.PackedFiles, a streamed build: on disk); default a dict."""
    from pgexport.export.decoder import DecoderWithPast
    from pgexport.source.streamed import layer_held, streams

    dec = DecoderWithPast(model, g)
    states = calibration_inputs(model, dec, source_dir, g, samples, ANSWER_TOKENS)
    out: MutableMapping[str, Packed] = {} if into is None else into
    restore = not streams(model)  # a loaded model is exported afterwards in float32; a streamed one rereads it
    with torch.no_grad():
        for i, layer in enumerate(dec.layers):
            if progress:
                progress(i, len(dec.layers))
            with layer_held(model, layer):
                _quantize_layer(dec, layer, i, recipe, states, out, restore)
        if recipe.embedding.kind == "int4-gptq":
            out[TABLE] = quantize_table(dec, states, recipe.embedding.block_size)
    return out


def quantize_table(dec, states: list[dict], block: int) -> Packed:
    """GPTQ of the tied token table [V, H], calibrated as the lm_head on the final-norm hidden states."""
    x = torch.cat([dec.norm(s["hidden"]).reshape(-1, dec.g.text_hidden)[s["keep"].reshape(-1)] for s in states])
    hessian = 2 * x.T.to(torch.float32) @ x.to(torch.float32) / x.shape[0]
    table = dec.embed.weight
    codes, scales = [], []
    for start in range(0, table.shape[0], TABLE_ROWS):
        c, sc, _ = gptq_quantize(table[start:start + TABLE_ROWS], hessian.clone(), block, damp=TABLE_DAMP)
        codes.append(c)
        scales.append(sc)
    return to_packed(np.concatenate(codes), np.concatenate(scales), 4, block, table.shape[1])


def _quantize_layer(dec, layer, i: int, recipe, states: list[dict], out: MutableMapping, restore: bool) -> None:
    targets = {}
    for sub, mod in layer.named_modules():
        name = f"layers.{i}.{sub}"
        if isinstance(mod, nn.Linear) and recipe.precision_for("decoder_linear", name).kind == "int4-gptq":
            targets[name] = mod
    hessians = {name: torch.zeros(m.in_features, m.in_features) for name, m in targets.items()}
    counts = dict.fromkeys(targets, 0)
    current_keep: list = [None]

    def hook(name):
        def fn(_module, inputs):
            x, keep = inputs[0], current_keep[0]
            x = x.reshape(-1, x.shape[-1])[keep.reshape(-1)].to(torch.float32)
            total = counts[name] + x.shape[0]
            hessians[name].mul_(counts[name] / total).add_(x.T @ x, alpha=2.0 / total)
            counts[name] = total
        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in targets.items()]
    for s in states:
        current_keep[0] = s["keep"]
        run_layer(dec, layer, i, s)
    for h in handles:
        h.remove()
    originals = {}
    for name, mod in targets.items():
        prec = recipe.precision_for("decoder_linear", name)
        codes, scales, wq = gptq_quantize(mod.weight, hessians.pop(name), prec.block_size)
        out[name] = to_packed(codes, scales, 4, prec.block_size, mod.in_features)
        if restore:
            originals[name] = mod.weight.detach().clone()
        mod.weight.copy_(wq)
    # the next layer calibrates on what this quantized layer produces
    for s in states:
        s["hidden"] = run_layer(dec, layer, i, s)
    for name, weight in originals.items():
        targets[name].weight.copy_(weight)
