"""PaliGemma's answer grammar for detect / segment / refer: text -> located objects (numpy only).

Grammar (big_vision's, also what the demo generator writes):

    answer  = object { " ; " object }
    object  = loc loc loc loc [ seg x 16 ] " " label
    loc     = "<locNNNN>"   NNNN in 0..1023, in the order y_min, x_min, y_max, x_max
    seg     = "<segNNN>"    NNN in 0..127, the 4x4 codes of the VQ-VAE mask decoder (masks.py)

De-binning convention: ``coord = bin / 1023 * size``, with ``size`` the ORIGINAL image's height for y
and its width for x. This is big_vision's evaluator (`tokens[:, :4] / 1023`, evaluators/proj/paligemma/
transfers/segmentation.py) and the exact inverse of the binning that produced the training targets,
``bin = round(coord / size * 1023)`` (big_vision's `round(x * (1024 - 1))`, and the demo generator's
`metrics.coord_to_bin` / `box_to_loc`): a box encoded and decoded comes back within half a bin. The public
Hugging Face PaliGemma demo divides by 1024 instead, which shrinks every coordinate by up to one bin
(x1 = 1023 maps to 0.999 * width, not the right edge); we do not follow it.

Why separate x and y scales undo the resize: the model sees the image squashed to a square, and a bin is
a fraction of the square's side; the same fraction of the original width (x) or height (y) is the
original pixel. Boxes come back as (x0, y0, x1, y1) floats in pixels of the original image, clamped to
it, with corners ordered; x1/y1 are exclusive edges (a box over the whole image is (0, 0, W, H)).

Nothing here raises on model output: malformed answers give what can be parsed plus warnings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NUM_LOC_BINS = 1024  # <loc0000> .. <loc1023>
NUM_SEG_TOKENS = 16  # codes per mask (a 4x4 grid)
NUM_SEG_CODES = 128  # <seg000> .. <seg127>, the VQ-VAE codebook
STRUCTURED_TASKS = ("detect", "segment", "refer")  # prompts whose answer is a list of objects
# PaliGemma's task prefixes (the mix checkpoints' "caption en", "answer en ...", "detect cat ; dog", ...)
TASK_PREFIXES = ("caption", "describe", "answer", "question", "ocr", *STRUCTURED_TASKS)

_TOKEN_RE = re.compile(r"<loc(\d{4})>|<seg(\d{3})>|(<[^<>]*>)|([^<]+|<)")


def bin_to_coord(b: int, size: float) -> float:
    """A <locNNNN> bin -> a pixel coordinate along an axis of `size` pixels (see module docstring)."""
    return min(max(b, 0), NUM_LOC_BINS - 1) / (NUM_LOC_BINS - 1) * size


def coord_to_bin(coord: float, size: float) -> int:
    """The inverse: what the training data (and the demo generator) write for a pixel coordinate."""
    return int(min(max(round(coord / size * (NUM_LOC_BINS - 1)), 0), NUM_LOC_BINS - 1))


@dataclass(frozen=True)
class ParsedObject:
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original-image pixels
    bins: tuple[int, int, int, int]  # the raw <loc> bins, PaliGemma order y0, x0, y1, x1
    codes: tuple[int, ...] | None = None  # 16 <seg> codes, or None for a box-only object


@dataclass(frozen=True)
class Parsed:
    objects: tuple[ParsedObject, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


def is_structured_prompt(prompt: str) -> bool:
    words = prompt.strip().split(maxsplit=1)
    return bool(words) and words[0].lower() in STRUCTURED_TASKS


def task_warning(prompt: str) -> str | None:
    """A warning for a prompt that starts with no known task prefix; the model still answers it."""
    words = prompt.strip().split(maxsplit=1)
    if words and words[0].lower() in TASK_PREFIXES:
        return None
    first = words[0][:40] if words else ""
    return f"unknown task prefix {first!r} (PaliGemma knows {', '.join(TASK_PREFIXES)}); answered anyway"


def collapse(warnings: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Repeated warnings as one counted line each: a degenerate answer that repeats a mistake in every
    object ("'cat' without a box" x 50) reads as one line, naming the objects it came from."""
    groups: dict[str, list] = {}  # key -> [first text, object numbers, count]
    for w in warnings:
        m = _OBJECT_WARNING.fullmatch(w)
        body, n = (m[2], int(m[1])) if m else (w, None)
        key = _TOKEN_NUMBER.sub(lambda t: f"<{t[1]}{'N' * len(t[2])}>", body)
        g = groups.setdefault(key, [body, [], 0])
        g[1] += [n] if n is not None else []
        g[2] += 1
    out = []
    for key, (body, objects, count) in groups.items():
        if count == 1:
            out.append(f"object {objects[0]}: {body}" if objects else body)
            continue
        objects = sorted(set(objects))
        where = "" if not objects else (f"object {objects[0]}: " if len(objects) == 1 else
                                         f"{len(objects)} objects ({objects[0]}..{objects[-1]}): ")
        out.append(f"{where}{key} ({count} times)")
    return tuple(out)


