"""Vision-encoder graph: pixel_values [B,3,H,W] -> vision features [B, N_img, D_vision] (SigLIP, no head)."""

from __future__ import annotations

import torch
from torch import nn

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry


class VisionEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values).last_hidden_state


def sample_inputs(g: Geometry) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, g.image_size, g.image_size, generator=gen) * 2 - 1,)


INPUT_NAMES = [io.PIXEL_VALUES]
OUTPUT_NAMES = [io.VISION_FEATURES]
DYNAMIC_SHAPES = ({0: io.BATCH},)
