"""Image+prompt samples for the accuracy gate (held-out) and for GPTQ calibration.

The demo model's come from its held-out set files (pgexport/verify/image_prompts.py: splits "gate" and "calibration",
disjoint from each other and from its training data). Other models get generated test cards with the task
prefixes, or a user JSONL of {"image": path, "prompt": text} lines for calibration.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pgexport.verify import image_prompts
from pgexport.source import sources

CALIBRATION_SEED = 3
PROMPTS = ("caption en", "answer en what colour is the shape on the left?", "ocr", "detect circle",
           "segment square", "answer en how many shapes are there?", "detect circle ; triangle")


def is_demo(source: sources.Source) -> bool:
    return source.kind == "local" and Path(source.directory).resolve() == sources.DEMO_MODEL.resolve()


def _from_set(path: Path, split: str | None, n: int, what: str) -> list[tuple[Image.Image, str]]:
    """Up to n rows (all the set has, if fewer: the gate and calibration report how many they used)."""
    return [(row.load(), row.prompt) for row in image_prompts.read(path, split, limit=n, what=what)]


def _synthetic(n: int, seed: int, size: int) -> list[tuple[Image.Image, str]]:
    from pgexport.verify.parity import parity_image

    return [(parity_image(size, seed=seed * 1000 + i), PROMPTS[i % len(PROMPTS)]) for i in range(n)]


def gate_samples(source: sources.Source, n: int, image_size: int) -> list[tuple[Image.Image, str]]:
    if is_demo(source) and n > 0:
        return _from_set(image_prompts.DEMO_SET, "gate", n, "gate")
    return _synthetic(n, seed=2, size=image_size)


def bundle_samples(source_record: dict | None, n: int, image_size: int) -> list[tuple[Image.Image, str]]:
    """Items to compare a bundle with a variant of it: the demo model's evaluation split (100 items) for a bundle
    built from the shipped demo model (its manifest names it by its path in the repository), generated images
    and PROMPTS for any other."""
    if (source_record or {}).get("spec") == sources.DEMO_MODEL.relative_to(sources.REPO_ROOT).as_posix():
        return _from_set(image_prompts.DEMO_SET, "eval", n, "eval")
    return _synthetic(n, seed=9, size=image_size)


def calibration_samples(source: sources.Source, n: int, image_size: int,
                        jsonl: Path | None = None) -> list[tuple[Image.Image, str]]:
    if jsonl is not None:
        return _from_set(jsonl, None, n, "calibration")
    if is_demo(source):
        return _from_set(image_prompts.DEMO_SET, "calibration", n, "calibration")
    return _synthetic(n, seed=CALIBRATION_SEED, size=image_size)
