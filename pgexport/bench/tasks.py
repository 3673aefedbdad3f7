"""Task metrics of a benchmark's answers against an eval set's ground truth (metrics.py defines each one).

Items with a task are scored per task, with the demo model's evaluation keys: caption/VQA exact match, OCR
CER and exact match, detection box IoU / recall / precision against the item's boxes, segmentation mask IoU
against its masks (the <seg> codes decoded by a bundle's own mask-decoder graph). Items without a task are
scored on their text (exact match, CER) and, where the answer holds <loc> boxes, box IoU.
"""

from __future__ import annotations

from PIL import Image

from pgexport.bench import metrics


def clean(text: str, eos_token: str = "<eos>") -> str:
    """Generated text as the evaluation reads it: cut at <eos>, padding dropped, <loc>/<seg> kept."""
    return text.split(eos_token)[0].replace("<pad>", "").strip()


def load_mask_decoder(manifests):
    """The first bundle's mask-decoder graph as a decode function, or (None, reason)."""
    from pgexport_runtime.masks import MaskDecoder

    for m in manifests:
        entry = m.graphs.get("mask_decoder")
        if entry is not None:
            return MaskDecoder(m.path(entry.file), entry.codes, one_row=m.kv_cache.layout.fixed_shape), None
    return None, "mask IoU skipped: no bundle has a mask-decoder graph to decode <seg> tokens"


def score(items, preds: list[str], decode_fn) -> tuple[dict, list[str]]:
    """(metrics, notes on what was skipped) over the items that carry an answer."""
    pairs = [(it, p) for it, p in zip(items, preds) if it.answer is not None]
    if not pairs:
        return {}, ["no answers in the eval set: task metrics skipped"]
    out, skipped = {}, []
    for task in dict.fromkeys(it.task for it, _ in pairs):
        group = [(it, p) for it, p in pairs if it.task == task]
        refs, hyps = [it.answer for it, _ in group], [p for _, p in group]
        if task in ("caption", "vqa"):
            out[f"{task}_em"] = metrics.exact_match(refs, hyps)
        elif task == "ocr":
            out |= {"ocr_cer": metrics.cer(refs, hyps), "ocr_em": metrics.exact_match(refs, hyps)}
        elif task == "detect":
            d = _detection(group)
            out |= {"detect_miou": d["mean_matched_iou"], "detect_recall": d["recall@0.5"],
                    "detect_precision": d["precision@0.5"]}
        elif task == "segment":
            if decode_fn is None or not all(it.masks for it, _ in group):
                skipped.append("segment_miou")
                continue
            out["segment_miou"] = sum(_mask_score(it, p, decode_fn) for it, p in group) / len(group)
        else:  # no task (or one this table does not know): the text, and boxes where the answers have them
            out |= {"exact_match": metrics.exact_match(refs, hyps), "cer": metrics.cer(refs, hyps)}
            boxed = [(it, p) for it, p in group if _truth(it)]
            if boxed:
                d = _detection(boxed)
                out |= {"box_miou": d["mean_matched_iou"], "box_recall50": d["recall@0.5"]}
            if any("<seg" in it.answer for it, _ in group):
                skipped.append("mask IoU skipped: items without a task carry no ground-truth masks")
    return out, skipped


def _truth(item) -> list[tuple[str, tuple]]:
    """Ground-truth boxes: the item's own, else those of its answer, both (x0, y0, x1, y1) pixels."""
    if item.boxes is not None:
        return [(b[0], tuple(b[1:5])) for b in item.boxes]
    w, h = _size(item)
    return [(o.label, o.box) for o in metrics.objects(item.answer, w, h)]


def _size(item) -> tuple[int, int]:
    with Image.open(item.image) as im:
        return im.size


def _detection(group) -> dict:
    rows = []
    for it, p in group:
        w, h = _size(it)
        rows.append(metrics.detection_scores(_truth(it), metrics.objects(p, w, h)))
    return metrics.summarize_detection(rows)


def _mask_score(item, pred: str, decode_fn) -> float:
    from pgexport.verify.image_prompts import load_masks

    w, h = _size(item)
    labels = {b[0] for b in item.boxes or ()}
    objs = [o for o in metrics.objects(pred, w, h) if not labels or o.label in labels]
    return metrics.segmentation_score(load_masks(item.masks), objs, decode_fn, w, h)
