"""Segmentation masks: 16 <seg> codes -> 64x64 mask (the bundle's mask_decoder.onnx) -> full-image mask.

Pasting follows big_vision's segmentation evaluator (evaluators/proj/paligemma/transfers/segmentation.py):
the raw 64x64 decoder output (nominally in [-1, 1], not clipped) is resized to the box with PIL's
bilinear filter and thresholded at 0 ("> 0 is the object": the VQ-VAE was trained on masks scaled to
[-1, 1], so 0 is the midpoint between background and object). The box is rounded to whole pixels first
(big_vision truncates with int(); rounding is the inverse of the demo generator's binning, so a decoded
ground-truth box lands on exactly its own pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pgexport_runtime import io_names as io
from pgexport_runtime.session import SessionConfig, create_session, run_rows

MASK_SIZE = 64


class MaskDecoder:
    """The bundle's mask decoder graph: codes [N, 16] int64 -> masks [N, 64, 64] float32 (the sizes of every
    PaliGemma; `codes`, the manifest's MaskCodes, also bounds the code values)."""

    def __init__(self, path: Path, codes=None, session: SessionConfig | None = None, one_row: bool = False):
        self.num_tokens, self.mask_size = (codes.num_tokens, codes.mask_size) if codes else (16, MASK_SIZE)
        self.num_codes = codes.num_codes if codes else None
        self.session = create_session(path, session or SessionConfig())
        self.one_row = one_row  # a static bundle's graph: batch 1

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(np.asarray(codes, dtype=np.int64).reshape(-1, self.num_tokens))
        if len(codes) == 0:
            return np.zeros((0, self.mask_size, self.mask_size), dtype=np.float32)
        if self.num_codes and (codes.min() < 0 or codes.max() >= self.num_codes):  # else an onnxruntime error
            raise ValueError(f"<seg> codes must be in 0..{self.num_codes - 1}")
        return run_rows(self.session, io.MASKS, {io.SEG_CODES: codes}, self.one_row)


def box_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) float pixels -> whole, clamped, ordered pixel edges."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = sorted((min(max(x0, 0), width), min(max(x1, 0), width)))
    y0, y1 = sorted((min(max(y0, 0), height), min(max(y1, 0), height)))
    return x0, y0, x1, y1


def paste_mask(mask64: np.ndarray, box: Sequence[float], width: int, height: int) -> np.ndarray:
    """A 64x64 decoder output and its (x0, y0, x1, y1) box -> bool mask [height, width] of the image."""
    x0, y0, x1, y1 = box_pixels(box, width, height)
    out = np.zeros((height, width), dtype=bool)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return out
    image = Image.fromarray(np.asarray(mask64, dtype=np.float32))  # float32 -> PIL mode "F", no uint8 rounding
    resized = image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    out[y0:y1, x0:x1] = np.asarray(resized) > 0.0
    return out


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major runs, starting with a (possibly empty) run of zeros.

    `pycocotools.mask.frPyObjects(rle, h, w)` reads it; `rle_to_mask` is the inverse.
    """
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = runs.tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    flat = np.repeat(values, rle["counts"])
    return flat.reshape((w, h)).T.copy()
