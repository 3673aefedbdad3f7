"""Checkpoints and adapters written the way users' are: by transformers' and peft's own save_pretrained.

The tiny presets give the weights (widened init, so greedy outputs are diverse); everything on disk comes
from `model.save_pretrained` + `processor.save_pretrained` of the pinned transformers, and adapters from
peft's `save_pretrained`. Weights are rounded to bfloat16 first, so that an fp32 save and a bf16 save of
the same checkpoint are the same model and must give the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_checkpoint(preset: str, out: Path, padding_side: str | None = "left", dtype=torch.float32,
                    max_shard_size: str | None = None) -> Path:
    """A tiny PaliGemma saved by transformers. padding_side None removes it from tokenizer_config.json."""
    from transformers import AutoProcessor

    from pgexport.source import sources

    src = sources.resolve(preset)
    model = sources.load_model(src)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    processor = AutoProcessor.from_pretrained(src.directory)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(out, **kw)
    processor.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("padding_side", None)
    if padding_side is not None:
        cfg["padding_side"] = padding_side
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def save_lora_adapter(base: Path, out: Path, target_modules, seed: int, scale: float = 3.0) -> Path:
    """A LoRA adapter on `base` with non-zero B (as after training), saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import PaliGemmaForConditionalGeneration

    model = PaliGemmaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, scale / p.shape[-1] ** 0.5)
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)  # as after `get_peft_model` on a from_pretrained(base) model
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def hf_greedy(model, directory: Path, images, prompts, n: int) -> list[list[int]]:
    """transformers' (or peft's) generate on a left-padded batch, token_type_ids included, cut at <eos>."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(directory)
    processor.tokenizer.padding_side = "left"  # generation pads left, whatever the checkpoint says
    inputs = processor(images=list(images), text=["<image>" + p for p in prompts], return_tensors="pt",
                       padding="longest")
    inputs.pop("labels", None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    eos = model.config.text_config.eos_token_id if hasattr(model, "config") else None
    rows = [r[inputs["input_ids"].shape[1]:].tolist() for r in out]
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]
