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
from dataclasses import dataclass, replace
from pathlib import Path

from pgexport_runtime.errors import UserError
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.manifest import TokenizerInfo
from pgexport_runtime.preprocess import Preprocessing

from pgexport.source import adapters, checkpoint
from pgexport.source.adapters import Adapter

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
PRESETS_DIR = MODELS_DIR / "presets"
DEMO_MODEL = MODELS_DIR / "pg-demo"
FALLBACK_DEFAULT = "tiny-pg1"


@dataclass(frozen=True)
class Source:
    """A resolved --model argument (plus --adapter)."""

    spec: str  # what the user typed (or the default)
    kind: str  # "preset", "local" or "hub"
    directory: Path  # config.json + tokenizer/processor files (+ safetensors weights unless preset)
    preset: dict | None = None
    adapter: Adapter | None = None  # a peft adapter merged into the weights before export
    revision: str | None = None  # hub sources: the snapshot's commit

    def to_json(self) -> dict:
        """For the build's PyTorch child: the resolved source, so that it is not resolved twice."""
        adapter = self.adapter and {"directory": str(self.adapter.directory), "config": self.adapter.config}
        return {"spec": self.spec, "kind": self.kind, "directory": str(self.directory), "preset": self.preset,
                "adapter": adapter, "revision": self.revision}

    @classmethod
    def from_json(cls, d: dict) -> "Source":
        adapter = d["adapter"] and Adapter(Path(d["adapter"]["directory"]), d["adapter"]["config"])
        return cls(d["spec"], d["kind"], Path(d["directory"]), d["preset"], adapter, d["revision"])

    def describe(self) -> dict:
        """The manifest's record of where the model came from, without paths of the builder's machine:
        a preset or hub id by name (and revision), a local checkpoint by its directory name and content hash."""
        entry: dict = {"kind": self.kind, "name": self.spec if self.kind != "local" else self.directory.resolve().name}
        if self.kind == "preset":
            entry |= {"spec": self.spec, "sha256": _preset_digest(self.preset)}
        elif self.kind == "hub":
            entry |= {"spec": self.spec, "revision": self.revision}
        else:
            entry["sha256"] = checkpoint.check_directory(self.directory).content_sha256()
            inside = _repo_relative(self.directory)
            if inside is not None:  # the shipped demo model: a path any clone of the repository resolves
                entry["spec"] = inside
        if self.adapter is not None:
            entry["adapter"] = self.adapter.manifest_entry()
        return entry


def default_model() -> str:
    """The demo model once it is shipped, else the tiny preset."""
    return str(DEMO_MODEL) if (DEMO_MODEL / "model.safetensors").is_file() else FALLBACK_DEFAULT


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def cache_dir() -> Path:
    return Path(os.environ.get("PGEXPORT_CACHE", Path.home() / ".cache" / "pgexport"))


def resolve(spec: str | None, adapter: str | Path | None = None) -> Source:
    """--model (and --adapter) -> a checked Source. An adapter directory given as --model brings its base."""
    spec = spec or default_model()
    path = Path(spec).expanduser()
    if path.is_dir() and adapters.is_adapter_dir(path):
        if adapter is not None:
            raise UserError(f"--model {spec} is a peft adapter; give its base as --model and it as --adapter")
        found = adapters.read_adapter(path)
        if found.base_model is None:
            raise UserError(f"--model {spec}: the adapter names no base model; pass --model BASE --adapter {spec}")
        base = _adapter_base(found, path)
        return resolve(base, path)
    source = _resolve_model(spec, path)
    if adapter is None:
        return source
    if source.kind != "preset" and gptq_settings(source) is not None:
        raise UserError(f"--adapter with the GPTQ checkpoint {spec} is not supported: merge the adapter into the "
                        "float checkpoint, then quantize it with --quant int4-gptq")
    return replace(source, adapter=adapters.read_adapter(Path(adapter)))


