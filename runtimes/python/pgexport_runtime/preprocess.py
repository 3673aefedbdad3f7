"""Image preprocessing, bit-for-bit what transformers' SiglipImageProcessor (PIL backend) does.

convert to RGB (transparency composited onto white) -> bicubic resize to the model's square size with
PIL -> uint8 * rescale_factor computed in float64, then float32 -> (x - mean) / std -> [3, H, W].
One deliberate difference: 16-bit grayscale (see to_rgb). Decoding (EXIF orientation, limits) is images.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pgexport_runtime import typed_json
from pgexport_runtime.errors import UserError

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """The manifest's `preprocessing` section."""

    size: tuple[int, int]  # height, width
    resample: str
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"size": list(self.size), "resample": self.resample, "rescale_factor": self.rescale_factor,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        w = "preprocessing"
        size = typed_json.integers(d, "size", w, 1, 8192)
        if len(size) != 2:
            raise typed_json.FieldError(f"{w}.size must be [height, width]")
        return cls(size=(size[0], size[1]),
                   resample=typed_json.text(d, "resample", w, optional=True, choices=tuple(RESAMPLE)) or "bicubic",
                   rescale_factor=typed_json.number(d, "rescale_factor", w, 0, 1),
                   mean=typed_json.numbers(d, "mean", w, -1e3, 1e3, 3),
                   std=typed_json.numbers(d, "std", w, 0, 1e3, 3))


def to_rgb(img: Image.Image) -> Image.Image:
    """SiglipImageProcessor's convert_to_rgb: transparency composited onto white, then PIL's RGB conversion.

    16-bit grayscale (mode I;16*, what Pillow opens a 16-bit PNG or TIFF as) is first scaled to 8 bits.
    transformers does not: PIL's conversion clips every value above 255, so nearly every 16-bit image
    turns white (checked with transformers 5.23 / Pillow 13). We prefer the image the file holds and scale
    it, round(v * 255 / 65535). Modes whose range PIL cannot know ("I" 32-bit, "F") are converted as
    transformers converts them.
    """
    if img.mode.startswith("I;16"):
        img = _sixteen_to_eight(img)
    try:
        if "A" in img.getbands() or img.info.get("transparency") is not None:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:  # a mode PIL cannot convert to RGB (La, ...)
        raise UserError(f"cannot convert an image of mode {img.mode} to RGB ({exc})") from None


def _sixteen_to_eight(img: Image.Image) -> Image.Image:
    v = np.asarray(img).astype(np.uint32)
    gray = Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), "L")
    t = img.info.get("transparency")
    if isinstance(t, int):  # a 16-bit PNG's tRNS: one grey value is transparent
        gray.putalpha(Image.fromarray(np.where(v == t, 0, 255).astype(np.uint8), "L"))
    return gray


def preprocess(images: list[Image.Image], params: Preprocessing | dict) -> np.ndarray:
    """PIL images -> pixel_values [B, 3, H, W] float32."""
    p = params if isinstance(params, Preprocessing) else Preprocessing.from_dict(params)
    height, width = p.size
    mean = np.asarray(p.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(p.std, dtype=np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, img in enumerate(images):
        rgb = to_rgb(img).resize((width, height), resample=RESAMPLE[p.resample])
        x = np.asarray(rgb).transpose(2, 0, 1)
        x = (x.astype(np.float64) * p.rescale_factor).astype(np.float32)
        out[i] = (x - mean) / std
    return out
