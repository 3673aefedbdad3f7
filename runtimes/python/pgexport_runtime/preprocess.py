"""Image preprocessing, bit-for-bit what transformers' SiglipImageProcessor (PIL backend) does.

convert to RGB (transparency composited onto white) -> bicubic resize to the model's square size with
PIL -> uint8 * rescale_factor computed in float64, then float32 -> (x - mean) / std -> [3, H, W].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def load_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def preprocess(images: list[Image.Image], params: dict) -> np.ndarray:
    """PIL images -> pixel_values [B, 3, H, W] float32."""
    height, width = params["size"]
    resample = RESAMPLE[params.get("resample", "bicubic")]
    mean = np.asarray(params["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(params["std"], dtype=np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, img in enumerate(images):
        rgb = to_rgb(img).resize((width, height), resample=resample)
        x = np.asarray(rgb).transpose(2, 0, 1)
        x = (x.astype(np.float64) * params["rescale_factor"]).astype(np.float32)
        out[i] = (x - mean) / std
    return out
