"""Parity at build: the exported graphs, run by the shipped runtime, against transformers.

Two phases so that the PyTorch model and the onnxruntime sessions never sit in memory together (a 3B
model in fp32 is 11.7 GB each way): `torch_reference` runs first and keeps only small arrays, then the
model is freed, then `compare` runs the bundle through pgexport_runtime on exactly the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry

from . import agreement
from .agreement import until_eos

PROMPTS = ("caption en", "answer en what colour is the large shape on the left?")


@dataclass(frozen=True)
class Tolerance:
    """Largest allowed max|onnx - torch| / max|torch| per compared tensor, and whether greedy must match."""

    relative: float = 1e-3
    greedy_must_match: bool = True


@dataclass
class Reference:
    pixel_values: np.ndarray
    vision_features: np.ndarray
    image_embeds: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    logits: np.ndarray  # [B, S, V] prefill logits of transformers with token_type_ids
    greedy: list[list[int]]


def parity_image(size: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic, odd-sized RGB image with shapes and noise (not square, so resizing is exercised)."""
    rng = np.random.default_rng(seed)
    w, h = int(size * 1.37) + 1, int(size * 1.11)
    base = (rng.random((h, w, 3)) * 60 + np.linspace(0, 150, w)[None, :, None]).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    draw.ellipse([w * 0.1, h * 0.2, w * 0.45, h * 0.7], fill=(220, 40, 40))
    draw.rectangle([w * 0.55, h * 0.15, w * 0.9, h * 0.55], fill=(30, 60, 210))
    draw.polygon([(w * 0.3, h * 0.95), (w * 0.5, h * 0.6), (w * 0.7, h * 0.95)], fill=(240, 220, 30))
    return img


def torch_reference(model, source_dir, g: Geometry, new_tokens: int) -> Reference:
    import torch
    from pgexport.sources import load_processor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    processor = load_processor(source_dir)
    image = parity_image(g.image_size)
    inputs = processor(
        images=[image] * len(PROMPTS), text=["<image>" + p for p in PROMPTS], return_tensors="pt", padding="longest"
    )
    with torch.no_grad():
        feats = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state
        embeds = model.model.multi_modal_projector(feats)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        out = model.generate(
            **{k: v for k, v in inputs.items() if k != "labels"},
            max_new_tokens=new_tokens, do_sample=False, min_new_tokens=0,
        )
    greedy = [until_eos(row[inputs["input_ids"].shape[1]:].tolist(), g.eos_token_id) for row in out]
    return Reference(
        pixel_values=inputs["pixel_values"].numpy(),
        vision_features=feats.numpy(),
        image_embeds=embeds.numpy(),
        input_ids=inputs["input_ids"].numpy(),
        attention_mask=inputs["attention_mask"].numpy(),
        logits=logits.numpy(),
        greedy=greedy,
    )


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(a.astype(np.float64) - b).max())
    return diff, diff / max(float(np.abs(b).max()), 1e-12)


def compare(bundle_dir, ref: Reference, tol: Tolerance, manifest_file: str = "manifest.json") -> dict:
    """Run the bundle with pgexport_runtime on the reference inputs; return the parity report."""
    from pgexport_runtime import PaliGemma, SessionConfig, decoder
    from pgexport_runtime.kv_cache import KVCache

    # no prepacking: a 3B fp32 decoder would otherwise sit in memory twice (mmapped file + packed copy)
    pg = PaliGemma(bundle_dir, SessionConfig(prepack=False), verify=False, manifest_file=manifest_file)
    g = pg.geometry
    report: dict = {"prompts": list(PROMPTS), "tolerance_relative": tol.relative, "checks": {}}
    checks = report["checks"]

    # preprocessing: the runtime's pixels against transformers' SiglipImageProcessor
    image = parity_image(g.image_size)
    pixels = pg.pixel_values([image] * len(PROMPTS))
    checks["preprocessing"] = _entry(*_rel(pixels, ref.pixel_values), 1e-6, absolute=True)

    ids, mask = pg.tokenizer.batch(list(PROMPTS))
    checks["tokenizer"] = {"max_abs": 0.0 if np.array_equal(ids, ref.input_ids) and np.array_equal(mask, ref.attention_mask) else 1.0,
                           "ok": bool(np.array_equal(ids, ref.input_ids) and np.array_equal(mask, ref.attention_mask))}

    # each graph on the reference's own inputs, so a divergence is pinned to one graph
    (feats,) = pg.graphs.vision.run([io.VISION_FEATURES], {io.PIXEL_VALUES: ref.pixel_values})
    checks["vision_encoder"] = _entry(*_rel(feats, ref.vision_features), tol.relative)
    (embeds,) = pg.graphs.projector.run([io.IMAGE_EMBEDS], {io.VISION_FEATURES: ref.vision_features})
    checks["projector"] = _entry(*_rel(embeds, ref.image_embeds), tol.relative)

    batch, seq = ref.input_ids.shape
    every = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))  # logits at every position, not only the last
    logits = decoder.prefill(pg.graphs, g, KVCache(g, batch, seq), ref.input_ids, ref.image_embeds,
                             ref.attention_mask, logits_index=every)
    real = ref.attention_mask.astype(bool)
    checks["decoder_prefill"] = _entry(*_rel(logits[real], ref.logits[real]), tol.relative)

    # end to end: the runtime's own preprocessing, prompt building, prefill and IO-bound decode loop
    results = pg.generate([image] * len(PROMPTS), list(PROMPTS), max_new_tokens=max(len(r) for r in ref.greedy))
    got = [until_eos(r.tokens, g.eos_token_id) for r in results]
    first_div = agreement.sequences(ref.greedy, got)["first_divergence"]
    checks["greedy"] = {
        "tokens": [len(r) for r in ref.greedy],
        "match": got == ref.greedy,
        "first_divergence": first_div,
        "ok": got == ref.greedy or not tol.greedy_must_match,
    }
    report["ok"] = all(c["ok"] for c in checks.values())
    report["first_failure"] = next((k for k, c in checks.items() if not c["ok"]), None)
    return report


def _entry(max_abs: float, rel: float, limit: float, absolute: bool = False) -> dict:
    value = max_abs if absolute else rel
    return {"max_abs": max_abs, "relative": rel, "limit": limit, "ok": bool(value <= limit)}


def summarize_failure(report: dict) -> str:
    name = report["first_failure"]
    c = report["checks"][name]
    if name == "greedy":
        return f"greedy tokens diverge from transformers at positions {c['first_divergence']}"
    if name == "tokenizer":
        return "prompt token ids differ from transformers' PaliGemmaProcessor"
    return (f"{name} differs from PyTorch: max |diff| {c['max_abs']:.3g} "
            f"(relative {c['relative']:.3g}, limit {c['limit']:.3g})")