_OBJECT_WARNING = re.compile(r"object (\d+): (.*)", re.S)
_TOKEN_NUMBER = re.compile(r"<(loc|seg)(\d+)>")


def bins_to_box(bins: tuple[int, int, int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """(y0, x0, y1, x1) bins -> ordered, clamped (x0, y0, x1, y1) pixels of a width x height image."""
    y0, x0, y1, x1 = bins
    ys = sorted((bin_to_coord(y0, height), bin_to_coord(y1, height)))
    xs = sorted((bin_to_coord(x0, width), bin_to_coord(x1, width)))
    clamp = lambda v, hi: min(max(v, 0.0), float(hi))  # noqa: E731
    return clamp(xs[0], width), clamp(ys[0], height), clamp(xs[1], width), clamp(ys[1], height)


def parse_objects(text: str, width: int, height: int, structured: bool = True) -> Parsed:
    """Parse an answer for an image of `width` x `height` pixels (the original image, before resizing).

    `structured=False` (a caption or VQA prompt) treats an answer without any <loc>/<seg> token as plain
    text: no objects and no warnings.
    """
    if not structured and not re.search(r"<(loc\d{4}|seg\d{3})>", text):
        return Parsed()
    objects: list[ParsedObject] = []
    warnings: list[str] = []
    for n, chunk in enumerate(text.split(";")):
        if chunk.strip():
            _parse_chunk(chunk, n, width, height, objects, warnings)
        elif text.strip():
            warnings.append(f"object {n}: empty (stray ';')")
    return Parsed(tuple(objects), collapse(warnings))


def _parse_chunk(chunk: str, n: int, width: int, height: int, objects: list, warnings: list) -> None:
    """One ' ; '-separated part; a loc group after a label starts another object (missing separator)."""
    locs: list[int] = []
    segs: list[int] = []
    label: list[str] = []
    where = f"object {n}"

    def flush() -> None:
        name = "".join(label).strip()
        if not locs:
            if name or segs:
                warnings.append(f"{where}: {'seg tokens' if segs else repr(name)} without a box; ignored")
            return
        if len(locs) < 4:
            warnings.append(f"{where}: partial box ({len(locs)} of 4 <loc> tokens); ignored")
            return
        if not name:
            warnings.append(f"{where}: missing label")
        codes = None
        if len(segs) == NUM_SEG_TOKENS:
            codes = tuple(segs)
        elif segs:
            warnings.append(f"{where}: partial mask ({len(segs)} of {NUM_SEG_TOKENS} <seg> tokens); box kept")
        bins = (locs[0], locs[1], locs[2], locs[3])
        if bins[2] < bins[0] or bins[3] < bins[1]:
            warnings.append(f"{where}: box corners out of order; swapped")
        objects.append(ParsedObject(name, bins_to_box(bins, width, height), bins, codes))

    for m in _TOKEN_RE.finditer(chunk):
        loc, seg, other, plain = m.groups()
        if loc is not None:
            if segs or "".join(label).strip():  # a new loc group: the current object is finished
                if len(locs) == 4:
                    warnings.append(f"{where}: next box without ' ; ' separator")
                flush()
                locs, segs, label = [], [], []
            if len(locs) == 4:
                warnings.append(f"{where}: extra <loc{loc}> ignored")
            else:
                locs.append(int(loc))
        elif seg is not None:
            if len(locs) < 4:
                warnings.append(f"{where}: <seg{seg}> without a complete box; ignored")
            elif len(segs) == NUM_SEG_TOKENS or "".join(label).strip():
                warnings.append(f"{where}: extra <seg{seg}> ignored")
            elif int(seg) >= NUM_SEG_CODES:
                warnings.append(f"{where}: <seg{seg}> is outside the codebook (0..{NUM_SEG_CODES - 1}); ignored")
            else:
                segs.append(int(seg))
        elif other is not None:
            warnings.append(f"{where}: unknown token {other} ignored")
        else:
            label.append(plain)
    flush()
