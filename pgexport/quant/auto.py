"""`--quant auto`: 8 bits where they buy the most agreement per byte, 4 bits elsewhere, until a target holds.

The units chosen between are each decoder linear, the token table (the embedding and a tied lm_head are one
initializer; untied, each is its own unit) and the vision encoder (all its linears together). Every unit has a
4-bit form, what the base recipe gives it (GPTQ's own weights where GPTQ ran, round-to-nearest blocks
otherwise), and an 8-bit form (8-bit weight-only blocks of 32), each as the dequantized float32 weights the
bundle's kernels compute with.

Sensitivity is measured where it shows: the mean KL(fp32 || model with that one unit at 4 bits) of the
next-token distributions, teacher-forced along the fp32 model's greedy answers, on the first
SENSITIVITY_SAMPLES calibration samples. A layer's relative output error does not predict this: an early
layer's small error grows through the stack, and the lm_head's error lands directly on the distribution.

Units are promoted to 8 bits in order of KL per byte the promotion adds. The number promoted is the smallest
whose calibration agreement (every unit in its chosen form; a sample agrees when every teacher-forced argmax
is float32's, which is when greedy decoding gives the same answer: quant/layerwise.py) reaches the target,
found by bisection over that order on all the calibration samples: agreement is taken to grow with the number
promoted, which holds for the order's front, where the large KLs are. The accuracy gate then measures the
bundle as it ships on held-out samples.

Everything is measured one decoder layer at a time (quant/layerwise.py), so a streamed build chooses within
the memory it streams in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from pgexport_runtime.errors import UserError

from pgexport.estimate import bytes_per_parameter
from pgexport.nbits import Packed, dequantize, pack_rtn
from pgexport.quant.recipes import RECIPES, TABLE, Override, Precision, Recipe

EIGHT = Precision(kind="int8-wo", block_size=32)  # the vision encoder's 8-bit form, as `int8` makes it
# A decoder linear's and the table's: int8 activations (accuracy_level 4), as `int8` computes them; in float32
# onnxruntime unpacks each 8-bit weight on every call, seconds a token at full size. The choice measures
# dequantized weights with float activations; on the demo model's 250 fresh items (benchmarks/quant_table.py)
# the same 22 promoted units agreed on 80.8 % this way and 82.4 % in float32, within each other's intervals.
EIGHT_DECODER = RECIPES["int8"].decoder_linear
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


SENSITIVITY_SAMPLES = 16  # the calibration samples each unit's KL is measured on (the order only ranks them)


class Former:
    """Each unit's 4- and 8-bit forms, as the dequantized float32 weights the bundle's kernels compute with: GPTQ's
    own weights where GPTQ ran, round-to-nearest blocks otherwise (layerwise.Form)."""

    def __init__(self, all_units: list[Unit], gptq: Mapping[str, Packed] | None):
        self.units, self.gptq = {u.name: u for u in all_units}, gptq or {}
        self.table: Packed | None = None  # the table's, read once: it is formed a slice at a time, many times

    def __call__(self, name: str, w: torch.Tensor, rows: torch.Tensor | None, bits: int) -> torch.Tensor:
        unit = self.units[name]
        key = TABLE if name == TABLE_UNIT else name
        if bits == 4 and unit.four.kind == "int4-gptq" and key in self.gptq:
            if key == TABLE and self.table is not None:
                packed = self.table
            else:
                packed = self.gptq[key]
                packed = packed.load() if hasattr(packed, "load") else packed  # packed_store.StoredPacked: on disk
                if key == TABLE:
                    self.table = packed
            wq = dequantize(packed if rows is None else _rows(packed, rows.numpy())).T
        else:
            prec = unit.four if bits == 4 else EIGHT
            # a [N, K] weight is MatMulNBits' [K, N] transposed; the table's rows are blocked along H the same way
            wq = dequantize(pack_rtn(w.numpy().T, bits, prec.block_size, prec.symmetric)).T
        return torch.from_numpy(np.ascontiguousarray(wq, dtype=np.float32)).reshape(w.shape)


def _rows(p: Packed, rows: np.ndarray) -> Packed:
    """Some rows (output channels) of a packed weight: each row's blocks are its own."""
    return replace(p, data=p.data[rows], scales=p.scales[rows],
                   zero_points=None if p.zero_points is None else p.zero_points[rows], n=len(rows))


VISION_BATCH = 16  # images through the tower at a time: a streamed tower is read once per batch


