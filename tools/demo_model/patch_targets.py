"""Dense per-patch auxiliary targets for training the demo model's vision tower (training only).

Learning from the language loss alone, the tiny SigLIP tower stays close to blind within the CPU
budget: the decoder learns the output formats and the priors of each task, and its boxes do not depend
on the image. This module gives the vision tower direct, dense supervision from the scene generator's
own ground truth: for every patch, what lies under it. A linear head reads the vision tower's output,
and its loss is added to the language loss during training. The head is not part of the model: it is
never exported, and the checkpoint stays a plain PaliGemma.

Per patch (a `grid` x `grid` grid over the image):
- colour and shape of the object covering most of the patch (or none; >= 12 % coverage counts)
- that object's box, normalised to [0, 1] (regressed only where an object covers the patch)
- whether the patch holds that object's box centre (counting)
- the background colour
- whether text overlaps the patch, and which characters have their (estimated) centre in it
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import generator

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
N_COLOUR = len(generator.COLOURS) + 1  # 0 = no object
N_KIND = len(generator.KINDS) + 1
N_BG = len(generator.BACKGROUNDS)
COVER = 0.12


def patch_targets(scene: generator.Scene, grid: int) -> dict[str, np.ndarray]:
    S = generator.IMAGE_SIZE
    ps = S // grid
    n = grid * grid
    colour = np.zeros(n, np.int64)
    kind = np.zeros(n, np.int64)
    box = np.zeros((n, 4), np.float32)
    centre = np.zeros(n, np.float32)
    best = np.full(n, COVER, np.float32)
    colours, kinds = list(generator.COLOURS), generator.KINDS
    for o in scene.objects:
        cov = o.mask.reshape(grid, ps, grid, ps).mean(axis=(1, 3)).reshape(n).astype(np.float32)
        sel = cov > best
        best[sel] = cov[sel]
        colour[sel] = colours.index(o.colour) + 1
        kind[sel] = kinds.index(o.kind) + 1
        box[sel] = np.array(o.box, np.float32) / S
        cy, cx = o.centre
        centre[min(grid - 1, int(cy // ps)) * grid + min(grid - 1, int(cx // ps))] = 1.0
    bg = np.full(n, list(generator.BACKGROUNDS).index(scene.background), np.int64)
    text = np.zeros(n, np.float32)
    chars = np.zeros((n, len(CHARS)), np.float32)
    if scene.text and scene.text_box:
        y0, x0, y1, x1 = scene.text_box
        m = np.zeros((S, S), bool)
        m[y0:y1, x0:x1] = True
        text = (m.reshape(grid, ps, grid, ps).mean(axis=(1, 3)).reshape(n) > COVER).astype(np.float32)
        row = min(grid - 1, int(((y0 + y1) / 2) // ps))
        L = len(scene.text)
        for i, ch in enumerate(scene.text):  # character centres, assuming even spacing across the box
            if ch not in CHARS:
                continue
            x = x0 + (i + 0.5) / L * (x1 - x0)
            chars[row * grid + min(grid - 1, int(x // ps)), CHARS.index(ch)] = 1.0
    return {"colour": colour, "kind": kind, "box": box, "centre": centre, "bg": bg, "text": text, "chars": chars}


def collate_targets(scenes, grid: int) -> dict[str, torch.Tensor]:
    rows = [patch_targets(s, grid) for s in scenes]
    return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}


class PatchHead(nn.Module):
    """One linear layer from vision-tower features to every per-patch target."""

    def __init__(self, width: int):
        super().__init__()
        self.sizes = [N_COLOUR, N_KIND, 4, 1, N_BG, 1, len(CHARS)]
        self.proj = nn.Linear(width, sum(self.sizes))

    def loss(self, feats: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        col, kind, box, cen, bg, text, chars = self.proj(feats.float()).split(self.sizes, dim=-1)
        has = (t["kind"] > 0).float()
        parts = {
            "colour": F.cross_entropy(col.flatten(0, 1), t["colour"].flatten()),
            "kind": F.cross_entropy(kind.flatten(0, 1), t["kind"].flatten()),
            "box": ((torch.sigmoid(box) - t["box"]).abs().sum(-1) * has).sum() / has.sum().clamp(min=1) * 4,
            "centre": F.binary_cross_entropy_with_logits(cen.squeeze(-1), t["centre"]),
            "bg": F.cross_entropy(bg.flatten(0, 1), t["bg"].flatten()),
            "text": F.binary_cross_entropy_with_logits(text.squeeze(-1), t["text"]),
            "chars": F.binary_cross_entropy_with_logits(chars, t["chars"]) * len(CHARS) / 4,
        }
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}
