"""Vision-encoder graph: pixel_values [B,3,H,W] -> vision features [B, N_img, D_vision] (SigLIP, no head).

SigLIP's attention is unmasked, so it is exported as onnxruntime's MultiHeadAttention (attention.py), whose
CPU kernel never holds the [N_img, N_img] scores of every head; the rest of the tower is transformers' own."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface

from pgexport.export.attention import unmasked_attention

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry


class VisionEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with _attention(self.tower.config, FUSED):
            return self.tower(pixel_values).last_hidden_state


FUSED = "pgexport_unmasked"
AttentionInterface.register(FUSED, unmasked_attention)


@contextmanager
def _attention(config, implementation: str):
    """The tower's attention function for this call only: the model's own config is left as it was (the
    PyTorch references that parity compares against run transformers' attention)."""
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before


def sample_inputs(g: Geometry) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, g.image_size, g.image_size, generator=gen) * 2 - 1,)


INPUT_NAMES = [io.PIXEL_VALUES]
OUTPUT_NAMES = [io.VISION_FEATURES]
DYNAMIC_SHAPES = ({0: io.BATCH},)
