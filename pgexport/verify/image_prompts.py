"""Image+prompt sets in JSONL: the one reader of `--calibration`, `bench --eval` and the demo model's held-out set.

A line is {"image": path, "prompt": text} plus, optionally, "answer" (ground-truth text), "task" (caption, vqa,
ocr, detect, segment), "split", "max_new_tokens", "boxes" ([[label, x0, y0, x1, y1], ...] in pixels of the image)
and "masks" (one ground-truth mask image per box, for segment). Paths are relative to the file. The demo
model's held-out set (models/pg-demo-heldout, written by tools/demo_model/write_heldout.py) is such a file, split into
"eval" (bench), "gate" (the accuracy gate), "calibration" (GPTQ) and "demo" (`pgexport demo`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pgexport_runtime import limits
from pgexport_runtime.errors import UserError
from pgexport_runtime.images import load_image

from pgexport.source import sources

DEMO_SET = sources.MODELS_DIR / "pg-demo-heldout" / "heldout.jsonl"
MAX_BYTES = 64 << 20  # a set file is read whole
MAX_ROWS = 100_000


@dataclass(frozen=True)
class Row:
    id: str
    image: Path
    prompt: str
    answer: str | None = None
    task: str | None = None
    split: str | None = None
    max_new_tokens: int | None = None
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] | None = None
    masks: tuple[Path, ...] | None = None

    def load(self) -> Image.Image:
        return load_image(self.image)

    def load_masks(self) -> list[np.ndarray]:
        return load_masks(self.masks or ())


def load_masks(paths) -> list[np.ndarray]:
    """Ground-truth mask images -> bool arrays (white is the object)."""
    return [np.asarray(load_image(p).convert("L")) > 127 for p in paths]


def read(path: Path, split: str | None = None, limit: int | None = None, what: str = "set") -> list[Row]:
    """The rows of `path` (of one split), at most `limit`; a malformed line is a one-line UserError.

    The file is UTF-8 and every string in it valid UTF-8 text (the rule --prompt follows, limits.py): a byte or
    an escaped surrogate that is not text is refused, naming its line, never replaced. A set holds at most
    MAX_ROWS rows: asked for more (no limit, or a larger one), a longer file is refused rather than cut short."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise UserError(f"{path}: larger than {MAX_BYTES >> 20} MiB")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {exc.start} of the file); {what} files are UTF-8 "
                        "text") from None
    cap = MAX_ROWS if limit is None else min(limit, MAX_ROWS)
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # JSON strings may hold U+2028, which splitlines splits at
        if not line.strip():
            continue
        try:
            row = _row(json.loads(line), path.parent, n)
        except UserError as exc:  # limits.py's words for a prompt or a string it refuses
            raise UserError(f"{path}:{n}: {exc}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{n}: expected a JSON object with 'image' and 'prompt' (see pgexport/verify/image_prompts.py "
                            "for the optional fields)") from None
        if split is not None and row.split != split:
            continue
        if len(rows) == cap:
            if limit is None or limit > MAX_ROWS:  # asked for more than a set may hold, and the file has more
                raise UserError(f"{path}: more than {MAX_ROWS:,} {what} rows" + (f" in split {split!r}" if split else "")
                                + f"; a set holds at most {MAX_ROWS:,} (split the file, or ask for fewer rows)")
            break
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no {what} rows" + (f" in split {split!r}" if split else ""))
    return rows


def _row(d: dict, base: Path, n: int) -> Row:
    def path(p) -> Path:
        if not isinstance(p, str):
            raise TypeError(p)
        return Path(p) if Path(p).is_absolute() else base / p

    def opt(key, kind):
        v = d.get(key)
        if v is not None and not isinstance(v, kind):
            raise TypeError(key)
        return v

    if not isinstance(d, dict) or not isinstance(d["prompt"], str):
        raise TypeError("prompt")
    limits.check_prompt(d["prompt"])  # the rule of --prompt: non-blank UTF-8 text, bounded
    _check_text(d, "")
    boxes = opt("boxes", list)
    if boxes is not None:
        boxes = tuple((str(b[0]), tuple(float(v) for v in b[1:5])) for b in boxes if len(b) == 5)
    masks = opt("masks", list)
    max_new = opt("max_new_tokens", int)
    if max_new is not None and not 1 <= max_new <= 1 << 16:
        raise ValueError("max_new_tokens")
    return Row(id=str(d.get("id", f"item-{n:04d}")), image=path(d["image"]), prompt=d["prompt"],
               answer=opt("answer", str), task=opt("task", str), split=opt("split", str), max_new_tokens=max_new,
               boxes=boxes, masks=tuple(path(p) for p in masks) if masks is not None else None)


def _check_text(value, where: str) -> None:
    """Every string of a row (ids, answers, labels, paths) valid UTF-8 text, as a prompt must be."""
    if isinstance(value, str):
        limits.check_utf8(value, where or "a string")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, f"a key of {where}" if where else "a key")
            _check_text(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{where}[{i}]")
