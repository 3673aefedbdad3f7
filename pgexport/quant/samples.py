"""Image+prompt samples for the accuracy gate (held-out) and for GPTQ calibration.

For the demo model both come from its generator, from different seeds (training 1, evaluation 2,
calibration 3), so calibration never sees the gate's samples. Other models get generated test cards
with the task prefixes, or a user JSONL of {"image": path, "prompt": text} lines.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pgexport_runtime.errors import UserError
from pgexport_runtime.images import load_image

from .. import sources

CALIBRATION_SEED = 3
GATE_OFFSET = 500_000  # gate samples: held-out seed, an index range the demo evaluation does not use
PROMPTS = ("caption en", "answer en what colour is the shape on the left?", "ocr", "detect circle",
           "segment square", "answer en how many shapes are there?", "detect circle ; triangle")
TASKS = ("caption", "vqa", "ocr", "detect", "segment")


def is_demo(source: sources.Source) -> bool:
    return source.kind == "local" and Path(source.directory).resolve() == sources.DEMO_MODEL.resolve()


def _from_demo(seed: int, n: int, offset: int) -> list[tuple[Image.Image, str]]:
    from ..demo.evaluate import eval_examples

    per_task = -(-n // len(TASKS))
    pools = [eval_examples(t, per_task, seed=seed, offset=offset) for t in TASKS]
    out = []
    for i in range(per_task):
        for pool in pools:
            if len(out) < n:
                out.append((pool[i].scene.image, pool[i].prefix))
    return out


def _synthetic(n: int, seed: int, size: int) -> list[tuple[Image.Image, str]]:
    from ..parity import parity_image

    return [(parity_image(size, seed=seed * 1000 + i), PROMPTS[i % len(PROMPTS)]) for i in range(n)]


def gate_samples(source: sources.Source, n: int, image_size: int) -> list[tuple[Image.Image, str]]:
    if is_demo(source):
        from ..demo.evaluate import EVAL_SEED

        return _from_demo(EVAL_SEED, n, GATE_OFFSET)
    return _synthetic(n, seed=2, size=image_size)


def calibration_samples(source: sources.Source, n: int, image_size: int,
                        jsonl: Path | None = None) -> list[tuple[Image.Image, str]]:
    if jsonl is not None:
        return read_jsonl(jsonl, n)
    if is_demo(source):
        return _from_demo(CALIBRATION_SEED, n, 0)
    return _synthetic(n, seed=CALIBRATION_SEED, size=image_size)


def read_jsonl(path: Path, limit: int | None = None) -> list[tuple[Image.Image, str]]:
    if not Path(path).is_file():
        raise UserError(f"calibration file not found: {path}")
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, prompt = row["image"], row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{i}: expected a JSON object with 'image' and 'prompt'") from None
        image_path = Path(image) if Path(image).is_absolute() else Path(path).parent / image
        out.append((load_image(image_path), str(prompt)))
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"{path}: no samples")
    return out
