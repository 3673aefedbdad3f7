"""Where a model comes from: a named preset, a local Hugging Face checkpoint directory, or a hub id.

Every source ends up as the same thing: a directory with config.json and the tokenizer/processor files,
plus a PaliGemmaForConditionalGeneration in float32. Presets write their config and tokenizer into a
cache directory and fill the weights with seeded random values instead of reading safetensors, so real
checkpoints and presets share one loading path. Only safetensors are read; remote code never runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pgexport_runtime.errors import UserError
from pgexport_runtime.geometry import Geometry

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
PRESETS_DIR = MODELS_DIR / "presets"
DEMO_MODEL = MODELS_DIR / "pg-demo"
FALLBACK_DEFAULT = "tiny-pg1"
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Source:
    """A resolved --model argument."""

    spec: str  # what the user typed (or the default)
    kind: str  # "preset", "local" or "hub"
    directory: Path  # config.json + tokenizer/processor files (+ model.safetensors unless preset)
    preset: dict | None = None

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "directory": str(self.directory)}


def default_model() -> str:
    """The demo model once it is shipped, else the tiny preset."""
    return str(DEMO_MODEL) if (DEMO_MODEL / "model.safetensors").is_file() else FALLBACK_DEFAULT


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def cache_dir() -> Path:
    return Path(os.environ.get("PGEXPORT_CACHE", Path.home() / ".cache" / "pgexport"))


def resolve(spec: str | None) -> Source:
    spec = spec or default_model()
    if spec in list_presets():
        preset = json.loads((PRESETS_DIR / f"{spec}.json").read_text())
        return Source(spec, "preset", _materialize_preset(spec, preset), preset)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Source(spec, "local", _check_checkpoint_dir(path))
    if path.exists():
        raise UserError(f"--model {spec}: expected a checkpoint directory, got a file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return Source(spec, "hub", _download(spec))
    raise UserError(
        f"--model {spec!r}: not a preset ({', '.join(list_presets())}), a local checkpoint directory, "
        "or a hub id like google/paligemma-3b-pt-224"
    )


def _check_checkpoint_dir(path: Path) -> Path:
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not a PaliGemma checkpoint directory: missing {', '.join(missing)}")
    if not list(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin")) or ["no weights"]
        raise UserError(f"{path}: no *.safetensors weights (found {', '.join(found)}); pickle files are never loaded")
    return path


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
        )
    except Exception as exc:  # offline, gated, unknown repo: all end the same way for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({reason[:160]}). Download it where the hub "
            f"is reachable and pass the directory: --model /path/to/{repo_id.split('/')[-1]}"
        ) from None
    return _check_checkpoint_dir(Path(local))


def _materialize_preset(name: str, preset: dict) -> Path:
    """Write config + tokenizer + processor files for a preset once; keyed by the preset's content."""
    from pgexport.tokenizer import (
        BASIC_CORPUS,
        TokenLayout,
        build_tokenizer,
        write_hf_tokenizer,
        write_processor_files,
    )

    digest = hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir() / "presets" / f"{name}-{digest}"
    if (out / "config.json").is_file():
        return out
    tok_spec = preset["tokenizer"]
    if tok_spec["layout"] == "full":
        layout = TokenLayout.full_size()
    else:
        layout = TokenLayout.compact(tok_spec["text_vocab_size"])
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    write_hf_tokenizer(build_tokenizer(BASIC_CORPUS * 4, layout), tmp)
    vision, text = dict(preset["vision"]), dict(preset["text"])
    text.update(vocab_size=layout.vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config = {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "vision_config": vision,
        "text_config": text,
        "image_token_index": layout.image_token_id,
        "projection_dim": text["hidden_size"],
        "hidden_size": text["hidden_size"],
        "vocab_size": layout.vocab_size,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    n_img = (vision["image_size"] // vision["patch_size"]) ** 2
    write_processor_files(tmp, vision["image_size"], n_img)
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}))
    tmp.rename(out) if not out.exists() else None
    return out


