"""Mask VQ-VAE for the demo model's `segment` task.

The DECODER mirrors big_vision's PaliGemma mask decoder (proj/paligemma segmentation `reconstruct_masks`):

    16 codes -> codebook (128 x D) -> 4x4xD grid -> Conv_0 (1x1, dim) -> ReLU
    -> ResBlock_0, ResBlock_1 (3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv, + skip)
    -> ConvTranspose_0..3 (4x4, stride 2, channels dim, dim/2, dim/4, dim/8, each + ReLU): 4 -> 64 px
    -> Conv_1 (1x1, 1 channel): a 64x64 mask in ~[-1, 1] (> 0 is the object)

big_vision uses D=512, dim=128; the demo uses smaller (see vqvae_config.json). The torch parameter names
follow the PyTorch-layout checkpoint that Google ships for that decoder (vae-oid.npz):

    _vq_vae._embedding            (big_vision: _vq_vae/_embeddings)
    decoder.0                     (decoder/Conv_0)
    decoder.2.net.{0,2,4}         (decoder/ResBlock_0/Conv_{0,1,2})
    decoder.3.net.{0,2,4}         (decoder/ResBlock_1/Conv_{0,1,2})
    decoder.{4,6,8,10}            (decoder/ConvTranspose_{0,1,2,3})
    decoder.12                    (decoder/Conv_1)

so `load_decoder_state(np.load("vae-oid.npz"))` with D=512, dim=128 takes the released weights
unchanged (flax ConvTranspose padding=2, transpose_kernel=True == torch ConvTranspose2d padding=1).
The encoder is ours (big_vision does not release one); it is only needed to make training targets.

Train: python -m tools.demo_model.vqvae --out models/pg-demo   (1200 steps, batch 64, ~4 min on CPU)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {"num_embeddings": 128, "embedding_dim": 64, "decoder_dim": 64, "num_tokens": 16, "mask_size": 64}


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x):
        return x + self.net(x)


def make_decoder(embedding_dim: int, dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(embedding_dim, dim, 1), nn.ReLU(), ResBlock(dim), ResBlock(dim)]
    c_in = dim
    for i in range(4):
        c_out = dim >> i
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, 1, 1))
    return nn.Sequential(*layers)


class _Codebook(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.register_buffer("_embedding", torch.randn(n, d) * 0.1)


class MaskVQVAE(nn.Module):
    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = dict(DEFAULT_CONFIG, **(config or {}))
        d, dim = self.config["embedding_dim"], self.config["decoder_dim"]
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(),  # 32
            nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),  # 16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),  # 8
            nn.Conv2d(64, dim, 4, 2, 1), nn.ReLU(),  # 4
            ResBlock(dim),
            nn.Conv2d(dim, d, 1),
        )
        self._vq_vae = _Codebook(self.config["num_embeddings"], d)
        self.decoder = make_decoder(d, dim)

    # -- codes <-> latents
    def encode_latents(self, masks: torch.Tensor) -> torch.Tensor:
        """[N,64,64] in [-1,1] -> [N,16,D] continuous latents (row-major 4x4)."""
        z = self.encoder(masks[:, None])
        return z.flatten(2).transpose(1, 2)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        emb = self._vq_vae._embedding
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ emb.T + emb.pow(2).sum(-1))
        return d.argmin(-1)

    @torch.no_grad()
    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """[N,64,64] float in [-1,1] -> [N,16] int64 codes."""
        return self.quantize(self.encode_latents(masks))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[N,16] codes -> [N,64,64] mask logits in ~[-1,1] (big_vision's reconstruct_masks, NCHW)."""
        q = self._vq_vae._embedding[codes]  # N,16,D
        n, _, d = q.shape
        q = q.reshape(n, 4, 4, d).permute(0, 3, 1, 2)
        return self.decoder(q)[:, 0]

    def decode_np(self, codes: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.decode(torch.as_tensor(np.asarray(codes), dtype=torch.long)).numpy()

    def encode_np(self, masks: np.ndarray) -> np.ndarray:
        return self.encode(torch.as_tensor(np.asarray(masks), dtype=torch.float32)).numpy()


def load_vqvae(model_dir: str | Path) -> MaskVQVAE:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "vqvae_config.json").read_text())
    m = MaskVQVAE(cfg)
    m.load_state_dict(load_file(str(model_dir / "vqvae.safetensors")))
    return m.eval()