def _resolve_model(spec: str, path: Path) -> Source:
    if spec in list_presets():
        preset = json.loads((PRESETS_DIR / f"{spec}.json").read_text())
        return Source(spec, "preset", _materialize_preset(spec, preset), preset)
    if path.is_dir():
        checkpoint.check_directory(path)
        return Source(spec, "local", path)
    if path.exists():
        raise UserError(f"--model {spec}: expected a checkpoint directory, got a file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        directory = _download(spec)
        return Source(spec, "hub", directory, revision=directory.name)
    raise UserError(
        f"--model {spec!r}: not a preset ({', '.join(list_presets())}), a local checkpoint directory, "
        "or a hub id like google/paligemma-3b-pt-224"
    )


def _adapter_base(adapter: Adapter, adapter_dir: Path) -> str:
    """The base an adapter's config names: a preset, a path (as written, or next to the adapter), a hub id."""
    base = adapter.base_model
    for cand in (Path(base).expanduser(), adapter_dir / base):
        if cand.is_dir():
            return str(cand)
    return base


def _download(repo_id: str) -> Path:
    """A hub checkpoint: from the local Hugging Face cache when offline (HF_HUB_OFFLINE=1), else fetched."""
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
        )
    except Exception as exc:  # offline, gated, unknown repo: all end the same way for the user
        raise UserError(
            f"could not fetch {repo_id!r} from the Hugging Face hub: {_hub_reason(exc)}. Download it where the hub "
            f"is reachable and pass the directory: --model /path/to/{repo_id.split('/')[-1]}"
        ) from None
    checkpoint.check_directory(Path(local))
    return Path(local)


def _hub_reason(exc: Exception) -> str:
    """Why a hub fetch failed, in a few words (huggingface_hub's messages run to several sentences)."""
    from huggingface_hub import errors

    known = [(errors.GatedRepoError, "the model is gated: accept its license on the hub, then `hf auth login`"),
             (errors.RepositoryNotFoundError, "no such repository, or it is private (log in with `hf auth login`)"),
             (errors.RevisionNotFoundError, "no such revision"),
             (errors.OfflineModeIsEnabled, "offline (HF_HUB_OFFLINE=1) and not in the local cache"),
             (errors.LocalEntryNotFoundError, "not in the local cache, and the hub is offline or unreachable")]
    for kind, reason in known:
        if isinstance(exc, kind):
            return reason
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].rstrip(".")
    return first if first and len(first) <= 200 else type(exc).__name__


def _preset_digest(preset: dict) -> str:
    return hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()


def _repo_relative(path: Path) -> str | None:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return None


def _materialize_preset(name: str, preset: dict) -> Path:
    """Write config + tokenizer + processor files for a preset once; keyed by the preset's content."""
    from pgexport.source.tokenizer import BASIC_CORPUS, TokenLayout, build_tokenizer, write_hf_tokenizer, write_processor_files

    digest = _preset_digest(preset)[:12]
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
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its warnings about odd values are lines of their own; checks below say one
    try:
        return PaliGemmaConfig.from_pretrained(source.directory)
    except Exception as exc:  # transformers' and huggingface_hub's validators raise their own types
        raise UserError(f"{source.spec}: invalid config.json ({checkpoint.first_line(exc)[:200]})") from None


def load_geometry(source: Source) -> Geometry:
    from pgexport.source.geometry import checked_geometry

    try:
        return checked_geometry(load_config(source))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{source.spec}: config.json describes no model pgexport can export "
                        f"({checkpoint.first_line(exc)[:200]})") from None


def load_model(source: Source, dtype=None, merge_adapter: bool = True):
    """A PaliGemmaForConditionalGeneration in eval mode (float32 unless dtype says otherwise).

    With an adapter: merged by peft (the default), or, with merge_adapter=False, the peft model with the
    adapter attached and unmerged, the reference the merged graphs are checked against.
    """
    return load_model_and_integers(source, dtype, merge_adapter)[0]


def load_model_and_integers(source: Source, dtype=None, merge_adapter: bool = True):
    """(model as load_model gives it, the GPTQ checkpoint's own integers or None).

    A GPTQ checkpoint loads as weights dequantized from its integers; the build imports the same integers
    (module name -> nbits.Packed) rather than quantizing again.
    """
    import torch

    dtype = dtype or torch.float32
    integers = None
    if source.kind == "preset":
        from pgexport.source import presets

        if presets.is_on_disk(source.preset):  # full size: written tensor by tensor, loaded like a checkpoint
            model = checkpoint.load_strict(presets.ensure(source, load_config(source)), dtype)
        else:
            model = presets.random_model(source.preset, load_config(source), dtype)
    elif (settings := gptq_settings(source)) is not None:
        from pgexport.source.gptq_import import load_checkpoint

        model, integers = load_checkpoint(source.directory, settings)
        model = model.to(dtype)
    else:
        model = checkpoint.load_strict(source.directory, dtype)
    if source.adapter is None:  # resolve() refuses an adapter on a GPTQ checkpoint
        return model, integers
    peft_model = adapters.attach(model, source.adapter)
    return (adapters.merge(peft_model) if merge_adapter else peft_model), None


