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

from pgexport_runtime.errors import UserError

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
    pil: Image.Image | None = field(default=None, repr=False)  # in-memory image, written by materialize

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pil"}


def demo_items(limit: int, max_new_tokens: int | None) -> tuple[list[Item], list]:
    """The held-out set of pgexport.demo, interleaved across tasks so that any limit covers all of them.

    Returns the items (images not yet written) and the generator Examples (ground truth for metrics)."""
    from pgexport.demo import evaluate, generator

    per_task = -(-limit // len(generator.TASKS))
    by_task = {t: evaluate.eval_examples(t, per_task) for t in generator.TASKS}
    examples = [by_task[t][i] for i in range(per_task) for t in generator.TASKS][:limit]
    items = []
    for n, e in enumerate(examples):
        cap = evaluate.TASK_MAX_NEW[e.task]
        items.append(Item(id=f"{e.task}-{n:04d}", image="", prompt=e.prefix, answer=e.suffix or None, task=e.task,
                          max_new_tokens=min(cap, max_new_tokens) if max_new_tokens else cap, pil=e.scene.image))
    return items, examples


def jsonl_items(path: Path, limit: int, max_new_tokens: int | None) -> list[Item]:
    """Lines of {"image": path, "prompt": text, "answer": text?}; image paths relative to the file."""
    if not path.is_file():
        raise UserError(f"--eval {path}: no such file (give 'demo' or a JSONL of image/prompt/answer)")
    items = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, prompt = Path(row["image"]), row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{n + 1}: expected a JSON object with 'image' and 'prompt'") from None
        image = image if image.is_absolute() else path.parent / image
        items.append(Item(id=f"item-{n:04d}", image=str(image), prompt=prompt, answer=row.get("answer"),
                          task=row.get("task"), max_new_tokens=max_new_tokens or 32))
        if len(items) == limit:
            break
    if not items:
        raise UserError(f"{path}: no items")
    return items


def generated_items(limit: int, image_size: int, new_tokens: int) -> list[Item]:
    """Speed mode: deterministic synthetic images at the model's resolution, one fixed prompt."""
    from pgexport.parity import parity_image

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