def load_decoder_state(model: MaskVQVAE, state: dict) -> None:
    """Load decoder + codebook tensors named as in vae-oid.npz / this module (encoder untouched)."""
    sd = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith(("decoder.", "_vq_vae."))}
    model.load_state_dict(sd, strict=False)


def save_vqvae(model: MaskVQVAE, out_dir: str | Path) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "vqvae.safetensors"))
    (out_dir / "vqvae_config.json").write_text(json.dumps(model.config, indent=2))


# ------------------------------------------------------------------------------------------- training


def mask_crops(seed: int, n_scenes: int) -> np.ndarray:
    from .generator import _rng, crop_mask, make_scene

    crops = []
    for i in range(n_scenes):
        for o in make_scene(_rng(seed, i)).objects:
            crops.append(crop_mask(o.mask, o.box))
    return np.stack(crops).astype(np.float32)


def train(out: Path, steps: int, batch: int, n_scenes: int, seed: int = 0) -> MaskVQVAE:
    torch.manual_seed(seed)
    t0 = time.time()
    data = torch.from_numpy(mask_crops(1000 + seed, n_scenes))
    print(f"{len(data)} mask crops in {time.time() - t0:.0f}s", flush=True)
    model = MaskVQVAE()
    emb = model._vq_vae._embedding
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    ema_count = torch.ones(emb.shape[0])
    ema_sum = emb.clone()
    with torch.no_grad():  # init the codebook from encoder outputs
        z = model.encode_latents(data[torch.randperm(len(data), generator=g)[:512]]).reshape(-1, emb.shape[1])
        emb.copy_(z[torch.randperm(len(z), generator=g)[: emb.shape[0]]])
        ema_sum.copy_(emb)
    t0 = time.time()
    for step in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=g)]
        z = model.encode_latents(x)  # B,16,D
        codes = model.quantize(z.detach())
        q = emb[codes]
        zq = z + (q - z).detach()
        n, _, d = zq.shape
        rec = model.decoder(zq.reshape(n, 4, 4, d).permute(0, 3, 1, 2))[:, 0]
        loss_rec = F.mse_loss(rec, x)
        loss = loss_rec + 0.25 * F.mse_loss(z, q.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # EMA codebook update + dead-code restart
            flat = z.detach().reshape(-1, d)
            onehot = F.one_hot(codes.reshape(-1), emb.shape[0]).float()
            ema_count.mul_(0.99).add_(onehot.sum(0), alpha=0.01)
            ema_sum.mul_(0.99).add_(onehot.T @ flat, alpha=0.01)
            emb.copy_(ema_sum / ema_count.clamp_min(1e-5)[:, None])
            dead = ema_count < 1e-3
            if dead.any() and step < steps * 0.8:
                idx = torch.randint(len(flat), (int(dead.sum()),), generator=g)
                emb[dead] = flat[idx]
                ema_sum[dead] = flat[idx]
                ema_count[dead] = 1.0
        if step % 100 == 0 or step == steps - 1:
            with torch.no_grad():
                acc = ((rec > 0) == (x > 0)).float().mean().item()
            used = int((ema_count > 1e-3).sum())
            print(f"step {step} rec {loss_rec.item():.4f} pix-acc {acc:.4f} codes-used {used} "
                  f"{(step + 1) / (time.time() - t0):.1f} it/s", flush=True)
    model.eval()
    save_vqvae(model, out)
    return model


@torch.no_grad()
def evaluate_iou(model: MaskVQVAE, seed: int = 777, n_scenes: int = 300) -> float:
    x = torch.from_numpy(mask_crops(seed, n_scenes))
    rec = model.decode(model.encode(x))
    a, b = rec > 0, x > 0
    return float(((a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/pg-demo")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--scenes", type=int, default=5000)
    args = ap.parse_args()
    model = train(Path(args.out), args.steps, args.batch, args.scenes)
    print(f"held-out 64x64 crop mask IoU after encode/decode: {evaluate_iou(model):.4f}")


if __name__ == "__main__":
    main()
