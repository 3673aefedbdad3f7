"""Draw an Answer on its image: semi-transparent masks, then boxes and labels (PIL only)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pgexport_runtime.errors import UserError
from pgexport_runtime.preprocess import to_rgb
from pgexport_runtime.typed_answers import Answer

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
MASK_ALPHA = 0.45


def draw_answer(image: Image.Image, answer: Answer) -> Image.Image:
    """A copy of `image` (RGB) with the answer's masks, boxes and labels; one colour per label."""
    out = to_rgb(image).copy()
    colours: dict[str, tuple[int, int, int]] = {}

    def colour(label: str) -> tuple[int, int, int]:
        return colours.setdefault(label, PALETTE[len(colours) % len(PALETTE)])

    pixels = np.asarray(out, dtype=np.float32).copy()
    for seg in answer.segments:
        if seg.mask is not None and seg.mask.shape == pixels.shape[:2]:
            c = np.asarray(colour(seg.label), dtype=np.float32)
            pixels[seg.mask] = (1 - MASK_ALPHA) * pixels[seg.mask] + MASK_ALPHA * c
    out = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 160))
    font = ImageFont.load_default(size=max(10, min(out.size) // 16))
    for obj in [*answer.detections, *answer.segments]:
        c = colour(obj.label)
        x0, y0, x1, y1 = obj.box
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=c, width=width)
        if obj.label:
            l, t, r, b = draw.textbbox((0, 0), obj.label, font=font)
            ty = y0 - (b - t) - 2 if y0 - (b - t) - 2 >= 0 else y0  # above the box, inside if no room
            draw.rectangle([x0, ty, x0 + (r - l) + 3, ty + (b - t) + 2], fill=c)
            draw.text((x0 + 2 - l, ty + 1 - t), obj.label, fill=(255, 255, 255), font=font)
    return out


def check_output_path(path: Path, image: Path | None = None) -> None:
    """Fail before generating if the picture could not be written (missing folder, unknown format), or would
    overwrite the input image (compared after resolving links and '..')."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"--overlay {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"--overlay {path}: folder {path.parent} is not writable")
    if path.is_dir():
        raise UserError(f"--overlay {path} is a directory")
    if image is not None and _same_file(path, Path(image)):
        raise UserError(f"--overlay {path} is the input image; write the overlay to another file")
    _format(path)


def _format(path: Path) -> str:
    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"--overlay {path}: unknown image format {path.suffix!r} (use .png or .jpg)")
    return fmt


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:  # one of them does not exist
        return False


def save_overlay(image: Image.Image, answer: Answer, path: Path) -> Path:
    """Write the overlay atomically: into a temporary file beside `path`, renamed over it when complete, so
    that a failed write (read-only folder, full disk) leaves neither a partial file nor a changed target."""
    path = Path(path)
    check_output_path(path)
    picture = draw_answer(image, answer)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the picture from others; 0644 is open()'s usual
        with os.fdopen(fd, "wb") as f:
            picture.save(f, format=_format(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path
