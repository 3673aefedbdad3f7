"""Box and mask IoU of a demo-model bundle's structured answers against the generator's ground truth.

    python benchmarks/answers_iou.py BUNDLE [--n 50] [--json out.json]

Runs the torch-free runtime (`PaliGemma.answers`) on the held-out detect and segment examples of
tools/demo_model/evaluate.py (EVAL_SEED) and scores them like the demo's evaluation: detections matched
one-to-one to ground truth (label must agree) -> mean matched box IoU, recall@0.5, precision@0.5;
segments -> per-image mask IoU, sum(matched IoU) / max(n_gt, n_pred), averaged.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (the demo's generator) is not installed

from pgexport.bench import metrics  # noqa: E402
from pgexport_runtime import PaliGemma, SessionConfig  # noqa: E402
from tools.demo_model import evaluate  # noqa: E402


def score(pg: PaliGemma, n: int, batch: int = 16) -> dict:
    out: dict = {"n": n}
    for task in ("detect", "segment"):
        t0 = time.time()
        exs = evaluate.eval_examples(task, n)
        answers = []
        for s in range(0, n, batch):
            chunk = exs[s:s + batch]
            answers += pg.answers([e.scene.image for e in chunk], [e.prefix for e in chunk],
                                  max_new_tokens=evaluate.TASK_MAX_NEW[task])
        if task == "detect":
            rows = [metrics.detection_scores([(o.kind, evaluate.xy(o.box)) for o in e.targets], a.detections)
                    for e, a in zip(exs, answers)]
            d = metrics.summarize_detection(rows)
            out |= {"detect_box_iou": d["mean_matched_iou"], "detect_recall@0.5": d["recall@0.5"],
                    "detect_precision@0.5": d["precision@0.5"]}
        else:
            mious, box_rows = [], []
            for e, a in zip(exs, answers):
                segs = [s for s in a.segments if s.label == e.classes[0] and s.mask is not None]
                gt = [o.mask for o in e.targets]
                iou = np.array([[metrics.mask_iou(g, s.mask) for s in segs] for g in gt]).reshape(len(gt), len(segs))
                pairs = metrics.match(iou)
                mious.append(sum(iou[i, j] for i, j in pairs) / max(len(gt), len(segs), 1))
                box_rows.append(metrics.detection_scores([(o.kind, evaluate.xy(o.box)) for o in e.targets], segs))
            out |= {"segment_mask_iou": float(np.mean(mious)),
                    "segment_box_iou": metrics.summarize_detection(box_rows)["mean_matched_iou"]}
        out[f"{task}_warnings"] = sum(len(a.warnings) for a in answers)
        out[f"{task}_seconds"] = round(time.time() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--n", type=int, default=50, help="held-out examples per task")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = score(PaliGemma(args.bundle, SessionConfig(intra_op_threads=args.threads)), args.n)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