def gptq_settings(source: Source) -> dict | None:
    """bits / group size / format of a GPTQ checkpoint directory, or None."""
    from pgexport.source.gptq_import import gptq_settings as read

    return read(checkpoint.read_json(source.directory / "config.json", "config.json"))


_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def load_processor(directory: Path):
    """transformers' PaliGemmaProcessor for the source, padding on the left as the runtime does.

    A checkpoint's tokenizer may say padding_side "right" or nothing (transformers then pads right); a
    right-padded batch puts pad tokens between the prompt and the answer. Generation pads left, so every
    PyTorch reference pgexport computes (parity, accuracy gate, GPTQ calibration, bench) pads left too.
    """
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(directory)
    except Exception as exc:  # whatever transformers' loaders raise on untrusted files: one line for the user
        raise UserError(f"{directory}: transformers cannot load its processor/tokenizer "
                        f"({checkpoint.first_line(exc)[:200]})") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise UserError(f"{directory}: AutoProcessor gave a {type(processor).__name__}, not PaliGemma's processor")
    processor.tokenizer.padding_side = "left"
    return processor


def load_preprocessing(source: Source, g: Geometry, processor=None) -> Preprocessing:
    """The SigLIP image-processor parameters the runtime needs, as transformers' own processor holds them
    (whichever file they came from: preprocessor_config.json or processor_config.json)."""
    ip = (processor or load_processor(source.directory)).image_processor
    size = getattr(ip, "size", None) or {}
    height, width = size.get("height", g.image_size), size.get("width", g.image_size)
    if (height, width) != (g.image_size, g.image_size):
        raise UserError(f"{source.spec}: processor size {height}x{width} != vision tower size {g.image_size}")
    if not all(getattr(ip, flag, True) for flag in ("do_resize", "do_rescale", "do_normalize")):
        raise UserError(f"{source.spec}: only the standard SigLIP preprocessing (resize, rescale, normalize) is supported")
    resample = int(getattr(ip, "resample", 3))
    if resample not in _RESAMPLE:
        raise UserError(f"{source.spec}: unsupported resample mode {resample}")
    mean, std = getattr(ip, "image_mean", None), getattr(ip, "image_std", None)
    return Preprocessing(size=(height, width), resample=_RESAMPLE[resample],
                         rescale_factor=float(getattr(ip, "rescale_factor", 1 / 255)),
                         mean=tuple(float(x) for x in (mean if mean is not None else [0.5, 0.5, 0.5])),
                         std=tuple(float(x) for x in (std if std is not None else [0.5, 0.5, 0.5])))


def write_tokenizer(source: Source, dest: Path, processor=None) -> None:
    """tokenizer.json for the bundle: the pipeline transformers itself tokenizes with.

    transformers 5.x builds GemmaTokenizer's pipeline from its class and takes only the vocabulary and merges
    from the checkpoint's files, so the backend it ends up with (not the file on disk) is what the runtime
    must reproduce; parity then checks the ids. Padding and truncation are the runtime's business.
    """
    from tokenizers import Tokenizer

    backend = getattr((processor or load_processor(source.directory)).tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{source.spec}: its tokenizer has no fast (tokenizers) backend the runtime could use")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(dest))


def load_tokenizer_info(source: Source, g: Geometry, processor=None) -> TokenizerInfo:
    """Special-token strings of the geometry's ids, checked."""
    tok = (processor or load_processor(source.directory)).tokenizer.backend_tokenizer
    info = TokenizerInfo(file="tokenizer.json", image_token=tok.id_to_token(g.image_token_id),
                         bos_token=tok.id_to_token(g.bos_token_id), eos_token=tok.id_to_token(g.eos_token_id),
                         pad_token=tok.id_to_token(g.pad_token_id))
    if info.image_token != "<image>":
        raise UserError(f"{source.spec}: token {g.image_token_id} is {info.image_token!r}, expected <image>")
    return info
