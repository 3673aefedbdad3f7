"""peft adapters (LoRA and the other mergeable tuners) on a PaliGemma base, merged by peft itself.

A directory as peft's `save_pretrained` writes it: adapter_config.json + adapter_model.safetensors. The
adapter is attached with peft and merged with peft's own `merge_and_unload` (pgexport re-implements none
of it), so every graph, recipe and GPTQ run sees the fine-tuned weights. Before the merge, the attached but
unmerged peft model serves as the PyTorch reference of parity and of the accuracy gate: the bundle is
compared with what the user trained, not with its base or with our own merge.

Loading is strict, as for the base: adapter weights that match no module, adapter modules left without
weights, or shapes that do not fit the base are one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import sha256_file

from pgexport.source.checkpoint import check_safetensors, first_line, read_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class Adapter:
    directory: Path
    config: dict  # adapter_config.json as written by peft

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    def manifest_entry(self) -> dict:
        """What the bundle records: no paths of the builder's machine."""
        targets = self.config.get("target_modules")
        base = self.base_model
        return {
            "name": self.directory.resolve().name,
            "peft_type": self.config.get("peft_type"),
            "rank": self.config.get("r"),
            "alpha": self.config.get("lora_alpha"),
            "targets": sorted(targets) if isinstance(targets, (list, tuple, set)) else targets,
            "modules_to_save": self.config.get("modules_to_save"),
            "base_model": Path(base).name if base else None,
            "sha256": sha256_file(self.directory / WEIGHTS_FILE),
        }


def is_adapter_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and not (path / "config.json").is_file()


def read_adapter(path: Path) -> Adapter:
    """Check an adapter directory's files (nothing is loaded yet)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"--adapter {path}: not a directory (expected peft's save_pretrained output)")
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"--adapter {path}: no {CONFIG_FILE} (expected peft's save_pretrained output)")
    config = read_json(path / CONFIG_FILE, CONFIG_FILE)
    if not (path / WEIGHTS_FILE).is_file():
        found = sorted(p.name for p in path.glob("adapter_model.*"))
        extra = f" (found {', '.join(found)}; pickle files are never loaded)" if found else ""
        raise UserError(f"--adapter {path}: no {WEIGHTS_FILE}{extra}")
    if not check_safetensors(path / WEIGHTS_FILE):
        raise UserError(f"--adapter {path}: {WEIGHTS_FILE} holds no tensors")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise UserError(f"--adapter {path}: {CONFIG_FILE} names no peft_type")
    return Adapter(path, config)


def attach(model, adapter: Adapter, streamed: bool = False):
    """The peft model (base + adapter, unmerged, eval mode). The base is modified in place. streamed: the base
    is a streamed model (streamed.py), whose layers are on the meta device outside their forward."""
    from peft import PeftConfig, PeftModel

    where = f"--adapter {adapter.directory}"
    try:
        config = PeftConfig.from_pretrained(str(adapter.directory))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise UserError(f"{where}: peft cannot read {CONFIG_FILE} ({first_line(exc)})") from None
    if streamed:
        _check_streamable(config, where)
    try:
        peft_model = PeftModel(model, config)
        if streamed:
            from pgexport.source.adapter_merge import materialize_adapter

            materialize_adapter(peft_model)
        result = peft_model.load_adapter(str(adapter.directory), "default")
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        # peft's words for "target modules not found in the base model" and torch's size-mismatch report
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith("size mismatch")), first_line(exc))
        raise UserError(f"{where} does not fit this base model: {detail[:300]}") from None
    unexpected = sorted(result.unexpected_keys)
    missing = sorted(result.missing_keys)  # peft already narrows these to the adapter's own tensors
    if unexpected or missing:
        names = [f"{len(unexpected)} unexpected: {', '.join(unexpected[:3])}"] * bool(unexpected)
        names += [f"{len(missing)} missing: {', '.join(missing[:3])}"] * bool(missing)
        raise UserError(f"{where} does not fit this base model ({'; '.join(names)})")
    peft_model.set_adapter("default")
    return peft_model.eval()


def _check_streamable(config, where: str) -> None:
    """A streamed model keeps the embedding table (and an lm_head) in modules of its own, which peft cannot adapt."""
    from peft.tuners.tuners_utils import check_target_module_exists

    for key in ("model.language_model.embed_tokens", "lm_head"):
        if check_target_module_exists(config, key):
            raise UserError(f"{where}: --stream does not yet support an adapter on {key.rpartition('.')[2]} (merge it "
                            "into the checkpoint with peft first)")


def merge(peft_model):
    """peft's own merge: the base model with the adapter folded into its weights, adapter layers removed."""
    if not hasattr(peft_model, "merge_and_unload"):
        raise UserError(f"peft cannot merge a {type(peft_model).__name__} adapter into the weights")
    return peft_model.merge_and_unload().eval()
