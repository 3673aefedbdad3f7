"""Largest |activation| per layer, against float16's range (65504): which parts of a model can run in fp16.

    python benchmarks/activation_range.py [--model SRC] [--n 20]

Runs the PyTorch model (float32) on held-out images and prompts (the demo's held-out set; generated test cards
for other models) and records, per vision and decoder layer, max |output| of the layer (the residual stream) and
of its MLP's output, plus the final logits. Prints a table and the headroom to fp16's maximum.
"""

from __future__ import annotations

import argparse
import json

import torch

from pgexport.verify import image_prompts
from pgexport.source import sources
from pgexport.verify.parity import parity_image
from pgexport.verify.samples import PROMPTS, is_demo

FP16_MAX = 65504.0


def measure(model_spec: str | None, n: int) -> dict:
    from transformers import AutoProcessor

    source = sources.resolve(model_spec)
    model = sources.load_model(source, torch.float32)
    processor = AutoProcessor.from_pretrained(source.directory)
    g = sources.load_geometry(source)
    if is_demo(source):
        rows = image_prompts.read(image_prompts.DEMO_SET, "eval", limit=n)
        pairs = [(r.load(), r.prompt) for r in rows]
    else:
        pairs = [(parity_image(g.image_size, seed=i), PROMPTS[i % len(PROMPTS)]) for i in range(n)]
    peaks: dict[str, float] = {}

    def hook(name):
        def record(module, args, out):
            t = out[0] if isinstance(out, tuple) else out
            peaks[name] = max(peaks.get(name, 0.0), float(t.detach().abs().max()))
        return record

    vision = model.model.vision_tower.encoder.layers
    text = model.model.language_model.layers
    handles = [m.register_forward_hook(hook(f"vision.{i}")) for i, m in enumerate(vision)]
    handles += [m.mlp.fc2.register_forward_hook(hook(f"vision.{i}.mlp_out")) for i, m in enumerate(vision)]
    handles += [m.register_forward_hook(hook(f"decoder.{i}")) for i, m in enumerate(text)]
    handles += [m.mlp.down_proj.register_forward_hook(hook(f"decoder.{i}.mlp_out")) for i, m in enumerate(text)]
    with torch.no_grad():
        for image, prompt in pairs:
            inputs = processor(images=[image], text=["<image>" + prompt], return_tensors="pt")
            out = model(**inputs)
            peaks["logits"] = max(peaks.get("logits", 0.0), float(out.logits.abs().max()))
    for h in handles:
        h.remove()
    return {"model": source.spec, "samples": len(pairs), "fp16_max": FP16_MAX, "peaks": peaks,
            "largest": max(peaks.values()), "headroom": FP16_MAX / max(peaks.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    r = measure(args.model, args.n)
    for name, v in r["peaks"].items():
        print(f"{name:24s} {v:12.1f}")
    print(f"largest {r['largest']:.1f}: {r['headroom']:.1f}x below fp16's {FP16_MAX:.0f} ({r['samples']} samples, "
          f"{r['model']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
