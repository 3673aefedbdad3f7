"""Per-layer sensitivity: the error each quantized linear adds on its own, on real image+prompt activations.

For every linear of the vision encoder and the decoder, the calibration samples are run through the
float32 model while hooks record the layer's inputs X; the layer's weight W is quantized alone with the
precision the recipe gives it, and the report is the relative output error
    ||X W^T - X W_q^T||^2 / ||X W^T||^2
(so 0.01 means the quantized layer's output is off by 1 % in energy). Layers at the top of the list are
the ones to keep at a higher precision with a recipe override. The lm_head is measured the same way on the
final hidden states; with tied weights it is the embedding table, which the recipe's embedding and lm_head
fields quantize together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pgexport.nbits import dequantize, pack_rtn
from pgexport.quant.gptq import DAMP, TABLE_DAMP, gptq_quantize
from pgexport.quant.recipes import Recipe


HEAD = "lm_head (shared embedding table)"


@dataclass(frozen=True)
class LayerError:
    module: str  # name as in the exported graph (and in recipe overrides)
    component: str
    precision: str
    relative_error: float


def _quantize(w: torch.Tensor, x: torch.Tensor, kind: str, block: int, symmetric: bool,
              damp: float = DAMP) -> torch.Tensor | None:
    """W [N, K] quantized as the recipe would; None for float kinds."""
    if kind in ("fp32", "fp16"):
        return w.to(torch.float16).to(torch.float32) if kind == "fp16" else None
    if kind in ("int8", "int8-rows"):  # per-output-channel asymmetric uint8 weights (activations are dynamic)
        lo, hi = w.amin(dim=1, keepdim=True).clamp(max=0), w.amax(dim=1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / 255
        scale = torch.where(scale == 0, 1, scale)
        zero = torch.round(-lo / scale).clamp(0, 255)
        return (torch.round(w / scale + zero).clamp(0, 255) - zero) * scale
    if kind == "int4-gptq":
        return gptq_quantize(w, 2 * x.T @ x / x.shape[0], block, damp=damp)[2]
    bits = {"int8-wo": 8, "int4": 4}[kind]
    return torch.from_numpy(dequantize(pack_rtn(w.numpy().T, bits, block, symmetric)).T.copy())


def layer_errors(model, source_dir, g, recipe: Recipe, samples, progress=None) -> list[LayerError]:
    from pgexport.export.decoder import DecoderWithPast

    from pgexport.quant.calibration import calibration_inputs, run_layer

    dec = DecoderWithPast(model, g)
    tower = model.model.vision_tower
    linears = [(f"tower.{n}", "vision_encoder", m) for n, m in tower.named_modules() if isinstance(m, nn.Linear)]
    linears += [(f"layers.{n}", "decoder_linear", m) for n, m in dec.layers.named_modules() if isinstance(m, nn.Linear)]
    from pgexport.source.sources import load_processor

    processor = load_processor(source_dir)
    with torch.no_grad():
        states = calibration_inputs(model, dec, source_dir, g, samples)
    # hooks only now: each layer sees each sample once (the generate() above would add decode steps)
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in linears}
    handles = [m.register_forward_pre_hook(lambda mod, inp, name=name: inputs[name].append(
        inp[0].reshape(-1, inp[0].shape[-1]).detach())) for name, _, m in linears]
    finals = []  # the lm_head's inputs: final-norm hidden states
    try:
        with torch.no_grad():
            for image, _ in samples:
                tower(processor.image_processor(images=[image], return_tensors="pt")["pixel_values"])
            for s in states:
                for i, layer in enumerate(dec.layers):
                    s["hidden"] = run_layer(dec, layer, i, s)
                finals.append(dec.norm(s["hidden"]).reshape(-1, g.text_hidden))
    finally:
        for h in handles:
            h.remove()
    # The lm_head (tied: the embedding table itself) is the largest 4-bit error of the demo model's int4
    # recipe, and the vocabulary-wide product is large: a few hundred rows of its inputs are enough.
    head = dec.embed.weight if dec.lm_head is None else dec.lm_head.weight
    rows = torch.cat(finals)
    rows = rows[torch.linspace(0, len(rows) - 1, min(len(rows), 256)).long()]
    linears.append((HEAD, "lm_head", None))
    inputs[HEAD] = [rows]
    out = []
    for k, (name, component, mod) in enumerate(linears):
        if progress:
            progress(k, len(linears))
        prec = recipe.precision_for(component, name)
        x = torch.cat(inputs[name]).to(torch.float32)
        w = (head if mod is None else mod.weight).detach().to(torch.float32)
        wq = _quantize(w, x, prec.kind, prec.block_size, prec.symmetric, DAMP if mod is not None else TABLE_DAMP)
        if wq is None:
            err = 0.0
        else:
            ref = x @ w.T
            err = float(((ref - x @ wq.T) ** 2).sum() / max(float((ref**2).sum()), 1e-30))
        out.append(LayerError(name, component, prec.label(), err))
    return sorted(out, key=lambda e: -e.relative_error)


def suggest_recipe(recipe: Recipe, errors: list[LayerError], keep: int) -> dict:
    """A recipe file (as `pgexport build --quant FILE` reads it): `recipe` with its `keep` most sensitive
    quantized layers at 8 bits weight-only. For the shared table, that is the embedding and lm_head fields
    together (the tied table is one initializer, so both must say the same); for linears, overrides placed
    before the recipe's own (the first matching override wins)."""
    eight = {"kind": "int8-wo", "block_size": 32}
    out = recipe.to_dict()
    out["name"] = f"{recipe.name}-sensitive-w8"
    out["description"] = f"{recipe.name} with its {keep} most sensitive layers at 8 bits (pgexport sensitivity)"
    picked = [e for e in errors if e.relative_error > 0][:keep]
    out["overrides"] = [{"match": e.module, "precision": eight} for e in picked if e.module != HEAD] + out["overrides"]
    if any(e.module == HEAD for e in picked):
        out["embedding"] = dict(eight)
        out["lm_head"] = dict(eight)
    return out


def summary_stats(errors: list[LayerError]) -> dict:
    vals = np.array([e.relative_error for e in errors if e.relative_error > 0])
    return {"layers": len(errors), "quantized": int(len(vals)),
            "median": float(np.median(vals)) if len(vals) else 0.0, "max": float(vals.max()) if len(vals) else 0.0}
