"""Typed answers: a generation Result plus the detections and segments its text describes.

`PaliGemma.answer(image, prompt)` returns an `Answer`; `to_answer(result, width, height, mask_decoder)`
does the same for a Result from `generate`. An object with 16 <seg> codes is a `Segment` (it has a box
too); one without is a `Detection`: each object is in exactly one of the two lists.
PaliGemma emits no confidence, so `score` is None (kept for decoders that add one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pgexport_runtime.answers import collapse, is_structured_prompt, parse_objects, task_warning
from pgexport_runtime.masks import mask_to_rle, paste_mask

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original image


@dataclass(frozen=True)
class Detection:
    label: str
    box: Box
    score: float | None = None

    def to_json(self) -> dict:
        return {"label": self.label, "box": [round(v, 2) for v in self.box], "score": self.score}


@dataclass(frozen=True)
class Segment:
    label: str
    box: Box
    mask: np.ndarray | None = field(compare=False, repr=False)  # bool [H, W] of the original image
    codes: tuple[int, ...] = ()
    score: float | None = None

    def to_json(self) -> dict:
        mask = None if self.mask is None else mask_to_rle(self.mask)
        area = None if self.mask is None else int(self.mask.sum())
        return {"label": self.label, "box": [round(v, 2) for v in self.box], "score": self.score,
                "area": area, "mask": mask, "codes": list(self.codes)}


@dataclass(frozen=True)
class Answer:
    prompt: str
    text: str
    tokens: tuple[int, ...]
    detections: tuple[Detection, ...] = ()
    segments: tuple[Segment, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """JSON-ready dict; masks as COCO uncompressed RLE (`masks.mask_to_rle`)."""
        return {"prompt": self.prompt, "text": self.text, "tokens": list(self.tokens),
                "detections": [d.to_json() for d in self.detections],
                "segments": [s.to_json() for s in self.segments], "warnings": list(self.warnings)}


MaskDecodeFn = Callable[[np.ndarray], np.ndarray]  # codes [N, 16] -> masks [N, 64, 64]


def to_answer(result, width: int, height: int, mask_decoder: MaskDecodeFn | None) -> Answer:
    """Parse `result.text` for an image of width x height and decode its masks (one batched call)."""
    parsed = parse_objects(result.text, width, height, structured=is_structured_prompt(result.prompt))
    warnings = [w for w in [task_warning(result.prompt)] if w] + list(parsed.warnings)
    with_mask = [o for o in parsed.objects if o.codes is not None]
    masks64 = None
    if with_mask and mask_decoder is None:
        warnings.append("the answer has masks but the bundle has no mask decoder; masks not decoded")
    elif with_mask:
        masks64 = mask_decoder(np.array([o.codes for o in with_mask], dtype=np.int64))
    detections, segments = [], []
    for o in parsed.objects:
        if o.codes is None:
            detections.append(Detection(o.label, o.box))
            continue
        mask = None if masks64 is None else paste_mask(masks64[len(segments)], o.box, width, height)
        if mask is not None and not mask.any():
            warnings.append(f"segment {o.label!r}: empty mask")
        segments.append(Segment(o.label, o.box, mask, o.codes))
    return Answer(result.prompt, result.text, tuple(result.tokens), tuple(detections), tuple(segments),
                  collapse(warnings))


__all__ = ["Answer", "Detection", "Segment", "to_answer"]
