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

from pgexport.verify import agreement
from pgexport.verify.agreement import until_eos

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
    logits: np.ndarray  # [B, T, V] prefill logits of transformers with token_type_ids, the last T positions
    greedy: list[list[int]]

    @property
    def logits_positions(self) -> np.ndarray:
        """[B, T] the positions `logits` hold: the last T of the prefix."""
        batch, seq = self.input_ids.shape
        return np.tile(np.arange(seq - self.logits.shape[1], seq, dtype=np.int64), (batch, 1))

    @property
    def logits_real(self) -> np.ndarray:
        """[B, T] which of them are tokens, not padding."""
        return self.attention_mask[:, self.input_ids.shape[1] - self.logits.shape[1]:].astype(bool)


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
    """The parity batch (one image, PROMPTS) through the PyTorch reference: every stage's output, and greedy."""
    from pgexport.verify.reference import TorchReference

    ref = TorchReference.for_model(model, source_dir, g)
    inputs = ref.inputs([parity_image(g.image_size)] * len(PROMPTS), PROMPTS)
    feats = ref.vision(inputs["pixel_values"])
    return Reference(
        pixel_values=inputs["pixel_values"].numpy(),
        vision_features=feats.numpy(),
        image_embeds=ref.project(feats).numpy(),
        input_ids=inputs["input_ids"].numpy(),
        attention_mask=inputs["attention_mask"].numpy(),
        # the text positions of every row (left-padded or not, they are after the first N_img): the image
        # positions' logits are never read, and every position's hidden state is compared layer by layer
        logits=ref.logits(inputs, last=inputs["input_ids"].shape[1] - g.num_image_tokens).numpy(),
        greedy=ref.greedy(inputs, new_tokens, min_new_tokens=0),
    )


def token_type_ids(source_dir, g: Geometry) -> np.ndarray:
    """The reference batch's token types (0 prefix, 1 suffix), for per-layer parity."""
    from pgexport.source.sources import load_processor

    processor = load_processor(source_dir)
    return processor(images=[parity_image(g.image_size)] * len(PROMPTS), text=["<image>" + p for p in PROMPTS],
                     return_tensors="np", padding="longest")["token_type_ids"]


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(a.astype(np.float64) - b).max())
    return diff, diff / max(float(np.abs(b).max()), 1e-12)


def compare(bundle_dir, ref: Reference, tol: Tolerance, manifest_file: str = "manifest.json",
            layers: dict | None = None) -> dict:
    """Run the bundle with pgexport_runtime on the reference inputs; return the parity report.

    layers: a streamed build's per-layer report (layer_parity.py). The float32 decoder graph is as large as the
    model, so it is not loaded: its layers were compared one at a time instead, and the report says so."""
    from pgexport_runtime import PaliGemma, SessionConfig, decoder

    if layers is not None:
        return _compare_streamed(bundle_dir, ref, tol, manifest_file, layers)
    # no prepacking: a 3B fp32 decoder would otherwise sit in memory twice (mmapped file + packed copy)
    pg = PaliGemma(bundle_dir, SessionConfig(prepack=False), verify=False, manifest_file=manifest_file)
    report = _compare_inputs(pg.pixel_values, pg.tokenizer, pg.graphs.vision, pg.graphs.projector, ref, tol)
    checks = report["checks"]
    g = pg.geometry
    batch, seq = ref.input_ids.shape
    logits = decoder.prefill(pg.graphs, g, pg.graphs.kv_cache(g, batch, seq), ref.input_ids, ref.image_embeds,
                             ref.attention_mask, logits_index=ref.logits_positions)  # every text position
    real = ref.logits_real
    checks["decoder_prefill"] = _entry(*_rel(logits[real], ref.logits[real]), tol.relative)

    # end to end: the runtime's own preprocessing, prompt building, prefill and IO-bound decode loop
    image = parity_image(g.image_size)
    results = pg.generate([image] * len(PROMPTS), list(PROMPTS), max_new_tokens=max(len(r) for r in ref.greedy))
    got = [until_eos(r.tokens, g.eos_token_id) for r in results]
    first_div = agreement.sequences(ref.greedy, got)["first_divergence"]
    checks["greedy"] = {
        "tokens": [len(r) for r in ref.greedy],
        "match": got == ref.greedy,
        "first_divergence": first_div,
        "ok": got == ref.greedy or not tol.greedy_must_match,
    }
    return _verdict(report)


def _compare_inputs(pixel_values, tokenizer, vision, projector, ref: Reference, tol: Tolerance) -> dict:
    """Preprocessing, tokenizer, vision encoder and projector against the reference."""
    report: dict = {"prompts": list(PROMPTS), "tolerance_relative": tol.relative, "checks": {}}
    checks = report["checks"]
    # preprocessing: the runtime's pixels against transformers' SiglipImageProcessor
    pixels = pixel_values([parity_image(ref.pixel_values.shape[-1])] * len(PROMPTS))
    checks["preprocessing"] = _entry(*_rel(pixels, ref.pixel_values), 1e-6, absolute=True)

    ids, mask = tokenizer.batch(list(PROMPTS))
    same = bool(np.array_equal(ids, ref.input_ids) and np.array_equal(mask, ref.attention_mask))
    checks["tokenizer"] = {"max_abs": 0.0 if same else 1.0, "ok": same}

    # each graph on the reference's own inputs, so a divergence is pinned to one graph
    (feats,) = vision.run([io.VISION_FEATURES], {io.PIXEL_VALUES: ref.pixel_values})
    checks["vision_encoder"] = _entry(*_rel(feats, ref.vision_features), tol.relative)
    (embeds,) = projector.run([io.IMAGE_EMBEDS], {io.VISION_FEATURES: ref.vision_features})
    checks["projector"] = _entry(*_rel(embeds, ref.image_embeds), tol.relative)
    return report


def _compare_streamed(bundle_dir, ref: Reference, tol: Tolerance, manifest_file: str, layers: dict) -> dict:
    """Everything but the decoder graph, which was compared layer by layer in the PyTorch phase."""
    from pgexport_runtime import SessionConfig
    from pgexport_runtime.manifest import load_manifest
    from pgexport_runtime.preprocess import preprocess
    from pgexport_runtime.prompt import PromptTokenizer
    from pgexport_runtime.session import create_session

    m = load_manifest(bundle_dir, verify=False, manifest_file=manifest_file)
    cfg = SessionConfig(prepack=False)
    vision, projector = (create_session(m.path(m.graphs[n].file), cfg) for n in ("vision_encoder", "projector"))
    tokenizer = PromptTokenizer(m.tokenizer_file, m.geometry, m.tokenizer.image_token, m.tokenizer.bos_token)
    report = _compare_inputs(lambda images: preprocess(images, m.preprocessing), tokenizer, vision, projector,
                             ref, tol)
    worst = max(e["relative"] for e in layers["layers"])
    report["checks"]["decoder_layers"] = {"layers": len(layers["layers"]), "relative": worst, "limit": tol.relative,
                                          "first_failure": layers["first_failure"], "ok": layers["ok"]}
    report["decoder"] = "per layer: the float32 decoder graph was not run whole (a streamed build)"
    return _verdict(report)


def _verdict(report: dict) -> dict:
    checks = report["checks"]
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
    if name == "decoder_layers":
        return (f"decoder layer {c['first_failure']} differs from PyTorch (worst relative {c['relative']:.3g}, "
                f"limit {c['limit']:.3g})")
    return (f"{name} differs from PyTorch: max |diff| {c['max_abs']:.3g} "
            f"(relative {c['relative']:.3g}, limit {c['limit']:.3g})")
