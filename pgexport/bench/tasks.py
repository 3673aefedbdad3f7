"""Task metrics against ground truth, with pgexport.demo.metrics (the one place they are defined).

The demo set is scored exactly as `pgexport.demo.evaluate` scores it (caption/VQA exact match, OCR CER,
detection box IoU/recall, segmentation mask IoU). Mask IoU decodes <seg> tokens with the demo VQ-VAE,
which needs torch and the VQ-VAE weights; without them segmentation is skipped and the report says so.
A JSONL set is scored on its text answers (exact match, CER) and, where answers hold <loc> boxes, box IoU.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pgexport.demo import metrics


def clean(text: str, eos_token: str = "<eos>") -> str:
    """Generated text as the demo evaluation reads it: cut at <eos>, padding dropped, <loc>/<seg> kept."""
    return text.split(eos_token)[0].replace("<pad>", "").strip()


def load_mask_decoder(dirs: list[Path]):
    """The demo VQ-VAE's decode function from the first directory that has it, or (None, reason)."""
    for d in dirs:
        if (Path(d) / "vqvae.safetensors").is_file():
            try:
                from pgexport.demo.vqvae import load_vqvae

                return load_vqvae(d).decode_np, None
            except Exception as exc:  # torch missing or incompatible weights: skip mask IoU, say why
                return None, f"mask IoU skipped: VQ-VAE in {d} could not be loaded ({type(exc).__name__})"
    return None, "mask IoU skipped: no VQ-VAE (vqvae.safetensors) found for decoding <seg> tokens"


def demo_metrics(examples, preds: list[str], decode_fn) -> tuple[dict, list[str]]:
    """Per-task metrics of the demo held-out set; returns (metrics, skipped notes)."""
    from pgexport.demo import evaluate

    out, skipped = {}, []
    for task in dict.fromkeys(e.task for e in examples):
        idx = [i for i, e in enumerate(examples) if e.task == task]
        if task == "segment" and decode_fn is None:
            skipped.append("segment_miou")
            continue
        out.update(evaluate.score(task, [examples[i] for i in idx], [preds[i] for i in idx], decode_fn=decode_fn))
    return out, skipped


def answer_metrics(items, preds: list[str]) -> tuple[dict, list[str]]:
    """Text answers of a JSONL set: exact match, CER, and box IoU where answers contain <loc> boxes."""
    pairs = [(it, p) for it, p in zip(items, preds) if it.answer is not None]
    if not pairs:
        return {}, ["no answers in the eval set: task metrics skipped"]
    refs, hyps = [it.answer for it, _ in pairs], [p for _, p in pairs]
    out = {"exact_match": metrics.exact_match(refs, hyps), "cer": metrics.cer(refs, hyps)}
    skipped = []
    boxed = [(it, p) for it, p in pairs if metrics.LOC_RE.search(it.answer)]
    if boxed:
        rows = []
        for it, p in boxed:
            w, h = Image.open(it.image).size
            gt = [{"box": o["box"], "label": o["label"]} for o in metrics.parse_objects(it.answer, h, w)]
            rows.append(metrics.detection_scores(gt, metrics.parse_objects(p, h, w)))
        d = metrics.summarize_detection(rows)
        out.update(box_miou=d["mean_matched_iou"], box_recall50=d["recall@0.5"])
    if any(metrics.SEG_RE.search(it.answer) for it, _ in pairs):
        skipped.append("mask IoU skipped: a JSONL set carries no ground-truth masks")
    return out, skipped
