"""Tokenizer, config and initial weights of the demo model, and writing a model directory.

    python -m tools.demo_model.build --out models/pg-demo     # tokenizer + processor files + config (no weights)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from pgexport.source.tokenizer import TokenLayout, build_tokenizer, write_hf_tokenizer, write_processor_files

from . import generator

TEXT_VOCAB_SIZE = 768
IMAGE_SIZE = generator.IMAGE_SIZE  # 128
PATCH_SIZE = 16
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 64

VISION = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4)
TEXT = dict(hidden_size=256, intermediate_size=640, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=1, head_dim=64)


def layout() -> TokenLayout:
    return TokenLayout.compact(TEXT_VOCAB_SIZE)


def make_config():
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    lay = layout()
    vision = SiglipVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, vision_use_head=False,
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0, **VISION,
    )
    text = GemmaConfig(
        vocab_size=lay.vocab_size, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh", pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True, attention_bias=False, attention_dropout=0.0, initializer_range=0.02, **TEXT,
    )
    cfg = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=lay.image_token_id, vocab_size=lay.vocab_size,
        projection_dim=TEXT["hidden_size"], hidden_size=TEXT["hidden_size"], tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return cfg


def write_tokenizer(out: Path):
    lay = layout()
    tok = build_tokenizer(generator.corpus(), lay)
    write_hf_tokenizer(tok, out)
    write_processor_files(out, IMAGE_SIZE, NUM_IMAGE_TOKENS)
    return tok


@torch.no_grad()
def init_model(cfg, seed: int = 0, pos2d: bool = True):
    """Random init (HF's), except the 1024 <loc> embeddings: smooth sinusoidal features of the bin index
    (randomly rotated), so neighbouring bins start similar. Embeddings are tied, so the output logits of
    nearby bins are correlated too; this speeds up learning coordinates a lot. With `pos2d`, the SigLIP
    position embeddings also get 2D sinusoidal features of the patch centre (`add_2d_positions`)."""
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(cfg)
    emb = model.get_input_embeddings().weight
    d = emb.shape[1]
    lay = layout()
    i = torch.arange(1024, dtype=torch.float32)[:, None]
    half = d // 2
    w = (math.pi / 1024) * (256.0 ** (torch.arange(half, dtype=torch.float32) / (half - 1)))
    feats = torch.cat([torch.sin(i * w), torch.cos(i * w)], dim=1)
    q, _ = torch.linalg.qr(torch.randn(d, d))
    feats = feats @ q
    feats = feats / feats.std() * emb.std()
    emb[lay.loc_base : lay.loc_base + 1024] = feats + 0.1 * emb.std() * torch.randn_like(feats)
    if pos2d:
        add_2d_positions(model, scale=1.0)
    return model


def sinusoid_2d_positions(grid: int, dim: int, n_bins: int = 1024) -> torch.Tensor:
    """[grid*grid, dim] patch position features: half the dims encode the patch-centre row, half the
    column, as sin/cos of the centre's loc bin at the low frequencies of the <loc> embedding basis
    (see `loc_features`), so that box coordinates are close to linearly readable from image tokens."""
    quarter = dim // 4
    centre_bins = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * (n_bins - 1)
    w = (math.pi / n_bins) * (8.0 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter - 1)))
    fy = torch.cat([torch.sin(centre_bins[:, None] * w), torch.cos(centre_bins[:, None] * w)], 1)  # grid, dim/2
    rows = fy[:, None, :].expand(grid, grid, -1)
    cols = fy[None, :, :].expand(grid, grid, -1)
    out = torch.zeros(grid, grid, dim)
    out[..., : 2 * quarter] = rows
    out[..., 2 * quarter : 4 * quarter] = cols
    return out.reshape(grid * grid, dim)


@torch.no_grad()
def add_2d_positions(model, scale: float = 0.3) -> None:
    """Add `scale` * sinusoid_2d_positions to the SigLIP position embeddings (learnable; HF's parameter)."""
    pe = model.model.vision_tower.embeddings.position_embedding.weight
    grid = IMAGE_SIZE // PATCH_SIZE
    pe += scale * sinusoid_2d_positions(grid, pe.shape[1]).to(pe.dtype)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model_dir(model, out: Path, shard_mb: int = 0) -> None:
    """Write config.json + model.safetensors (fp32) into `out` (tokenizer files must be there already);
    with shard_mb, transformers' sharded layout (model-0000k-of-0000n.safetensors + index)."""
    out.mkdir(parents=True, exist_ok=True)
    kw = {"max_shard_size": f"{shard_mb}MB"} if shard_mb else {}
    model.save_pretrained(str(out), safe_serialization=True, **kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/pg-demo")
    args = ap.parse_args()
    out = Path(args.out)
    write_tokenizer(out)
    cfg = make_config()
    cfg.save_pretrained(str(out))
    model = init_model(cfg)
    print(json.dumps({"params": count_params(model), "vocab": cfg.text_config.vocab_size}))


if __name__ == "__main__":
    main()
