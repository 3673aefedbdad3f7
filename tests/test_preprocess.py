"""The runtime's preprocessing equals transformers' SiglipImageProcessor within 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pgexport_runtime.preprocess import preprocess


def _images():
    rng = np.random.default_rng(3)
    rgb = Image.fromarray((rng.random((37, 53, 3)) * 255).astype(np.uint8))
    rgba_arr = (rng.random((81, 29, 4)) * 255).astype(np.uint8)
    rgba = Image.fromarray(rgba_arr, "RGBA")
    gray = Image.fromarray((rng.random((64, 101)) * 255).astype(np.uint8), "L")
    la = Image.fromarray((rng.random((33, 34, 2)) * 255).astype(np.uint8), "LA")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    big = Image.fromarray((rng.random((500, 333, 3)) * 255).astype(np.uint8))
    return {"odd-rgb": rgb, "rgba": rgba, "grayscale": gray, "gray-alpha": la, "palette-transparent": palette,
            "downscale": big}


@pytest.mark.parametrize("kind", list(_images()))
def test_matches_siglip_image_processor(tiny, kind):
    image = _images()[kind]
    ref = tiny.processor.image_processor(images=[image], return_tensors="np")["pixel_values"]
    from pgexport import sources

    params = sources.load_preprocessing(tiny.source, tiny.geometry)
    got = preprocess([image], params)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-6


def test_matches_at_full_resolution(tiny):
    """224 px, the size of real checkpoints (tiny presets are 32 px)."""
    from transformers import SiglipImageProcessor

    hf = SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3,
                              image_std=[0.5] * 3)
    image = _images()["odd-rgb"]
    ref = hf(images=[image], return_tensors="np")["pixel_values"]
    got = preprocess([image], {"size": [224, 224], "resample": "bicubic", "rescale_factor": 1 / 255,
                               "mean": [0.5] * 3, "std": [0.5] * 3})
    assert np.abs(got - ref).max() <= 1e-6
