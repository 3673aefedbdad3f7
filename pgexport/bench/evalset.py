"""What a benchmark runs on: the demo model's held-out set, a JSONL file, or generated inputs.

Every item is materialised once into the work directory (image as PNG, prompt token ids, pixel values
from the runtime's own preprocessing), so that every bundle and every PyTorch reference is fed exactly
the same pixel values and token ids. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from pgexport.verify import image_prompts

DEMO = "demo"  # the name of the default eval set
GENERATED = "generated"  # speed mode: synthetic image + fixed prompt, fixed token count


@dataclass
class Item:
    id: str
    image: str  # PNG path (in the work directory)
    prompt: str
    answer: str | None = None
    task: str | None = None
    max_new_tokens: int = 32
    input_ids: list[int] = field(default_factory=list)
    boxes: list | None = None  # ground truth [[label, x0, y0, x1, y1], ...]
    masks: list[str] | None = None  # ground-truth mask images, one per box (segment)
    pil: Image.Image | None = field(default=None, repr=False)  # in-memory image, written by materialize

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pil"}


def set_items(path: Path, limit: int, max_new_tokens: int | None, split: str | None = None) -> list[Item]:
    """A JSONL set (pgexport/verify/image_prompts.py); the demo set is the demo model's held-out "eval" split, whose rows
    interleave the tasks so that any limit covers all of them. --max-new-tokens caps each row's own."""
    items = []
    for row in image_prompts.read(path, split, limit, what="eval"):
        own = row.max_new_tokens or max_new_tokens or 32
        items.append(Item(id=row.id, image=str(row.image), prompt=row.prompt, answer=row.answer, task=row.task,
                          max_new_tokens=min(own, max_new_tokens) if max_new_tokens else own,
                          boxes=[[label, *box] for label, box in row.boxes] if row.boxes is not None else None,
                          masks=[str(p) for p in row.masks] if row.masks is not None else None))
    return items


def generated_items(limit: int, image_size: int, new_tokens: int) -> list[Item]:
    """Speed mode: deterministic synthetic images at the model's resolution, one fixed prompt."""
    from pgexport.verify.parity import parity_image

    items = []
    for n in range(limit):
        items.append(Item(id=f"gen-{n:04d}", image="", prompt="caption en", max_new_tokens=new_tokens,
                          pil=parity_image(image_size, seed=n)))
    return items


def materialize(items: list[Item], bundle: Path, folder: Path) -> Path:
    """Write images, token ids and pixel values (the runtime's preprocessing of `bundle`) into `folder`.

    Returns the path of items.json; pixel values go to pixel_values.npy ([N, 3, H, W], one row per item)."""
    from pgexport_runtime.images import load_image
    from pgexport_runtime.manifest import load_manifest
    from pgexport_runtime.preprocess import preprocess
    from pgexport_runtime.prompt import PromptTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    m = load_manifest(bundle, verify=False)
    tokenizer = PromptTokenizer(m.tokenizer_file, m.geometry, m.tokenizer.image_token, m.tokenizer.bos_token)
    pixels = []
    for item in items:
        if item.pil is not None:
            item.image = str(folder / f"{item.id}.png")
            item.pil.save(item.image)
        img = load_image(item.image)
        item.image = str(Path(item.image).resolve())
        pixels.append(preprocess([img], m.preprocessing)[0])
        item.input_ids = tokenizer.prefix_ids(item.prompt)
    np.save(folder / "pixel_values.npy", np.stack(pixels))
    path = folder / "items.json"
    path.write_text(json.dumps([i.to_dict() for i in items]))
    return path


def load_items(path: Path) -> tuple[list[Item], np.ndarray]:
    """What a worker reads: the items and their pixel values."""
    items = [Item(**row) for row in json.loads(Path(path).read_text())]
    return items, np.load(Path(path).parent / "pixel_values.npy")


def as_pil(path: str) -> Image.Image:
    from pgexport_runtime.images import load_image

    return load_image(path)
