"""Projector graph: vision features -> image embeddings [B, N_img, D_text].

A separate graph so that it can keep a higher precision than the encoder, and so that a runtime can
cache image embeddings. transformers 5.x feeds the projector output to the decoder unscaled (older
versions divided by sqrt(hidden) and multiplied back inside Gemma, which cancels to the same thing).
"""

from __future__ import annotations

import torch
from torch import nn

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry


class Projector(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.linear = model.model.multi_modal_projector

    def forward(self, vision_features: torch.Tensor) -> torch.Tensor:
        return self.linear(vision_features)


def sample_inputs(g: Geometry) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, g.num_image_tokens, g.vision_hidden, generator=gen),)


INPUT_NAMES = [io.VISION_FEATURES]
OUTPUT_NAMES = [io.IMAGE_EMBEDS]
DYNAMIC_SHAPES = ({0: io.BATCH},)
