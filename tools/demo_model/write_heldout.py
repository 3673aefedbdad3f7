"""Write the demo model's held-out set as files (models/pg-demo-heldout), for what pgexport itself runs on it:

    python -m tools.demo_model.write_heldout --out models/pg-demo-heldout

- eval: 20 examples per task from the evaluation seed (what `pgexport bench` scores on the demo model)
- gate: 64 examples from the evaluation seed, in an index range the evaluation does not use (the accuracy gate)
- calibration: 128 examples from their own seed (GPTQ, AWQ and `--quant auto`)
- demo: one caption, VQA, OCR, detect and segment example, each its own scene (`pgexport demo`)

Each split interleaves the tasks, so any prefix of it covers all of them.

    python -m tools.demo_model.write_heldout --fresh 250 --seed 7001 --out quant-table/fresh

writes one split, "fresh", of new items from a seed of your choosing (one that neither training nor the sets
above use), for a measurement that must not be tuned on the shipped sets (benchmarks/quant_table.py --eval). Rows are described in
pgexport/verify/image_prompts.py; boxes are written (x0, y0, x1, y1), the runtime's convention, and segment rows carry
each target's ground-truth mask as a PNG. tests/test_demo_heldout.py regenerates the set and compares.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from . import evaluate, generator
from .train import TRAIN_SEED

CALIBRATION_SEED = 3
GATE_OFFSET = 500_000
DEMO_SEED = 20261123  # not a training or eval seed of the demo model
SPLITS = {"eval": 20, "gate": 64, "calibration": 128}  # rows per split (eval: per task)
DEMO_TASKS = tuple(generator.TASKS)
MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "pg-demo"


def interleaved(seed: int, n: int, offset: int, encode) -> list[generator.Example]:
    per_task = -(-n // len(generator.TASKS))
    pools = [evaluate.eval_examples(t, per_task, seed=seed, offset=offset, encode_masks=encode)
             for t in generator.TASKS]
    return [pool[i] for i in range(per_task) for pool in pools][:n]


def _encoder(model_dir: Path):
    from .vqvae import load_vqvae

    return load_vqvae(model_dir).encode_np


def fresh(n: int, seed: int, model_dir: Path = MODEL_DIR) -> dict[str, list[generator.Example]]:
    """One split of n items of `seed`, interleaved over the tasks."""
    if seed in (TRAIN_SEED, evaluate.EVAL_SEED, CALIBRATION_SEED, DEMO_SEED, evaluate.CARD_SEED):
        raise SystemExit(f"seed {seed} is one of the demo model's own (training, evaluation or a shipped set)")
    return {"fresh": interleaved(seed, n, 0, _encoder(model_dir))}


def examples(model_dir: Path = MODEL_DIR) -> dict[str, list[generator.Example]]:
    """The splits; segment answers carry the <seg> codes of the demo model's own VQ-VAE encoder."""
    encode = _encoder(model_dir)
    return {"eval": interleaved(evaluate.EVAL_SEED, SPLITS["eval"] * len(generator.TASKS), 0, encode),
            "gate": interleaved(evaluate.EVAL_SEED, SPLITS["gate"], GATE_OFFSET, encode),
            "calibration": interleaved(CALIBRATION_SEED, SPLITS["calibration"], 0, encode),
            "demo": [generator.make_example(DEMO_SEED, k, task=t, encode_masks=encode)
                     for k, t in enumerate(DEMO_TASKS)]}


def xy(box) -> list[float]:
    """The generator's (y0, x0, y1, x1) -> the runtime's (x0, y0, x1, y1)."""
    y0, x0, y1, x1 = box
    return [float(x0), float(y0), float(x1), float(y1)]


def write(out: Path, splits: dict[str, list[generator.Example]] | None = None) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    lines = []
    for split, exs in (splits or examples()).items():
        for n, e in enumerate(exs):
            rid = f"{split}-{e.task}-{n:04d}"
            e.scene.image.save(tmp / "images" / f"{rid}.png", optimize=True)
            row = {"id": rid, "split": split, "task": e.task, "image": f"images/{rid}.png", "prompt": e.prefix,
                   "answer": e.suffix, "max_new_tokens": evaluate.TASK_MAX_NEW[e.task]}
            if e.task in ("detect", "segment"):
                row["boxes"] = [[o.kind, *xy(o.box)] for o in e.targets]
            if e.task == "segment":
                row["masks"] = []
                for k, o in enumerate(e.targets):
                    name = f"images/{rid}-mask{k}.png"
                    Image.fromarray(np.asarray(o.mask, dtype=np.uint8) * 255).save(tmp / name, optimize=True)
                    row["masks"].append(name)
            lines.append(json.dumps(row))
    (tmp / "heldout.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models/pg-demo-heldout"))
    ap.add_argument("--fresh", type=int, default=None, help="write only N new items of --seed, split 'fresh'")
    ap.add_argument("--seed", type=int, default=None, help="the seed of --fresh")
    args = ap.parse_args()
    if (args.fresh is None) != (args.seed is None):
        ap.error("--fresh and --seed go together")
    write(args.out, fresh(args.fresh, args.seed) if args.fresh else None)


if __name__ == "__main__":
    main()
