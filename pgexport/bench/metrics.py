"""Task metrics against ground truth: the one place they are defined (bench, and the demo model's evaluation in
tools/demo_model). Answers are read by the runtime's own parser (pgexport_runtime.answers), so a metric sees the
boxes and masks a user of the runtime gets: boxes (x0, y0, x1, y1) in pixels of the image, masks pasted by
pgexport_runtime.masks.paste_mask. numpy only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from pgexport_runtime.answers import ParsedObject, parse_objects
from pgexport_runtime.masks import paste_mask

MaskDecodeFn = Callable[[np.ndarray], np.ndarray]  # codes [N, 16] -> masks [N, 64, 64]


def objects(text: str, width: int, height: int) -> tuple[ParsedObject, ...]:
    """The objects of a detect/segment answer, as the runtime parses them."""
    return parse_objects(text, width, height).objects


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def match(iou: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-total-IoU one-to-one matching (exact up to 7x7, greedy beyond); pairs with IoU 0 dropped."""
    n, m = iou.shape
    if n == 0 or m == 0:
        return []
    if n <= 7 and m <= 7:
        best, best_pairs = -1.0, []
        if n <= m:
            for perm in itertools.permutations(range(m), n):
                s = sum(iou[i, perm[i]] for i in range(n))
                if s > best:
                    best, best_pairs = s, [(i, perm[i]) for i in range(n)]
        else:
            for perm in itertools.permutations(range(n), m):
                s = sum(iou[perm[j], j] for j in range(m))
                if s > best:
                    best, best_pairs = s, [(perm[j], j) for j in range(m)]
        return [(i, j) for i, j in best_pairs if iou[i, j] > 0]
    pairs, used_i, used_j = [], set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), m)
        if i in used_i or j in used_j or iou[i, j] <= 0:
            continue
        pairs.append((i, j))
        used_i.add(i)
        used_j.add(j)
    return pairs


def detection_scores(gt: Sequence[tuple[str, Sequence[float]]], pred: Sequence[ParsedObject]) -> dict:
    """One image: gt as (label, (x0, y0, x1, y1)) pairs; matched IoUs (labels must agree), recall@0.5 and
    precision counts."""
    iou = np.zeros((len(gt), len(pred)))
    for i, (label, box) in enumerate(gt):
        for j, p in enumerate(pred):
            if label == p.label:
                iou[i, j] = box_iou(box, p.box)
    ious = [float(iou[i, j]) for i, j in match(iou)]
    return {"matched_ious": ious, "tp50": sum(v >= 0.5 for v in ious), "n_gt": len(gt), "n_pred": len(pred)}


def summarize_detection(rows: list[dict]) -> dict:
    ious = [v for r in rows for v in r["matched_ious"]]
    tp = sum(r["tp50"] for r in rows)
    return {"mean_matched_iou": float(np.mean(ious)) if ious else 0.0,
            "recall@0.5": tp / max(1, sum(r["n_gt"] for r in rows)),
            "precision@0.5": tp / max(1, sum(r["n_pred"] for r in rows))}


def segmentation_score(gt_masks: Sequence[np.ndarray], pred: Sequence[ParsedObject], decode: MaskDecodeFn,
                       width: int, height: int) -> float:
    """One image's mask IoU: predicted codes decoded and pasted, matched one-to-one to the ground-truth masks;
    sum(matched IoU) / max(n_gt, n_pred), so missed and extra instances count as 0."""
    pred = [p for p in pred if p.codes is not None]
    pmasks = []
    if pred:
        decoded = decode(np.array([p.codes for p in pred], dtype=np.int64))
        pmasks = [paste_mask(d, p.box, width, height) for d, p in zip(decoded, pred)]
    iou = np.array([[mask_iou(g, p) for p in pmasks] for g in gt_masks]).reshape(len(gt_masks), len(pmasks))
    return float(sum(iou[i, j] for i, j in match(iou)) / max(len(gt_masks), len(pmasks), 1))


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate: total edit distance / total reference characters."""
    edits = sum(levenshtein(r, h) for r, h in zip(refs, hyps))
    return edits / max(1, sum(len(r) for r in refs))


def exact_match(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return float(np.mean([r.strip() == h.strip() for r, h in zip(refs, hyps)])) if refs else float("nan")


LOWER_IS_BETTER = ("cer", "ocr_cer")  # error rates; every other task metric is a rate or an IoU


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.endswith("_cer")
