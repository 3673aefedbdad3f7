"""Mask-decoder graph: 16 <seg> codes -> a 64x64 mask, the VQ-VAE decoder of PaliGemma's `segment` task.

The architecture is big_vision's (evaluators/proj/paligemma/transfers/segmentation.py, `Decoder`):

    codes [B,16] -> codebook [N,D] lookup -> [B,4,4,D] -> Conv_0 1x1 (dim) -> ReLU -> ResBlock_0, ResBlock_1
    -> ConvTranspose_0..3 (4x4, stride 2; dim, dim/2, dim/4, dim/8; each + ReLU) -> Conv_1 1x1 (1) -> [B,64,64]

Released weights (vae-oid.npz: N=128, D=512, dim=128) use PyTorch names and layouts, which are the
module's own state-dict names below; big_vision's Flax names (`_embeddings`, `Conv_0/kernel`, ...) are
mapped to them by the table `BIG_VISION_NAMES` (kernels HWIO -> OIHW: the inverse of big_vision's
`np.transpose(w, (2, 3, 1, 0))`; flax ConvTranspose(padding=2, transpose_kernel=True) is torch
ConvTranspose2d(padding=1) with that transpose). Every load checks the names, the count and every shape.
The output is not clipped: big_vision resizes the raw values and thresholds at 0 (runtime masks.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pgexport_runtime import io_names as io
from pgexport_runtime.errors import UserError

NUM_TOKENS = 16  # a 4x4 grid of codes
MASK_SIZE = 64
CHECKPOINT_FILES = ("vqvae.safetensors", "vae-oid.npz")  # looked for in a checkpoint directory

INPUT_NAMES = [io.SEG_CODES]
OUTPUT_NAMES = [io.MASKS]
DYNAMIC_SHAPES = ({0: io.BATCH},)


class _ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        return x + self.net(x)


class _Codebook(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.register_buffer("_embedding", torch.zeros(n, d))


class MaskDecoder(nn.Module):
    """State-dict names are those of vae-oid.npz: `_vq_vae._embedding`, `decoder.{0,2,3,4,6,8,10,12}...`."""

    def __init__(self, num_codes: int, embedding_dim: int, dim: int):
        super().__init__()
        self._vq_vae = _Codebook(num_codes, embedding_dim)
        layers: list[nn.Module] = [nn.Conv2d(embedding_dim, dim, 1), nn.ReLU(), _ResBlock(dim), _ResBlock(dim)]
        c_in = dim
        for i in range(4):  # 4 -> 8 -> 16 -> 32 -> 64 pixels
            layers += [nn.ConvTranspose2d(c_in, dim >> i, 4, stride=2, padding=1), nn.ReLU()]
            c_in = dim >> i
        layers.append(nn.Conv2d(c_in, 1, 1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, seg_codes: torch.Tensor) -> torch.Tensor:
        q = self._vq_vae._embedding[seg_codes]  # [B, 16, D]; codes in row-major 4x4 order, as big_vision
        q = q.reshape(seg_codes.shape[0], 4, 4, q.shape[-1]).permute(0, 3, 1, 2)
        return self.decoder(q)[:, 0]


def expected_shapes(num_codes: int, d: int, dim: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the decoder by PyTorch name, with its shape (25 tensors)."""
    shapes: dict[str, tuple[int, ...]] = {"_vq_vae._embedding": (num_codes, d)}
    shapes |= {"decoder.0.weight": (dim, d, 1, 1), "decoder.0.bias": (dim,)}
    for block in ("decoder.2.net", "decoder.3.net"):
        for j, k in ((0, 3), (2, 3), (4, 1)):
            shapes |= {f"{block}.{j}.weight": (dim, dim, k, k), f"{block}.{j}.bias": (dim,)}
    c_in = dim
    for i, layer in enumerate((4, 6, 8, 10)):  # torch ConvTranspose2d weight: [in, out, kh, kw]
        shapes |= {f"decoder.{layer}.weight": (c_in, dim >> i, 4, 4), f"decoder.{layer}.bias": (dim >> i,)}
        c_in = dim >> i
    shapes |= {"decoder.12.weight": (1, c_in, 1, 1), "decoder.12.bias": (1,)}
    return shapes