def vision_embeddings(ref, tower: nn.Module, states: list[dict], form: Former) -> Callable[[int], list[torch.Tensor]]:
    """bits -> per sample the image embeddings with the vision encoder's linears in that form. Set in a forward
    pre-hook, after the one a streamed model reads the tower's weights in, and put back after the forward; each
    linear is formed once per call."""

    def embeddings(bits: int) -> list[torch.Tensor]:
        formed: dict[str, torch.Tensor] = {}
        swapped = []

        def put(module, args):
            for sub, mod in tower.named_modules():
                if isinstance(mod, nn.Linear):
                    if sub not in formed:
                        formed[sub] = form(VISION, mod.weight.data.to(torch.float32), None, bits)
                    swapped.append((mod.weight, mod.weight.data))
                    mod.weight.data = formed[sub]

        def back(module=None, args=None, output=None):
            for w, data in swapped:
                w.data = data
            swapped.clear()

        handles = [tower.register_forward_pre_hook(put), tower.register_forward_hook(back)]
        out = []
        try:
            for a in range(0, len(states), VISION_BATCH):
                pixels = torch.cat([s["pixel_values"] for s in states[a:a + VISION_BATCH]])
                out += list(ref.image_embeddings(pixels).split(1))
        finally:
            back()  # a forward that raised left its forms in place
            for h in handles:
                h.remove()
        return out

    return embeddings


def choose(model, source_dir, g, recipe: Recipe, samples, answer_tokens: int,
           gptq: Mapping[str, Packed] | None = None, progress=None) -> tuple[Recipe, dict]:
    """The base recipe with the units that reach `recipe.target_agreement` on `samples` (greedy answers of up to
    `answer_tokens`, as the accuracy gate's) promoted to 8 bits, and the report for the manifest. The model
    (loaded, or streamed: source/streamed.py) is float32 again on return."""
    from pgexport.export.decoder import DecoderWithPast
    from pgexport.quant.calibration import calibration_inputs
    from pgexport.quant.layerwise import Layerwise
    from pgexport.verify.reference import TorchReference

    target = recipe.target_agreement
    dec = DecoderWithPast(model, g)
    all_units = units(model, dec, recipe)
    names = {u.name for u in all_units}
    form = Former(all_units, gptq)
    steps: list[Step] = []
    with torch.no_grad():
        states = calibration_inputs(model, dec, source_dir, g, samples, answer_tokens)
        ref = TorchReference.for_model(model, source_dir, g)
        tied = dec.lm_head is None
        run = Layerwise(model, dec, states, form, TABLE_UNIT if tied else "embedding",
                        TABLE_UNIT if tied else "lm_head", VISION if VISION in names else None,
                        vision_embeddings(ref, model.model.vision_tower, states, form))
        if progress:
            progress(f"each of {len(all_units)} units alone")
        kl = run.alone([u.name for u in all_units], range(min(len(states), SENSITIVITY_SAMPLES)))
        order = sorted(all_units, key=lambda u: -kl[u.name] / max(u.extra_bytes, 1))
        measured: dict[int, Step] = {}

        def measure(promoted: int) -> Step:
            if promoted not in measured:
                if progress:
                    progress(f"{promoted} units at 8 bits")
                kls, same = run.score({u.name: 8 if i < promoted else 4 for i, u in enumerate(order)})
                measured[promoted] = Step(promoted, sum(u.extra_bytes for u in order[:promoted]),
                                          float(np.mean(same)), float(torch.cat(kls).mean()))
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
    promoted = [u.name for u in order[:hi]]
    chosen = _recipe(recipe, promoted, len(samples))
    four_bytes = sum(_bytes(u.four, sum(p.numel() for p in u.params)) for u in all_units)
    report = {
        "base": recipe.to_dict(),  # what was asked for: the recipe the choice started from, with its target
        "target_agreement": target,
        "calibration_samples": len(samples),
        "sensitivity_samples": min(len(states), SENSITIVITY_SAMPLES),
        # samples where float32 scored layer by layer leaves its generated answer at a near-tie: agreement is
        # judged up to there
        "near_tie_samples": sum(h < len(a) for h, a in zip(run.horizon, run.fp_arg)),
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
        changes["embedding"] = EIGHT_DECODER
    if TABLE_UNIT in promoted or "lm_head" in promoted:
        changes["lm_head"] = EIGHT_DECODER
    overrides = tuple(Override(name, EIGHT_DECODER) for name in promoted if name.startswith("layers."))
    description = (f"chosen by --quant auto for {base.target_agreement:.0%} sequence agreement on {samples} "
                   f"calibration samples: {base.name.removesuffix('-auto')} with {len(promoted)} units at 8 bits")
    return replace(base, name="auto", description=description, overrides=overrides + base.overrides,
                   target_agreement=None, **changes)
