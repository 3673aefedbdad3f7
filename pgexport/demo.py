"""`pgexport demo`: build the default model into a bundle (once), answer one held-out sample image per task
with it and with transformers, and show whether the bundle's tokens are transformers' tokens."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pgexport.verify import image_prompts
from pgexport.source import sources
from pgexport.build.bundle_steps import BuildOptions, build
from pgexport.files import atomic_path


@dataclass(frozen=True)
class Question:
    task: str | None
    image: Path
    prompt: str
    expected: str | None
    max_new_tokens: int | None


@dataclass(frozen=True)
class DemoAnswer:
    question: Question
    answer: str  # the bundle's
    reference: str  # transformers'
    same_tokens: bool
    overlay: Path | None  # detect / segment: the bundle's answer drawn on the image


def ensure_bundle(out: Path, progress=None, rebuild: bool = False) -> Path:
    """Reuse `out` if it already holds a bundle of the default model, else build it."""
    model = sources.default_model()
    manifest = out / "manifest.json"
    if manifest.is_file() and not rebuild:
        recorded = (json.loads(manifest.read_text()).get("source") or {}).get("sha256")
        if recorded is not None and recorded == sources.resolve(model).describe()["sha256"]:
            return out
    return build(BuildOptions(model=model, out=out, force=out.exists()), progress)


def sample_questions(folder: Path) -> list[Question]:
    """One held-out image per task (the demo model's set, split "demo") with its prompt and ground truth,
    copied into `folder` for the user to look at (a plain test card before the demo model exists)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (sources.DEMO_MODEL / "model.safetensors").is_file():
        from pgexport.verify.parity import parity_image

        path = folder / "sample.png"
        with atomic_path(path) as tmp:
            parity_image(224).save(tmp)
        return [Question(None, path, "caption en", None, None), Question(None, path, "detect circle", None, None)]
    questions = []
    for row in image_prompts.read(image_prompts.DEMO_SET, "demo", what="demo"):
        path = folder / f"sample-{row.task}.png"
        with atomic_path(path) as tmp:
            shutil.copyfile(row.image, tmp)
        questions.append(Question(row.task, path, row.prompt, row.answer, row.max_new_tokens))
    return questions


def reference_tokens(model: str, questions: list[Question], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy tokens (fp32) for each question, stage by stage through the one PyTorch reference."""
    import numpy as np
    from PIL import Image

    from pgexport.verify.reference import TorchReference

    engine = TorchReference.load(model, "fp32")
    out = []
    for q in questions:
        with Image.open(q.image) as im:
            pixels, ids = engine.preprocess(im.convert("RGB"), q.prompt)
        n = q.max_new_tokens or max_new_tokens
        token = int(np.argmax(engine.prefill(ids, engine.project(engine.vision(pixels)), ids.shape[1] + n)))
        tokens = [token]
        while len(tokens) < n and token not in engine.eos_ids:
            token = int(np.argmax(engine.decode(token)))
            tokens.append(token)
        out.append([t for t in tokens if t not in engine.eos_ids])
    return out


def run_demo(out: Path, progress=None, rebuild: bool = False) -> tuple[Path, list[DemoAnswer]]:
    from pgexport_runtime import PaliGemma
    from pgexport_runtime.overlay import save_overlay

    bundle = ensure_bundle(out, progress, rebuild)
    questions = sample_questions(out.parent / f"{out.name}-samples")
    pg = PaliGemma(bundle)
    default_new = pg.manifest.generation.max_new_tokens
    ours = [pg.answer(q.image, q.prompt, max_new_tokens=q.max_new_tokens or default_new) for q in questions]
    refs = reference_tokens(sources.default_model(), questions, default_new)
    results = []
    for q, a, ref in zip(questions, ours, refs):
        overlay = None
        if a.detections or a.segments:
            overlay = q.image.with_name(q.image.stem + "-overlay.png")
            save_overlay(pg.images([q.image])[0], a, overlay)
        got = [t for t in a.tokens if t not in pg.eos_ids]
        results.append(DemoAnswer(q, a.text, pg.tokenizer.decode(ref), got == ref, overlay))
    return bundle, results
