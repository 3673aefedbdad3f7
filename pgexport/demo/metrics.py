"""Torch-free parsing of PaliGemma outputs and per-task metrics (numpy only, reusable by a torch-free runtime).

Location binning convention (the single place it is defined; everything else calls these functions):

    bin   = clip(round(coord / size * 1023), 0, 1023)        coord in pixels, 0..size
    coord = bin / 1023 * size

where `size` is the image height for y and the width for x, and boxes are (y0, x0, y1, x1) with y1/x1
*exclusive* pixel edges (a one-pixel object at row 5 has y0=5, y1=6). Tokens are written
<locY0><locX0><locY1><locX1>, PaliGemma's order.

Segmentation: 16 <segNNN> codes are decoded by the VQ-VAE into a 64x64 mask in [-1, 1] for the box; it is
resized to the box (bilinear) and pasted into the image, and pixels > 0 are the object (`paste_mask`).
The decoder itself (torch) lives in `vqvae.py`; `decode_fn` arguments here are any callable
[N,16] int -> [N,64,64] float.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

LOC_RE = re.compile(r"<loc(\d{4})>")
SEG_RE = re.compile(r"<seg(\d{3})>")
_OBJ_RE = re.compile(r"((?:<loc\d{4}>){4})((?:<seg\d{3}>){16})?\s*([^;<>]*)")


def coord_to_bin(coord: float, size: int) -> int:
    return int(np.clip(round(coord / size * 1023), 0, 1023))


def bin_to_coord(b: int, size: int) -> float:
    return b / 1023 * size


def box_to_loc(box: Sequence[float], height: int, width: int) -> str:
    y0, x0, y1, x1 = box
    bins = [coord_to_bin(y0, height), coord_to_bin(x0, width), coord_to_bin(y1, height), coord_to_bin(x1, width)]
    return "".join(f"<loc{b:04d}>" for b in bins)


def parse_objects(text: str, height: int, width: int) -> list[dict]:
    """Parse 'detect'/'segment' output into [{box: (y0,x0,y1,x1) px, label, codes (list[int] | None)}]."""
    out = []
    for chunk in text.split(";"):
        m = _OBJ_RE.search(chunk)
        if not m:
            continue
        bins = [int(b) for b in LOC_RE.findall(m.group(1))]
        box = (
            bin_to_coord(bins[0], height),
            bin_to_coord(bins[1], width),
            bin_to_coord(bins[2], height),
            bin_to_coord(bins[3], width),
        )
        codes = [int(c) for c in SEG_RE.findall(m.group(2))] if m.group(2) else None
        out.append({"box": box, "label": m.group(3).strip(), "codes": codes})
    return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iy = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ix = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iy * ix
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def match(iou: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-total-IoU one-to-one matching (exact for the small sizes here, greedy beyond 7x7)."""
    n, m = iou.shape
    if n == 0 or m == 0:
        return []
    if n <= 7 and m <= 7:
        import itertools

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


def detection_scores(gt: list[dict], pred: list[dict]) -> dict:
    """Per-image: matched IoUs (label must agree), recall@0.5 counts and precision counts."""
    iou = np.zeros((len(gt), len(pred)))
    for i, g in enumerate(gt):
        for j, p in enumerate(pred):
            if g["label"] == p["label"]:
                iou[i, j] = box_iou(g["box"], p["box"])
    pairs = match(iou)
    ious = [float(iou[i, j]) for i, j in pairs]
    return {
        "matched_ious": ious,
        "tp50": sum(v >= 0.5 for v in ious),
        "n_gt": len(gt),
        "n_pred": len(pred),
    }


def paste_mask(mask64: np.ndarray, box: Sequence[float], height: int, width: int) -> np.ndarray:
    """Resize a 64x64 [-1,1] mask to the (pixel) box, paste it into a height x width canvas, threshold at 0."""
    from PIL import Image

    y0, x0, y1, x1 = (int(round(v)) for v in box)
    y0, x0 = max(0, min(y0, height)), max(0, min(x0, width))
    y1, x1 = max(y0, min(y1, height)), max(x0, min(x1, width))
    out = np.zeros((height, width), dtype=bool)
    if y1 - y0 < 1 or x1 - x0 < 1:
        return out
    im = Image.fromarray(np.asarray(mask64, dtype=np.float32), mode="F")
    im = im.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    out[y0:y1, x0:x1] = np.asarray(im) > 0
    return out


def segmentation_scores(
    gt_masks: list[np.ndarray], pred: list[dict], decode_fn: Callable[[np.ndarray], np.ndarray], height: int, width: int
) -> dict:
    """Mask IoU per image: predictions decoded + pasted, matched one-to-one to GT; the image score is
    sum(matched IoU) / max(n_gt, n_pred) (missed and extra instances count as 0)."""
    pred = [p for p in pred if p["codes"] is not None and len(p["codes"]) == 16]
    pmasks = []
    if pred:
        dec = decode_fn(np.array([p["codes"] for p in pred], dtype=np.int64))
        pmasks = [paste_mask(d, p["box"], height, width) for d, p in zip(dec, pred)]
    iou = np.array([[mask_iou(g, p) for p in pmasks] for g in gt_masks]).reshape(len(gt_masks), len(pmasks))
    pairs = match(iou)
    denom = max(len(gt_masks), len(pmasks), 1)
    return {"miou": float(sum(iou[i, j] for i, j in pairs) / denom), "n_gt": len(gt_masks), "n_pred": len(pmasks)}


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


def summarize_detection(rows: list[dict]) -> dict:
    ious = [v for r in rows for v in r["matched_ious"]]
    n_gt = sum(r["n_gt"] for r in rows)
    n_pred = sum(r["n_pred"] for r in rows)
    tp = sum(r["tp50"] for r in rows)
    return {
        "mean_matched_iou": float(np.mean(ious)) if ious else 0.0,
        "recall@0.5": tp / max(1, n_gt),
        "precision@0.5": tp / max(1, n_pred),
    }


# The quality bars of the demo model (issue 3); the CI check uses a loose fraction of them.
BARS = {
    "caption_em": (">=", 0.90),
    "vqa_em": (">=", 0.90),
    "ocr_cer": ("<=", 0.05),
    "detect_miou": (">=", 0.75),
    "detect_recall": (">=", 0.90),
    "segment_miou": (">=", 0.60),
}
