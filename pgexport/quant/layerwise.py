"""The calibration samples run through the decoder one layer at a time, with chosen units in their 4- or 8-bit
forms, scored at every answer position against the float32 model: what `--quant auto` measures (quant/auto.py).

- The samples are calibration.py's: the image+prompt prefix (bidirectional) and the float32 model's greedy
  answer (causal) through its end of sequence. Scoring is teacher-forced along that answer: the mean
  KL(float32 || formed) of the next-token distributions, and whether every position's argmax is float32's,
  which is whether greedy decoding gives the same answer (the first position that differs is where it would
  turn). Where float32 scored here leaves the generated answer at a near-tie, only the positions up to there
  are judged (Layerwise.horizon).
- One layer at a time: each decoder layer is held once per pass (a streamed model reads it then,
  source/streamed.py) with every sample's hidden states at that depth, so a pass holds what a streamed build
  holds plus those states. Measuring each unit alone keeps one branch of hidden states per unit of the current
  layer, from the layer where it enters to the end, beside the float32 states.
- The token table is formed and multiplied a slice of rows at a time, and the softmax statistics are folded
  over the slices: neither a float32 copy of the table nor [positions, vocabulary] logits are ever whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from pgexport.quant.calibration import run_layer

ROWS = 16384  # table rows formed and multiplied at a time
POSITIONS = 256  # answer positions scored at a time: [POSITIONS, ROWS] float64 statistics, 34 MB
# (unit, its float32 weight or some of the table's rows, which rows (None: the whole weight), bits) -> formed
Form = Callable[[str, torch.Tensor, torch.Tensor | None, int], torch.Tensor]


class Folded:
    """Per position, folded over slices of the vocabulary: the log-normalizers of p (float32) and q (formed),
    the sum of exp(zp) * (zp - zq) that KL(p || q) needs, and q's argmax (first index on ties)."""

    def __init__(self, n: int):
        full = lambda v: torch.full((n,), v, dtype=torch.float64)  # noqa: E731
        self.mp, self.sp, self.a = full(-torch.inf), full(0.0), full(0.0)
        self.mq, self.sq = full(-torch.inf), full(0.0)
        self.best, self.arg = full(-torch.inf), torch.zeros(n, dtype=torch.int64)

    def add(self, zp: torch.Tensor, zq: torch.Tensor, offset: int) -> None:
        zp, zq = zp.to(torch.float64), zq.to(torch.float64)
        mp = torch.maximum(self.mp, zp.amax(1))
        ep = torch.exp(zp - mp[:, None])
        rescale = torch.exp(self.mp - mp)
        self.sp = self.sp * rescale + ep.sum(1)
        self.a = self.a * rescale + (ep * (zp - zq)).sum(1)
        self.mp = mp
        mq = torch.maximum(self.mq, zq.amax(1))
        self.sq = self.sq * torch.exp(self.mq - mq) + torch.exp(zq - mq[:, None]).sum(1)
        self.mq = mq
        best, arg = zq.max(1)
        better = best > self.best
        self.best = torch.where(better, best, self.best)
        self.arg = torch.where(better, arg + offset, self.arg)

    def kl(self) -> torch.Tensor:
        return self.a / self.sp - (self.mp + torch.log(self.sp)) + (self.mq + torch.log(self.sq))


