"""A preset's seeded random weights, written once into its cache directory as a checkpoint.

A build that streams reads weights from safetensors files (weights.CheckpointWeights), so a preset needs
them on disk; then the same path serves a downloaded checkpoint of the same size. Two kinds of preset:

- tiny test presets (their JSON widens `init_std` past transformers' 0.02): the whole model is generated in memory as before
  (`random_model`, widened init) and saved by transformers in float32, so a streamed build sees
  exactly the weights a whole-model build of the preset does;
- full-size presets (3B to 28B, transformers' default init): never whole in memory. Each tensor is drawn from its own generator, seeded
  by the preset's seed and the tensor's name, with transformers' default init for its kind (normal(0, 0.02)
  for matrices and embeddings, zero biases, LayerNorm scales 1, Gemma's RMSNorm scales 0 since it computes
  1 + w), rounded to bfloat16, and written shard by shard. A whole-model build of such a preset loads the
  same files.

Shards are written under temporary names and renamed; the index (or the single file) is written last, so
an interrupted write is redone, never read half-written.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import torch

from pgexport.source.checkpoint import INDEX_FILE

SHARD_BYTES = 2 << 30


def is_on_disk(preset: dict) -> bool:
    """Whether a preset's weights are read from its cache directory also by a whole-model build."""
    return float(preset.get("init_std", 0.02)) == 0.02


def ensure(source, config, progress=None) -> Path:
    """The preset's directory with its weights written (a checkpoint directory, as transformers saves one)."""
    directory = source.directory
    if (directory / "model.safetensors").is_file() or (directory / INDEX_FILE).is_file():
        return directory
    if is_on_disk(source.preset):
        _write_per_tensor(source, config, directory, progress)
    else:
        model = random_model(source.preset, config, torch.float32)
        tmp = directory / f".weights.tmp{os.getpid()}"
        model.save_pretrained(tmp)
        os.replace(tmp / "model.safetensors", directory / "model.safetensors")
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return directory


def random_model(preset: dict, config, dtype):
    """The real architecture with seeded random weights.

    Default init (std 0.02, RMSNorm scales at zero) makes tiny models repeat one token forever, which would
    let a wrong mask or a dropped norm pass every parity test. Tiny presets widen the init: larger weights
    and random norm scales, so that greedy outputs are diverse (the tests check that they are).
    """
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(int(preset.get("seed", 0)))
    std = float(preset.get("init_std", 0.02))
    norm_std = float(preset.get("norm_std", 0.5))
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = PaliGemmaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    if std != 0.02:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name and p.dim() == 1:
                    p.normal_(0.0, norm_std)  # Gemma RMSNorm scales are (1 + w)
                elif p.dim() >= 2:
                    p.normal_(0.0, std / max(1.0, p.shape[-1] / 64) ** 0.5)
    return model.eval()


CHUNK_ELEMENTS = 16 << 20  # float32 drawn at a time: 64 MB, not the 3.7 GB of a 10B embedding table


def tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One full-size preset tensor, bfloat16, the same on every machine. Drawn a slice of rows at a time, each
    slice a multiple of 16 values: torch's normal fill then gives exactly the values of one draw of the whole."""
    if len(shape) == 1:
        if name.endswith("bias"):
            return torch.zeros(shape, dtype=torch.bfloat16)
        # SigLIP's LayerNorm scales start at 1; Gemma's RMSNorm stores w in (1 + w), so 0
        return (torch.ones if ".vision_tower." in f".{name}" else torch.zeros)(shape, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    out = torch.empty(shape, dtype=torch.bfloat16)
    row = int(torch.Size(shape[1:]).numel())
    rows = max(16, CHUNK_ELEMENTS // row // 16 * 16)
    for a in range(0, shape[0], rows):
        part = out[a:a + rows]
        part.copy_(torch.empty(part.shape).normal_(0.0, 0.02, generator=gen))
    return out


def _write_per_tensor(source, config, directory: Path, progress) -> None:
    from safetensors.torch import save_file

    from pgexport.source.weights import meta_model

    seed = int(source.preset.get("seed", 0))
    params = [(n, tuple(p.shape)) for n, p in meta_model(config).named_parameters()]
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in params:
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    shapes = dict(params)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for i, (names, file) in enumerate(zip(shards, files)):
        if progress:
            progress(i, len(shards))
        tensors = {n: tensor(n, shapes[n], seed) for n in names}
        tmp = directory / f".{file}.tmp{os.getpid()}"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        del tensors
        os.replace(tmp, directory / file)
        weight_map |= {n: file for n in names}
    index = {"metadata": {"total_size": sum(2 * torch.Size(s).numel() for s in shapes.values())},
             "weight_map": weight_map}
    tmp = directory / f".{INDEX_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, directory / INDEX_FILE)