def load_config(source: Source):
    from transformers import PaliGemmaConfig

    return PaliGemmaConfig.from_pretrained(source.directory)


def load_geometry(source: Source) -> Geometry:
    from pgexport.geometry import geometry_from_config

    return geometry_from_config(load_config(source))


def load_model(source: Source, dtype=None):
    """A PaliGemmaForConditionalGeneration in eval mode (float32 unless dtype says otherwise)."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    dtype = dtype or torch.float32
    if source.kind == "preset":
        return _random_model(source, dtype)
    settings = gptq_settings(source)
    if settings is not None:  # weights dequantized from the GPTQ integers (the same integers are imported)
        from pgexport.quant.gptq_import import load_checkpoint

        return load_checkpoint(source.directory, settings)[0].to(dtype)
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        source.directory, dtype=dtype, use_safetensors=True, trust_remote_code=False
    )
    return model.eval()


def gptq_settings(source: Source) -> dict | None:
    """bits / group size / format of a GPTQ checkpoint directory, or None."""
    from pgexport.quant.gptq_import import gptq_settings as read

    return read(json.loads((source.directory / "config.json").read_text()))


def _random_model(source: Source, dtype):
    """The real architecture with seeded random weights.

    Default init (std 0.02, RMSNorm scales at zero) makes tiny models repeat one token forever, which would
    let a wrong mask or a dropped norm pass every parity test. Tiny presets widen the init: larger weights
    and random norm scales, so that greedy outputs are diverse (the tests check that they are).
    """
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    config = load_config(source)
    torch.manual_seed(int(source.preset.get("seed", 0)))
    std = float(source.preset.get("init_std", 0.02))
    norm_std = float(source.preset.get("norm_std", 0.5))
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


_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def load_preprocessing(source: Source, g: Geometry) -> dict:
    """The SigLIP image-processor parameters the runtime needs, from preprocessor_config.json."""
    cfg = json.loads((source.directory / "preprocessor_config.json").read_text())
    size = cfg.get("size", {})
    height, width = size.get("height", g.image_size), size.get("width", g.image_size)
    if (height, width) != (g.image_size, g.image_size):
        raise UserError(f"{source.spec}: processor size {height}x{width} != vision tower size {g.image_size}")
    if not cfg.get("do_resize", True) or not cfg.get("do_rescale", True) or not cfg.get("do_normalize", True):
        raise UserError(f"{source.spec}: only the standard SigLIP preprocessing (resize, rescale, normalize) is supported")
    resample = cfg.get("resample", 3)
    if resample not in _RESAMPLE:
        raise UserError(f"{source.spec}: unsupported resample mode {resample}")
    return {
        "size": [height, width],
        "resample": _RESAMPLE[resample],
        "rescale_factor": float(cfg.get("rescale_factor", 1 / 255)),
        "mean": [float(x) for x in cfg.get("image_mean", [0.5, 0.5, 0.5])],
        "std": [float(x) for x in cfg.get("image_std", [0.5, 0.5, 0.5])],
    }


def load_tokenizer_info(source: Source, g: Geometry) -> dict:
    """Special-token strings and ids, checked against the geometry."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source.directory / "tokenizer.json"))
    info = {
        "file": "tokenizer.json",
        "image_token": tok.id_to_token(g.image_token_id),
        "bos_token": tok.id_to_token(g.bos_token_id),
        "eos_token": tok.id_to_token(g.eos_token_id),
        "pad_token": tok.id_to_token(g.pad_token_id),
        "image_token_id": g.image_token_id,
        "bos_token_id": g.bos_token_id,
        "eos_token_id": g.eos_token_id,
        "pad_token_id": g.pad_token_id,
    }
    if info["image_token"] != "<image>":
        raise UserError(f"{source.spec}: token {g.image_token_id} is {info['image_token']!r}, expected <image>")
    return info
