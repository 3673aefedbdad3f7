"""`pgexport demo`: build the default model into a bundle (once) and answer held-out sample images with it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import heldout, sources
from .files import atomic_path
from .build import BuildOptions, build



@dataclass
class DemoAnswer:
    image: Path
    prompt: str
    answer: str
    expected: str | None


def ensure_bundle(out: Path, progress=None, rebuild: bool = False) -> Path:
    """Reuse `out` if it already holds a bundle of the default model, else build it."""
    model = sources.default_model()
    manifest = out / "manifest.json"
    if manifest.is_file() and not rebuild:
        recorded = (json.loads(manifest.read_text()).get("source") or {}).get("sha256")
        if recorded is not None and recorded == sources.resolve(model).describe()["sha256"]:
            return out
    return build(BuildOptions(model=model, out=out, force=out.exists()), progress)


def sample_questions(folder: Path) -> list[tuple[Path, str, str | None]]:
    """One held-out image per task (the demo model's set, split "demo") with its prompt and ground truth,
    copied into `folder` for the user to look at (a plain test card before the demo model exists)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (sources.DEMO_MODEL / "model.safetensors").is_file():
        from .parity import parity_image

        path = folder / "sample.png"
        with atomic_path(path) as tmp:
            parity_image(224).save(tmp)
        return [(path, "caption en", None), (path, "detect circle", None)]
    questions = []
    for row in heldout.read(heldout.DEMO_SET, "demo", what="demo"):
        path = folder / f"sample-{row.task}.png"
        with atomic_path(path) as tmp:
            shutil.copyfile(row.image, tmp)
        questions.append((path, row.prompt, row.answer))
    return questions


def run_demo(out: Path, progress=None, rebuild: bool = False) -> tuple[Path, list[DemoAnswer]]:
    from pgexport_runtime import PaliGemma

    bundle = ensure_bundle(out, progress, rebuild)
    questions = sample_questions(out.parent / f"{out.name}-samples")
    pg = PaliGemma(bundle)
    results = pg.generate([p for p, _, _ in questions], [q for _, q, _ in questions])
    return bundle, [DemoAnswer(p, q, r.text, exp) for (p, q, exp), r in zip(questions, results)]