class Layerwise:
    """states: calibration_inputs' samples. form(unit, w, rows, bits): the unit's weight (or the table's `rows`)
    in that form. vision(bits) -> per sample the image embeddings
    with the vision encoder in that form. Units are named as quant/auto.py names them: "layers.<i>.<module>",
    and `embed_unit`/`head_unit` for the token table's two roles (one name when tied)."""

    def __init__(self, model, dec, states: list[dict], form: Form, embed_unit: str, head_unit: str,
                 vision_unit: str | None, vision: Callable[[int], list[torch.Tensor]] | None):
        from pgexport.source.streamed import layer_held

        self.model, self.dec, self.g, self.states = model, dec, dec.g, states
        self.form, self.embed_unit, self.head_unit = form, embed_unit, head_unit
        self.vision_unit, self.vision = vision_unit, vision
        self.vision_cache: dict[int, list[torch.Tensor]] = {}
        self.held = lambda layer: layer_held(model, layer)  # noqa: E731
        every = range(len(states))
        # float32 final-norm rows at the answer positions, per sample: what every formed pass is compared with
        self.reference = self._rows(every, self._pass({}, every))
        # The answers came from transformers' generate (batched, with a KV cache); scored here, the float32 argmax
        # can turn at a near-tie where rounding differs. A formed pass agrees with float32 when its argmax is
        # float32's through the first position where float32's leaves the answer (all of it, almost always).
        self.fp_arg = self._argmax(every)
        self.horizon = []
        for s, arg in zip(states, self.fp_arg):
            off = (arg != s["ids"][0, s["prefix"]:]).nonzero()
            self.horizon.append(int(off[0, 0]) + 1 if len(off) else len(arg))

    @property
    def head(self) -> torch.Tensor:
        return self.dec.embed.weight if self.dec.lm_head is None else self.dec.lm_head.weight

    # --- passes

    def score(self, bits: Mapping[str, int | None], which=None) -> tuple[list[torch.Tensor], list[bool]]:
        """Every unit in its form (bits: unit -> 4, 8, or None/absent for float32) -> per sample the KL at each
        answer position and whether the whole answer is the greedy one."""
        which = range(len(self.states)) if which is None else which
        hidden = self._pass(bits, which)
        return self._score(which, self._rows(which, hidden), bits.get(self.head_unit))

    def alone(self, units: list[str], which) -> dict[str, float]:
        """Each unit in its 4-bit form, every other float32 -> its mean KL over the answer positions of `which`.
        Decoder units branch off the float32 states at their layer; the table and vision units start at layer 0."""
        out = {}
        for unit in units:
            if not unit.startswith("layers."):
                kls, _ = self.score({unit: 4}, which)
                out[unit] = _mean(kls)
        by_layer: dict[int, list[str]] = {}
        for unit in units:
            if unit.startswith("layers."):
                by_layer.setdefault(int(unit.split(".")[1]), []).append(unit)
        fp = [self._layer0({}, k) for k in which]
        for i, layer in enumerate(self.dec.layers):
            branches = {}
            with self.held(layer):
                for unit in by_layer.get(i, []):
                    with self._formed(layer, i, {unit: 4}):
                        branches[unit] = [self._run(layer, i, k, h) for k, h in zip(which, fp)]
                fp = [self._run(layer, i, k, h) for k, h in zip(which, fp)]
            for j in range(i + 1, len(self.dec.layers)):
                if not branches:
                    break
                later = self.dec.layers[j]
                with self.held(later):
                    for hs in branches.values():  # in place: one copy of the branches, a sample at a time
                        for n, k in enumerate(which):
                            hs[n] = self._run(later, j, k, hs[n])
            for unit, hs in branches.items():
                kls, _ = self._score(which, self._rows(which, hs), None)
                out[unit] = _mean(kls)
        return out

    def _pass(self, bits: Mapping[str, int | None], which) -> list[torch.Tensor]:
        hidden = [self._layer0(bits, k) for k in which]
        for i, layer in enumerate(self.dec.layers):
            with self.held(layer), self._formed(layer, i, bits):
                hidden = [self._run(layer, i, k, h) for k, h in zip(which, hidden)]
        return hidden

    def _run(self, layer, i: int, k: int, hidden: torch.Tensor) -> torch.Tensor:
        return run_layer(self.dec, layer, i, {**self.states[k], "hidden": hidden})

    def _layer0(self, bits: Mapping[str, int | None], k: int) -> torch.Tensor:
        """Sample k's layer-0 inputs with the table's embedding role and the vision encoder in their forms."""
        s = self.states[k]
        hidden = s["hidden"]
        vb, eb = bits.get(self.vision_unit) if self.vision_unit else None, bits.get(self.embed_unit)
        if vb is None and eb is None:
            return hidden
        hidden = hidden.clone()
        ids = s["ids"][0]
        is_image = (ids == self.g.image_token_id) & (s["token_type"][0] == 0)
        if vb is not None:
            embeds = self._vision_embeds(vb)[k][0]
            is_image &= torch.cumsum(is_image.to(torch.int64), 0) <= embeds.shape[0]  # as _embed
            hidden[0, is_image] = embeds[: int(is_image.sum())]
        if eb is not None:
            text = ~is_image
            table = self.dec.embed.weight
            lookup = torch.where(ids[text] >= table.shape[0], torch.zeros_like(ids[text]), ids[text])  # as _embed
            used, where = lookup.unique(return_inverse=True)  # only the rows looked up: forms are row-local
            formed = self.form(self.embed_unit, table[used].to(torch.float32), used, eb)
            hidden[0, text] = formed[where] * _embed_scale(self.dec.embed)
        return hidden

    def _vision_embeds(self, bits: int) -> list[torch.Tensor]:
        if bits not in self.vision_cache:
            self.vision_cache.clear()  # one form at a time: the bisection moves it at most once
            self.vision_cache[bits] = self.vision(bits)
        return self.vision_cache[bits]

    @contextmanager
    def _formed(self, layer, i: int, bits: Mapping[str, int | None]):
        """Layer i's linears in the forms `bits` gives them while the block runs (the layer must be held)."""
        swapped = []
        try:
            for sub, mod in layer.named_modules():
                b = bits.get(f"layers.{i}.{sub}") if isinstance(mod, nn.Linear) else None
                if b is not None:
                    swapped.append((mod.weight, mod.weight.data))
                    mod.weight.data = self.form(f"layers.{i}.{sub}", mod.weight.data.to(torch.float32), None, b)
            yield
        finally:
            for w, data in swapped:
                w.data = data

    # --- scoring

    def _rows(self, which, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Final-norm rows predicting each answer token: the prefix's last position to the answer's last but one."""
        out = []
        for k, h in zip(which, hidden):
            s = self.states[k]
            out.append(self.dec.norm(h[0, s["prefix"] - 1: s["ids"].shape[1] - 1]))
        return out

    def _score(self, which, rows: list[torch.Tensor], head_bits: int | None) -> tuple[list[torch.Tensor], list[bool]]:
        q = torch.cat(rows)
        p = torch.cat([self.reference[k] for k in which])
        chunks = range(0, q.shape[0], POSITIONS)
        folded = [Folded(min(POSITIONS, q.shape[0] - a)) for a in chunks]
        table = self.head
        for start in range(0, table.shape[0], ROWS):  # each slice formed once, then every chunk of positions
            w = table[start:start + ROWS].to(torch.float32)
            index = torch.arange(start, start + w.shape[0])
            wq = w if head_bits is None else self.form(self.head_unit, w, index, head_bits)
            for f, a in zip(folded, chunks):
                f.add(self._cap(p[a:a + POSITIONS] @ w.T), self._cap(q[a:a + POSITIONS] @ wq.T), start)
        kl = torch.cat([f.kl() for f in folded]).clamp(min=0)
        arg = torch.cat([f.arg for f in folded])
        kls, same, at = [], [], 0
        for k, r in zip(which, rows):
            n, h = r.shape[0], self.horizon[k]
            kls.append(kl[at:at + n])
            same.append(bool(torch.equal(arg[at:at + h], self.fp_arg[k][:h])))
            at += n
        return kls, same

    def _argmax(self, which) -> list[torch.Tensor]:
        """The float32 argmax at each answer position, per sample."""
        p = torch.cat([self.reference[k] for k in which])
        arg = torch.cat([self._argmax_chunk(p[a:a + POSITIONS]) for a in range(0, p.shape[0], POSITIONS)])
        return list(arg.split([self.reference[k].shape[0] for k in which]))

    def _argmax_chunk(self, p: torch.Tensor) -> torch.Tensor:
        best, arg = torch.full((p.shape[0],), -torch.inf), torch.zeros(p.shape[0], dtype=torch.int64)
        table = self.head
        for start in range(0, table.shape[0], ROWS):
            value, index = self._cap(p @ table[start:start + ROWS].to(torch.float32).T).max(1)
            better = value > best
            best, arg = torch.where(better, value, best), torch.where(better, index + start, arg)
        return arg

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.g.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap


def _mean(kls: list[torch.Tensor]) -> float:
    return float(torch.cat(kls).mean()) if kls else 0.0


def _embed_scale(embed: nn.Module) -> torch.Tensor:
    """Gemma's sqrt(hidden) on text embeddings, as transformers' scaled embedding (and the streamed one) keep it."""
    return embed.embed_scale.to(torch.float32)
