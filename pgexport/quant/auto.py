"""`--quant auto`: 8 bits where they buy the most agreement per byte, 4 bits elsewhere, until a target holds.

The units chosen between are each decoder linear, the token table (the embedding and a tied lm_head are one
initializer; untied, each is its own unit) and the vision encoder (all its linears together). Every unit has a
4-bit form, what the base recipe gives it (GPTQ's own weights where GPTQ ran, round-to-nearest blocks
otherwise), and an 8-bit form (8-bit weight-only blocks of 32), each as the dequantized float32 weights the
bundle's kernels compute with.

Sensitivity is measured where it shows: the mean KL(fp32 || model with that one unit at 4 bits) of the
next-token distributions, teacher-forced along the fp32 model's greedy answers on the calibration samples. A
layer's relative output error does not predict this: an early layer's small error grows through the stack, and
the lm_head's error lands directly on the distribution.

Units are promoted to 8 bits in order of KL per byte the promotion adds. The number promoted is the smallest
whose calibration agreement (every unit in its chosen form, greedy against the fp32 model's greedy answers)
reaches the target, found by bisection over that order: agreement is taken to grow with the number promoted,
which holds for the order's front, where the large KLs are. The accuracy gate then measures the bundle as it
ships on held-out samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from pgexport_runtime.errors import UserError

from pgexport.estimate import bytes_per_parameter
from pgexport.nbits import Packed, dequantize, pack_rtn
from pgexport.quant.recipes import TABLE, Override, Precision, Recipe

EIGHT = Precision(kind="int8-wo", block_size=32)
TABLE_UNIT, VISION = "embedding/lm_head table", "vision_encoder"


@dataclass(frozen=True)
class Unit:
    name: str  # a decoder module (as recipe overrides match it), TABLE_UNIT, "embedding", "lm_head" or VISION
    params: tuple[nn.Parameter, ...]
    four: Precision  # its precision in the base recipe
    extra_bytes: int  # what its 8-bit form adds over the 4-bit one


@dataclass(frozen=True)
class Step:
    promoted: int  # units at 8 bits: the first `promoted` of the order
    extra_bytes: int
    sequence_agreement: float
    mean_kl: float


def _bytes(p: Precision, n_weights: int) -> float:
    return n_weights * bytes_per_parameter(p)


def units(model, dec, recipe: Recipe) -> list[Unit]:
    """The units of `model` (dec: its DecoderWithPast) the base recipe quantizes to 4 bits."""
    out = []

    def add(name: str, params: list[nn.Parameter], four: Precision) -> None:
        if four.bits != 4:
            return
        n = sum(p.numel() for p in params)
        out.append(Unit(name, tuple(params), four, int(_bytes(EIGHT, n) - _bytes(four, n))))

    tower = model.model.vision_tower
    add(VISION, [m.weight for m in tower.modules() if isinstance(m, nn.Linear)],
        recipe.precision_for("vision_encoder", None))
    for i, layer in enumerate(dec.layers):
        for sub, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                name = f"layers.{i}.{sub}"
                add(name, [mod.weight], recipe.precision_for("decoder_linear", name))
    if dec.lm_head is None:  # tied: one table, which the recipe's embedding and lm_head fields set together
        add(TABLE_UNIT, [dec.embed.weight], recipe.embedding)
    else:
        add("embedding", [dec.embed.weight], recipe.embedding)
        add("lm_head", [dec.lm_head.weight], recipe.lm_head)
    return out


class Forms:
    """Puts units in their 4- or 8-bit form by replacing their parameters' data, and back to float32. The
    float32 tensors are kept aside, never modified: the graphs are exported from them afterwards."""

    def __init__(self, all_units: list[Unit], gptq: Mapping[str, Packed] | None):
        self.units, self.gptq = all_units, gptq or {}
        self.originals = {id(p): p.data for u in all_units for p in u.params}

    def _form(self, unit: Unit, p: nn.Parameter, bits: int) -> torch.Tensor:
        w = self.originals[id(p)]
        key = TABLE if unit.name == TABLE_UNIT else unit.name
        if bits == 4 and unit.four.kind == "int4-gptq" and key in self.gptq:
            wq = dequantize(self.gptq[key]).T
        else:
            prec = unit.four if bits == 4 else EIGHT
            # a [N, K] weight is MatMulNBits' [K, N] transposed; the table's rows are blocked along H the same way
            wq = dequantize(pack_rtn(w.numpy().T, bits, prec.block_size, prec.symmetric)).T
        return torch.from_numpy(np.ascontiguousarray(wq, dtype=np.float32)).reshape(w.shape)

    def set(self, bits: Mapping[str, int | None]) -> None:
        """bits: unit name -> 4, 8 or None (float32); units not named go back to float32."""
        for u in self.units:
            b = bits.get(u.name)
            for p in u.params:
                p.data = self.originals[id(p)] if b is None else self._form(u, p, b)

    def restore(self) -> None:
        self.set({})


class Scorer:
    """The calibration samples' greedy answers and teacher-forced log-probabilities from the fp32 model, and
    the same measured on the model as Forms left it."""

    def __init__(self, ref, samples, max_new_tokens: int):
        self.ref, self.max_new_tokens = ref, max_new_tokens
        self.inputs = [ref.inputs([image], [prompt]) for image, prompt in samples]
        self.greedy, self.logprobs = [], []
        for inputs in self.inputs:
            tokens = ref.greedy(inputs, max_new_tokens)[0]
            self.greedy.append(tokens)
            self.logprobs.append(ref.scored(inputs, tokens))

    def mean_kl(self) -> float:
        kls = []
        for inputs, tokens, p_log in zip(self.inputs, self.greedy, self.logprobs):
            if tokens:
                q_log = self.ref.scored(inputs, tokens).astype(np.float64)
                kls.append((np.exp(p_log.astype(np.float64)) * (p_log - q_log)).sum(-1))
        return float(max(np.concatenate(kls).mean(), 0.0)) if kls else 0.0

    def agreement(self) -> float:
        same = [self.ref.greedy(inputs, self.max_new_tokens)[0] == tokens
                for inputs, tokens in zip(self.inputs, self.greedy)]
        return float(np.mean(same))


def choose(model, source_dir, g, recipe: Recipe, samples, max_new_tokens: int,
           gptq: Mapping[str, Packed] | None = None, progress=None) -> tuple[Recipe, dict]:
    """The base recipe with the units that reach `recipe.target_agreement` on `samples` promoted to 8 bits, and
    the report for the manifest. The model's weights are float32 again on return."""
    from pgexport.export.decoder import DecoderWithPast
    from pgexport.verify.reference import TorchReference

    target = recipe.target_agreement
    dec = DecoderWithPast(model, g)
    all_units = units(model, dec, recipe)
    forms = Forms(all_units, gptq)
    ref = TorchReference.for_model(model, source_dir, g)
    steps: list[Step] = []
    try:
        with torch.no_grad():
            scorer = Scorer(ref, samples, max_new_tokens)
            kl = {}
            for k, u in enumerate(all_units):
                if progress:
                    progress(k, len(all_units) + 8)
                forms.set({u.name: 4})
                kl[u.name] = scorer.mean_kl()
            order = sorted(all_units, key=lambda u: -kl[u.name] / max(u.extra_bytes, 1))
            measured: dict[int, Step] = {}

            def measure(promoted: int) -> Step:
                if promoted not in measured:
                    if progress:
                        progress(len(all_units) + len(measured), len(all_units) + 8)
                    forms.set({u.name: 8 if i < promoted else 4 for i, u in enumerate(order)})
                    measured[promoted] = Step(promoted, sum(u.extra_bytes for u in order[:promoted]),
                                              scorer.agreement(), scorer.mean_kl())
                    steps.append(measured[promoted])
                return measured[promoted]

            lo, hi = 0, len(order)
            if measure(lo).sequence_agreement >= target:
                hi = lo
            elif measure(hi).sequence_agreement < target:
                raise UserError(f"--quant auto: {target:.0%} sequence agreement is out of reach with 8-bit "
                                f"layers: every unit at 8 bits agrees on {measured[hi].sequence_agreement:.1%} of "
                                f"{len(samples)} calibration samples (lower --min-agreement, or use a float recipe)")
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if measure(mid).sequence_agreement >= target:
                    hi = mid
                else:
                    lo = mid
    finally:
        forms.restore()
    promoted = [u.name for u in order[:hi]]
    chosen = _recipe(recipe, promoted, len(samples))
    four_bytes = sum(_bytes(u.four, sum(p.numel() for p in u.params)) for u in all_units)
    report = {
        "base": recipe.to_dict(),  # what was asked for: the recipe the choice started from, with its target
        "target_agreement": target,
        "calibration_samples": len(samples),
        "units": len(all_units),
        "promoted": promoted,
        "extra_bytes": measured[hi].extra_bytes,
        "four_bit_bytes": int(four_bytes),
        "calibration": {"four_bit": _step_dict(measured[0]), "chosen": _step_dict(measured[hi])},
        "sensitivity": [{"unit": u.name, "kl": kl[u.name], "extra_bytes": u.extra_bytes} for u in order],
        "steps": [_step_dict(s) for s in sorted(steps, key=lambda s: s.promoted)],
    }
    return chosen, report


def _step_dict(s: Step) -> dict:
    return {"promoted": s.promoted, "extra_bytes": s.extra_bytes, "sequence_agreement": s.sequence_agreement,
            "mean_kl": s.mean_kl}


def _recipe(base: Recipe, promoted: list[str], samples: int) -> Recipe:
    """The base recipe with `promoted` at 8 bits: a plain recipe, as a recipe file writes it."""
    changes = {}
    if VISION in promoted:
        changes["vision_encoder"] = EIGHT
    if TABLE_UNIT in promoted or "embedding" in promoted:
        changes["embedding"] = EIGHT
    if TABLE_UNIT in promoted or "lm_head" in promoted:
        changes["lm_head"] = EIGHT
    overrides = tuple(Override(name, EIGHT) for name in promoted if name.startswith("layers."))
    description = (f"chosen by --quant auto for {base.target_agreement:.0%} sequence agreement on {samples} "
                   f"calibration samples: {base.name.removesuffix('-auto')} with {len(promoted)} units at 8 bits")
    return replace(base, name="auto", description=description, overrides=overrides + base.overrides,
                   target_agreement=None, **changes)