def _big_vision_names() -> dict[str, str]:
    """PyTorch name -> big_vision Flax name (the inverse of big_vision's `_get_params`)."""
    table = {"_vq_vae._embedding": "_embeddings"}
    convs = {"decoder.0": "Conv_0", "decoder.4": "ConvTranspose_0", "decoder.6": "ConvTranspose_1",
             "decoder.8": "ConvTranspose_2", "decoder.10": "ConvTranspose_3", "decoder.12": "Conv_1"}
    for b in (0, 1):
        for j, k in ((0, 0), (2, 1), (4, 2)):
            convs[f"decoder.{b + 2}.net.{j}"] = f"ResBlock_{b}/Conv_{k}"
    for torch_name, flax_name in convs.items():
        table[f"{torch_name}.weight"] = f"{flax_name}/kernel"
        table[f"{torch_name}.bias"] = f"{flax_name}/bias"
    return table


BIG_VISION_NAMES = _big_vision_names()
_FLAX_PREFIXES = ("params/decoder/", "params/", "decoder/", "")


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """A .npz (np.load with allow_pickle=False) or .safetensors file -> name -> array. Nothing else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask decoder weights not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: np.asarray(f[k]) for k in f.files}
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
    except Exception as exc:  # a truncated or pickled file: one line for the user
        raise UserError(f"cannot read mask decoder weights {path}: {str(exc).splitlines()[0][:200]}") from None
    raise UserError(f"mask decoder weights {path}: expected a .npz or .safetensors file (pickles are never loaded)")


def to_torch_names(tensors: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Tensors named as PyTorch (vae-oid.npz, the demo's vqvae.safetensors) or as big_vision's Flax
    params (kernels transposed) -> the module's names. Unrelated tensors (an encoder) are dropped."""
    if "_vq_vae._embedding" in tensors:
        return {k: v for k, v in tensors.items() if k.startswith(("_vq_vae.", "decoder."))}
    flat = {k.replace(".", "/"): v for k, v in tensors.items()}
    for prefix in _FLAX_PREFIXES:
        if prefix + "_embeddings" in flat:
            out = {}
            for torch_name, flax_name in BIG_VISION_NAMES.items():
                v = flat.get(prefix + flax_name)
                if v is not None:
                    out[torch_name] = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v  # HWIO -> OIHW
            return out
    raise UserError(f"{origin}: no mask decoder codebook (_vq_vae._embedding or big_vision's _embeddings) found")


def from_tensors(tensors: dict[str, np.ndarray], origin: str) -> MaskDecoder:
    """Build the decoder from named tensors, checked loudly: names, count and shapes."""
    state = to_torch_names(tensors, origin)
    emb, first = state.get("_vq_vae._embedding"), state.get("decoder.0.weight")
    if emb is None or first is None or emb.ndim != 2 or first.ndim != 4:
        raise UserError(f"{origin}: mask decoder codebook or decoder.0 is missing or has the wrong rank")
    shapes = expected_shapes(emb.shape[0], emb.shape[1], first.shape[0])
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise UserError(f"{origin}: mask decoder tensors do not match big_vision's decoder "
                        f"(missing {missing[:4]}, unexpected {extra[:4]})")
    wrong = [f"{k} {tuple(state[k].shape)} != {s}" for k, s in shapes.items() if tuple(state[k].shape) != s]
    if wrong:
        raise UserError(f"{origin}: mask decoder shape mismatch: {'; '.join(wrong[:3])}")
    module = MaskDecoder(emb.shape[0], emb.shape[1], first.shape[0])
    sd = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    result = module.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys and len(sd) == len(shapes) == 25
    return module.eval()


def find_weights(checkpoint_dir: Path | None, option: Path | None) -> Path | None:
    """--mask-decoder PATH if given, else a decoder shipped in the checkpoint directory, else None."""
    if option is not None:
        return Path(option)
    if checkpoint_dir is None:
        return None
    return next((checkpoint_dir / f for f in CHECKPOINT_FILES if (checkpoint_dir / f).is_file()), None)


def load(path: Path) -> MaskDecoder:
    return from_tensors(read_tensors(path), str(path))


def sample_inputs(num_codes: int = 128, batch: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    return (torch.randint(0, num_codes, (batch, NUM_TOKENS), generator=gen, dtype=torch.int64),)


def codes(module: MaskDecoder) -> dict:
    """The code format of the manifest's mask_decoder entry (runtime MaskCodes)."""
    return {"num_tokens": NUM_TOKENS, "num_codes": int(module._vq_vae._embedding.shape[0]), "mask_size": MASK_SIZE}
