"""What the runtime accepts as an image, and how it is decoded: as transformers' `load_image` does.

An image is a path, a PIL image or a uint8 numpy array (HxW, HxWx3 RGB or HxWx4 RGBA). Whatever it is:
- its pixel count is bounded before it is decoded (`limits.check_image_size`), so that a small file
  that expands to gigabytes (a 30000x30000 PNG) is a one-line error, not an allocation;
- its EXIF orientation is applied (`ImageOps.exif_transpose`), as `transformers.image_utils.load_image`
  does for paths and PIL images alike: a phone photo is seen upright, and boxes come back in pixels of
  the upright image. It is a no-op on an image already transposed (the tag is removed then).
The colour conversion that follows is preprocess.to_rgb.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pgexport_runtime import limits
from pgexport_runtime.errors import UserError


def load_image(path: str | Path, max_pixels: int = limits.DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (upright, any mode) after checking its size from the header alone."""
    limits.check_max_image_pixels(max_pixels)
    _allow_in_pillow(max_pixels)
    try:
        with Image.open(path) as img:  # reads the header only
            limits.check_image_size(img.width, img.height, max_pixels, f"image {path}")
            img.load()
            return _upright(img)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"image {path} is a directory") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (the warning is an error where the CLI asks for it): more pixels than allowed
        raise limits.LimitError(f"image {path} is over the limit of {max_pixels:,} pixels ({exc}); "
                                f"{limits.PIXELS_HINT}") from None
    except UserError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError... on
        # truncated or crafted files; an image file is user input, so each is the user's error, in one line
        raise UserError(f"cannot read image {path}: {_one_line(exc)}") from None


def as_image(image, max_pixels: int = limits.DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """A path, PIL image or uint8 numpy array -> an upright PIL image within the pixel limit."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels)
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)
    if isinstance(image, Image.Image):
        limits.check_max_image_pixels(max_pixels)
        limits.check_image_size(image.width, image.height, max_pixels, "image")
        return _upright(image)
    raise UserError(f"an image must be a file path, a PIL image or a uint8 numpy array, not {type(image).__name__}")


def _from_array(a: np.ndarray, max_pixels: int) -> Image.Image:
    # What SiglipImageProcessor reads as channels-last uint8: gray, RGB, RGBA. Other dtypes are refused rather
    # than guessed: float arrays may be 0..1 or 0..255, and a CHW array would be read as a very thin image.
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise UserError(f"a numpy image must be uint8 with shape HxW, HxWx3 (RGB) or HxWx4 (RGBA), "
                        f"not {a.dtype} {a.shape}")
    limits.check_max_image_pixels(max_pixels)
    limits.check_image_size(a.shape[1], a.shape[0], max_pixels, "image")
    return Image.fromarray(np.ascontiguousarray(a))


def _upright(img: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001  (a malformed EXIF block: same reasoning as in load_image)
        raise UserError(f"cannot read the image's EXIF orientation: {_one_line(exc)}") from None
    return out if out is not img else img.copy()


def _allow_in_pillow(max_pixels: int) -> None:
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS itself. When a caller raises our limit above
    Pillow's, raise Pillow's (process-wide, never lowered) so that the limit the caller chose is the one
    that applies; with the default limit nothing changes."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _one_line(exc: Exception) -> str:
    msg = " ".join(str(exc).split())
    return (msg or type(exc).__name__)[:300]
