"""Write models/pg-demo/README.md (the model card) from an evaluation JSON and training facts.

    python -m tools.demo_model.card --model models/pg-demo --eval models/pg-demo/eval.json \
        --training training.md --notes notes.md

The eval JSON is `tools.demo_model.evaluate --json` on the card's seed, with the CI seed's 50-sample block ("ci50")
and numbers ("eval_seed") merged in; training.md says how this checkpoint was trained.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import build, evaluate


def fmt_row(name: str, key: str, res: dict, pct: bool = True) -> str:
    op, bar = evaluate.BARS[key]
    v = res.get(key)
    if v is None:
        return f"| {name} | n/a | {op} {bar} | |"
    ok = v >= bar if op == ">=" else v <= bar
    show = (lambda x: f"{100 * x:.1f} %") if pct else (lambda x: f"{x:.3f}")
    return f"| {name} | {show(v)} | {op} {show(bar)} | {'met' if ok else 'NOT met'} |"


def render(model_dir: Path, res: dict, training: str, notes: str) -> str:
    from transformers import PaliGemmaConfig

    cfg = PaliGemmaConfig.from_pretrained(str(model_dir))
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    v, t = cfg.vision_config, cfg.text_config
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()) / 2**20
    n = res.get("n_per_task")
    rows = "\n".join([
        fmt_row("caption exact match", "caption_em", res),
        fmt_row("VQA exact match", "vqa_em", res),
        fmt_row("OCR character error rate", "ocr_cer", res),
        fmt_row("detect mean matched IoU", "detect_miou", res, pct=False),
        fmt_row("detect recall (IoU >= 0.5)", "detect_recall", res),
        fmt_row("segment mean mask IoU", "segment_miou", res, pct=False),
    ])
    extra = []
    if "ocr_em" in res:
        extra.append(f"OCR exact match {100 * res['ocr_em']:.1f} %")
    if "detect_precision" in res:
        extra.append(f"detect precision (IoU >= 0.5) {100 * res['detect_precision']:.1f} %")
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
tags: [paligemma, synthetic, demo]
---

# pg-demo: a tiny PaliGemma trained on procedural vision tasks

The default model of the pgexport toolchain and its accuracy yardstick for quantization. It is a genuine
`PaliGemmaForConditionalGeneration` checkpoint (SigLIP vision tower + Gemma decoder, PaliGemma-1 layout)
that loads offline:

```python
from transformers import AutoProcessor, PaliGemmaForConditionalGeneration
model = PaliGemmaForConditionalGeneration.from_pretrained("models/pg-demo")
processor = AutoProcessor.from_pretrained("models/pg-demo")
inputs = processor(images=image, text="<image>detect circle ; star", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
```

## Architecture

| | |
|---|---|
| parameters | {n_params:,} (fp32, tied input/output embeddings) |
| image | {v.image_size}x{v.image_size} px, patch {v.patch_size} -> {cfg.text_config.num_image_tokens} image tokens |
| vision (SigLIP) | {v.num_hidden_layers} layers, width {v.hidden_size}, MLP {v.intermediate_size}, {v.num_attention_heads} heads, no head |
| text (Gemma) | {t.num_hidden_layers} layers, width {t.hidden_size}, MLP {t.intermediate_size}, {t.num_attention_heads} query heads x {t.head_dim}, {t.num_key_value_heads} KV head |
| vocabulary | {t.vocab_size}: {build.TEXT_VOCAB_SIZE} BPE text tokens (ids 0-4 `<pad> <eos> <bos> <unk> <mask>`, byte fallback), `<loc0000>`-`<loc1023>` from {build.TEXT_VOCAB_SIZE}, `<seg000>`-`<seg127>`, `<image>` = {cfg.image_token_index}, `<unusedN>` filler |
| files | {size_mb:.1f} MB in total, including `vqvae.safetensors` |

`vqvae.safetensors` + `vqvae_config.json`: the mask VQ-VAE of the `segment` task (codebook 128 x 64, 16 codes
per mask). Its decoder has the layer structure of big_vision's PaliGemma mask decoder (1x1 conv, 2 residual
blocks, 4 stride-2 transposed convolutions, 1x1 conv: 4x4 codes -> 64x64 mask in [-1, 1]) with smaller
widths; see `tools/demo_model/vqvae.py` for the parameter-name mapping.

## Tasks and formats (PaliGemma's)

Scenes are 128x128 images with 1-4 shapes (circle, square, triangle, diamond, star) in 6 colours, radius 9-22 px,
random positions, partial overlaps (every shape keeps >= 60 % of its pixels), white/black/gray backgrounds
with colour jitter and pixel noise, and (in half the images, always for `ocr`) a rendered word, word pair or
number in PIL's default font at 13-17 px.

| prefix | suffix |
|---|---|
| `caption en` | `a red circle and two blue stars on a gray background.` |
| `answer en <question>` | colour / shape / count / yes-no / left-right / top-bottom / background colour |
| `ocr` | the rendered text |
| `detect <cls>` or `detect <cls> ; <cls>` | `<locY0><locX0><locY1><locX1> cls ; ...` |
| `segment <cls>` | `<locY0><locX0><locY1><locX1><segNNN>x16 cls ; ...` |

Loc binning (`pgexport_runtime/answers.py`): `bin = clip(round(coord / size * 1023), 0, 1023)`, boxes
`(y0, x0, y1, x1)` with exclusive y1/x1 pixel edges; inverse `coord = bin / 1023 * size`.

## Training

`python -m tools.demo_model.vqvae` (VQ-VAE, 1200 steps, ~4 min) then `python -m tools.demo_model.train`: HF's prefix-LM
loss (image + `<bos>` + prefix + `\\n` bidirectional and unlabelled, suffix + `<eos>` causal and labelled), AdamW
(betas 0.9/0.98, wd 0.01, linear warm-up, cosine to 5 % of the peak on a time budget), examples generated on the
fly from training seed 1. The `<loc>` embeddings start as smooth sinusoidal features of the bin index and the
SigLIP position embeddings as 2D sinusoidal features of the patch centre (both stay learnable). A dense auxiliary
loss (`tools/demo_model/patch_targets.py`, weight 1) supervises the vision tower directly: a linear head on its output predicts,
for every patch, the colour, kind and box of the object under it, whether it holds an object's centre, the
background colour, and which characters of the text lie in it. The head is training-only; the checkpoint is a
plain PaliGemma.

{training}

## Held-out evaluation

`python -m tools.demo_model.evaluate --model models/pg-demo --n {n} --seed {res.get("seed", evaluate.EVAL_SEED)}`: {n} samples per
task from a seed never used in training or in choosing the model, greedy decoding with `model.generate`
(transformers, fp32).

| metric | measured | bar | |
|---|---|---|---|
{rows}

{"; ".join(extra)}.

{notes}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/pg-demo")
    ap.add_argument("--eval", required=True)
    ap.add_argument("--training", required=True, help="markdown file: how this checkpoint was trained")
    ap.add_argument("--notes", default=None, help="markdown file appended to the card")
    args = ap.parse_args()
    model_dir = Path(args.model)
    res = json.loads(Path(args.eval).read_text())
    notes = Path(args.notes).read_text() if args.notes else ""
    (model_dir / "README.md").write_text(render(model_dir, res, Path(args.training).read_text().strip(), notes))
    print((model_dir / "README.md").read_text())


if __name__ == "__main__":
    main()
