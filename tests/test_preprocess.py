"""The runtime's preprocessing equals transformers' SiglipImageProcessor within 1e-6, for every image mode a
decoder produces; files are decoded as transformers' load_image decodes them (EXIF orientation applied)."""

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
    opaque_palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    cmyk = rgb.convert("CMYK")
    bilevel = gray.convert("1")
    return {"odd-rgb": rgb, "rgba": rgba, "grayscale": gray, "gray-alpha": la, "palette-transparent": palette,
            "downscale": big, "palette": opaque_palette, "cmyk": cmyk, "bilevel": bilevel}


@pytest.mark.parametrize("kind", list(_images()))
def test_matches_siglip_image_processor(tiny, kind):
    image = _images()[kind]
    ref = tiny.processor.image_processor(images=[image], return_tensors="np")["pixel_values"]
    from pgexport.source import sources

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


def _params(tiny):
    from pgexport.source import sources

    return sources.load_preprocessing(tiny.source, tiny.geometry)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_rotated_file_matches_transformers_load_image(tiny, tmp_path, fmt):
    """A phone photo: pixels stored sideways plus EXIF orientation 6. transformers' load_image turns it upright
    (ImageOps.exif_transpose); so does the runtime, for paths and PIL images alike."""
    from transformers.image_utils import load_image as hf_load_image

    from pgexport_runtime.images import as_image, load_image

    stored = _images()["odd-rgb"]  # 53 x 37 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / f"rotated.{fmt.lower()}"
    stored.save(path, format=fmt, exif=exif)
    ours = load_image(path)
    assert ours.size == (37, 53)  # upright: width and height swapped
    ref = tiny.processor.image_processor(images=[hf_load_image(str(path))], return_tensors="np")["pixel_values"]
    assert np.abs(preprocess([ours], _params(tiny)) - ref).max() <= 1e-6
    with Image.open(path) as opened:  # a PIL image straight from Image.open still carries the tag
        assert as_image(opened).size == (37, 53)
    assert as_image(ours).size == (37, 53)  # already upright: transposing again changes nothing


def test_sixteen_bit_grayscale_is_scaled_not_whitened(tiny, tmp_path):
    """A 16-bit grayscale PNG opens as mode I;16. transformers converts it with PIL, which clips every value
    above 255: the image turns white. The runtime scales it to 8 bits first (a documented difference), and
    matches transformers given that 8-bit image."""
    from pgexport_runtime.images import load_image

    rng = np.random.default_rng(5)
    values = (rng.random((41, 29)) * 65535).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    img = load_image(path)
    assert img.mode == "I;16"
    eight = Image.fromarray(((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), "L")
    ref = tiny.processor.image_processor(images=[eight], return_tensors="np")["pixel_values"]
    got = preprocess([img], _params(tiny))
    assert np.abs(got - ref).max() <= 1e-6
    whitened = tiny.processor.image_processor(images=[img], return_tensors="np")["pixel_values"]
    assert (whitened > 0.99).mean() > 0.95  # what transformers itself does with it (and why we differ)
    assert got.std() > 0.3  # ours keeps the picture
