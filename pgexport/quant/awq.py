"""AWQ for the decoder's linear layers: activation-aware per-channel scales, folded into the model before export.

The algorithm (Lin et al., "AWQ", 2023), as done here:
- calibration: the same image+prompt(+greedy answer) activations as GPTQ (calibration.py), layer by layer;
- groups: linears that read one input share one scale vector s over its channels: q/k/v after the attention
  norm, gate/up after the MLP's input norm, and down after up (act(gate) * up is linear in up). v -> o is left
  alone when query and KV heads differ in number (every PaliGemma), as AutoAWQ does;
- search: s = mean|x|^alpha / w^(1 - alpha), w each input channel's mean weight magnitude relative to its block's
  largest (AutoAWQ's "duo scaling"), normalised by sqrt(max * min), for alpha on a grid of 0 .. 0.95; the s whose
  round-to-nearest 4-bit W*s, applied to x/s, is closest to W x on the calibration tokens wins. s = 1, plain
  RTN, is a candidate too, so the search never does worse than RTN on what it measures;
- fold: exactly, so that the float32 model's output is unchanged: W[:, j] *= s_j in each linear of the group
  and the input divided by s_j where it is made: Gemma's RMSNorm multiplies by (1 + w), so
  w_j <- (1 + w_j) / s_j - 1; for down, the rows of up are divided.

The 4-bit grid is onnxruntime's symmetric RTN grid (gptq.group_scales), the one the bundle's linears are then
quantized to, by RTN or by GPTQ (AWQ then GPTQ, as NNCF composes them).

Why here and not a library: llm-compressor 0.14 (AWQModifier) pins transformers <= 5.17 (this project: 5.23),
gptqmodel 7.7 requires torch >= 2.14.1 (the CPU pin is 2.13), and autoawq is archived.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pgexport_runtime.geometry import Geometry

from pgexport.quant.calibration import ANSWER_TOKENS, calibration_inputs, run_layer
from pgexport.quant.gptq import group_scales
from pgexport.source.weights import ChangedWeights

GRID = 20  # alpha = 0, 0.05, ..., 0.95
LOSS_TOKENS = 2048  # calibration tokens the search's output error is measured on (all of them give mean|x|)


def rtn(w: torch.Tensor, block: int, bits: int = 4) -> torch.Tensor:
    """W [N, K] rounded to nearest on the symmetric grid of blocks of `block` along K, dequantized."""
    n, k = w.shape
    scales = group_scales(w, block, bits)
    groups = scales.shape[1]
    padded = torch.zeros(n, groups * block, dtype=w.dtype)
    padded[:, :k] = w
    blocks = padded.view(n, groups, block)
    half = 2 ** (bits - 1)
    codes = torch.clamp(torch.round(blocks / scales[..., None]), -half, half - 1)
    return (codes * scales[..., None]).reshape(n, groups * block)[:, :k]


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], blocks: list[int], grid: int = GRID) -> torch.Tensor:
    """The per-channel scales s [K] for linears `weights` ([N_i, K]) reading activations x [T, K]: the best of
    s = 1 (RTN) and s = mean|x|^alpha / w^(1 - alpha) on the grid, where w is the mean magnitude of each input
    channel's weights relative to their block's largest (AutoAWQ's duo scaling)."""
    x = x.to(torch.float32)
    x_mean = x.abs().mean(dim=0)
    w_mean = torch.cat([_relative(w, b) for w, b in zip(weights, blocks)]).mean(dim=0)
    sample = x if x.shape[0] <= LOSS_TOKENS else x[torch.randperm(x.shape[0], generator=_rng())[:LOSS_TOKENS]]
    refs = [sample @ w.T for w in weights]

    def loss(s: torch.Tensor) -> float:
        return sum(float(((sample @ (rtn(w * s, b) / s).T - ref) ** 2).mean())
                   for w, b, ref in zip(weights, blocks, refs))

    best, best_loss = torch.ones_like(x_mean), loss(torch.ones_like(x_mean))
    for step in range(grid):
        alpha = step / grid
        s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        if (candidate := loss(s)) < best_loss:
            best, best_loss = s, candidate
    return best


def _relative(w: torch.Tensor, block: int) -> torch.Tensor:
    """|W| [N, K] divided by the largest magnitude of its block along K."""
    n, k = w.shape
    groups = -(-k // block)
    padded = torch.zeros(n, groups * block, dtype=w.dtype)
    padded[:, :k] = w.abs()
    blocks = padded.view(n, groups, block)
    return (blocks / (blocks.amax(dim=-1, keepdim=True) + 1e-6)).reshape(n, groups * block)[:, :k]


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def fold_into_norm(norm: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """Gemma's RMSNorm scales by (1 + w): its output divided by s, each linear's input columns multiplied."""
    with torch.no_grad():
        norm.weight.copy_((1 + norm.weight) / s - 1)
        for lin in linears:
            lin.weight.mul_(s)


def fold_into_linear(prev: nn.Linear, lin: nn.Linear, s: torch.Tensor) -> None:
    """prev's output rows divided by s (its bias too), lin's input columns multiplied."""
    with torch.no_grad():
        prev.weight.div_(s[:, None])
        if prev.bias is not None:
            prev.bias.div_(s)
        lin.weight.mul_(s)


def groups(layer: nn.Module) -> list[tuple[str, nn.Module, list[str]]]:
    """(what the scales fold into, that module, the linears reading its output) of one Gemma decoder layer. The
    MLP's input norm is pre_feedforward_layernorm in Gemma 2 (its post_attention_layernorm follows attention)."""
    gemma2 = hasattr(layer, "pre_feedforward_layernorm")
    mlp_norm = "pre_feedforward_layernorm" if gemma2 else "post_attention_layernorm"
    return [("input_layernorm", layer.input_layernorm, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            (mlp_norm, getattr(layer, mlp_norm), ["mlp.gate_proj", "mlp.up_proj"]),
            ("mlp.up_proj", layer.mlp.up_proj, ["mlp.down_proj"])]


def apply_awq(model, source_dir, g: Geometry, recipe, samples,
              progress: Callable[[int, int], None] | None = None) -> dict:
    """Search AWQ scales for every decoder layer of `model` where the recipe makes all of a group's linears 4-bit,
    and fold them: into a loaded model's weights, or, for a streamed one (source/streamed.py), into what its
    layers read from now on (ScaledWeights). -> {group: the spread of its scales (max / min)} for the record."""
    from pgexport.source import streamed

    scales = search(model, source_dir, g, recipe, samples, progress)
    if streamed.streams(model):
        streamed.read_from(model, ScaledWeights(streamed.source_of(model), transforms(model, scales)))
    else:
        fold(model, scales)
    return {name: round(float(s.max() / s.min()), 3) for name, s in scales.items()}


def search(model, source_dir, g: Geometry, recipe, samples, progress=None) -> dict[str, torch.Tensor]:
    """{"layers.<i>.<what the scales fold into>": s} for every group whose linears the recipe makes 4-bit. Each
    layer's inputs come from the unscaled layers before it, which the fold leaves unchanged."""
    from pgexport.export.decoder import DecoderWithPast
    from pgexport.source.streamed import layer_held

    dec = DecoderWithPast(model, g)
    states = calibration_inputs(model, dec, source_dir, g, samples, ANSWER_TOKENS)
    scales = {}
    with torch.no_grad():
        for i, layer in enumerate(dec.layers):
            if progress:
                progress(i, len(dec.layers))
            with layer_held(model, layer):
                scales |= _search_layer(dec, layer, i, recipe, states)
    return scales


def _search_layer(dec, layer, i: int, recipe, states: list[dict]) -> dict[str, torch.Tensor]:
    modules = dict(layer.named_modules())
    wanted = {}
    for prev_name, _, names in groups(layer):
        precs = [recipe.precision_for("decoder_linear", f"layers.{i}.{n}") for n in names]
        if all(p.bits == 4 for p in precs):
            wanted[prev_name] = (names, [p.block_size for p in precs])
    inputs = _inputs_of(dec, layer, i, states, {names[0]: modules[names[0]] for names, _ in wanted.values()})
    return {f"layers.{i}.{prev_name}": search_scales(inputs[names[0]], [modules[n].weight.to(torch.float32)
                                                                           for n in names], blocks)
            for prev_name, (names, blocks) in wanted.items()}


def fold(model, scales: dict[str, torch.Tensor]) -> None:
    """Fold search()'s scales into the model's decoder layers, in the model's own dtype."""
    layers = model.model.language_model.layers
    for key, s in scales.items():
        _, i, prev_name = key.split(".", 2)
        layer = layers[int(i)]
        modules = dict(layer.named_modules())
        _, prev, names = next(grp for grp in groups(layer) if grp[0] == prev_name)
        s = s.to(prev.weight.dtype)
        if isinstance(prev, nn.Linear):
            fold_into_linear(prev, modules[names[0]], s)
        else:
            fold_into_norm(prev, [modules[n] for n in names], s)


def _inputs_of(dec, layer, i: int, states: list[dict], readers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Run layer i on every sample: the real tokens' inputs [T, K] of each reader, and the next layer's inputs
    (the fold that follows leaves the layer's output unchanged, so they are computed once, before it)."""
    seen: dict[str, list] = {name: [] for name in readers}
    keep: list = [None]

    def hook(name):
        def fn(_module, inputs):
            x = inputs[0]
            seen[name].append(x.reshape(-1, x.shape[-1])[keep[0].reshape(-1)].to(torch.float32))
        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in readers.items()]
    try:
        for s in states:
            keep[0] = s["keep"]
            s["hidden"] = run_layer(dec, layer, i, s)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items() if xs}


def transforms(model, scales: dict[str, torch.Tensor]) -> dict[str, list[Callable[[torch.Tensor], torch.Tensor]]]:
    """The fold as functions of the checkpoint's tensors, by their names in it: what ScaledWeights applies."""
    from pgexport.source.weights import parameter_names

    names = parameter_names(model)
    layers = model.model.language_model.layers
    out: dict[str, list] = {}

    def add(module: nn.Module, fn) -> None:
        out.setdefault(names[id(module.weight)], []).append(fn)

    for key, s in scales.items():
        _, i, prev_name = key.split(".", 2)
        layer = layers[int(i)]
        modules = dict(layer.named_modules())
        _, prev, readers = next(grp for grp in groups(layer) if grp[0] == prev_name)
        if isinstance(prev, nn.Linear):
            add(prev, lambda w, s=s: w / s[:, None])
            readers = readers[:1]
        else:
            add(prev, lambda w, s=s: (1 + w) / s - 1)
        for name in readers:
            add(modules[name], lambda w, s=s: w * s)
    return out


class ScaledWeights(ChangedWeights):
    """A weight source that folds AWQ scales into the tensors they change as they are read. A streamed model's
    layers, GPTQ and the export read it."""

    def __init__(self, source, fns: dict[str, list]):
        super().__init__(source)
        self._fns = fns

    def changes(self, name: str) -> bool:
        return name in self._fns

    def changed(self, name: str) -> torch.Tensor:
        w = self._source.get(name, torch.float32)
        for fn in self._fns[name]:
            w = fn(w)
        return w
