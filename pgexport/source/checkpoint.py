"""A Hugging Face PaliGemma checkpoint directory, checked before anything heavy reads it.

What transformers' `save_pretrained` writes, and what it accepts on load, is the contract:
- config.json with model_type "paligemma" (PaliGemma 1 and 2 share it; the text backbone says which);
- weights as one `model.safetensors` or shards listed by `model.safetensors.index.json`, in any float dtype;
- the image-processor settings in `preprocessor_config.json` (older saves, Google's repos) or inside
  `processor_config.json` under "image_processor" (transformers 5.x writes only that);
- a tokenizer (tokenizer.json, or whatever AutoProcessor can load).

Every file here is untrusted: JSON is parsed with its size bounded, safetensors headers are read and their
offsets checked against the file size (a truncated download is caught here, not as a traceback deep in
the load), and pickle files are never opened. `load_strict` then loads with transformers and refuses a
checkpoint that does not supply every tensor the architecture needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import sha256_file

INDEX_FILE = "model.safetensors.index.json"
MAX_JSON_BYTES = 64 << 20  # config / index / processor files are kilobytes; refuse anything absurd
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit on a header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class CheckpointFiles:
    directory: Path
    config: dict
    weights: tuple[Path, ...]  # the safetensors files transformers will read, in order

    def content_sha256(self) -> str:
        """One digest of config.json and every weight file: names the model without naming where it lives."""
        h = hashlib.sha256()
        for path in (self.directory / "config.json", *self.weights):
            h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
        return h.hexdigest()


def read_json(path: Path, what: str) -> dict:
    """A JSON object from an untrusted file, or a one-line UserError."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {what} is {size} bytes, more than any real one ({MAX_JSON_BYTES} allowed)")
        value = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: unreadable {what} ({first_line(exc)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: {what} must be a JSON object, not {type(value).__name__}")
    return value


def check_directory(path: Path) -> CheckpointFiles:
    """Check a local checkpoint directory's files (no weights are loaded); -> what transformers will read."""
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a PaliGemma checkpoint directory: missing config.json")
    config = read_json(path / "config.json", "config.json")
    model_type = config.get("model_type")
    if model_type != "paligemma":
        raise UserError(f"{path}: config.json has model_type {model_type!r}; pgexport exports PaliGemma "
                        "(model_type 'paligemma', PaliGemma 1 and 2)")
    if image_processor_config(path) is None:
        raise UserError(f"{path} is not a PaliGemma checkpoint directory: no image-processor settings "
                        "(preprocessor_config.json, or processor_config.json with an image_processor section)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise UserError(f"{path} is not a PaliGemma checkpoint directory: no tokenizer files")
    weights = _weight_files(path)
    for w in weights:
        check_safetensors(w)
    return CheckpointFiles(path, config, weights)


def image_processor_config(path: Path) -> dict | None:
    """The image-processor settings, from whichever file transformers would take them."""
    found = _image_processor(path)
    return found and found[1]


def _image_processor(path: Path) -> tuple[Path, dict] | None:
    """(the file, the image-processor settings in it)."""
    if (path / "preprocessor_config.json").is_file():
        return path / "preprocessor_config.json", read_json(path / "preprocessor_config.json", "preprocessor_config.json")
    if (path / "processor_config.json").is_file():
        section = read_json(path / "processor_config.json", "processor_config.json").get("image_processor")
        return (path / "processor_config.json", section) if isinstance(section, dict) else None
    return None


def check_image_processor(path: Path, image_size: int) -> None:
    """The numbers of the image-processor settings, before anything is preprocessed with them: the size the
    vision tower takes (a 10**9-pixel size would be allocated by the first resize), finite mean and std (a NaN
    mean turns every pixel value into NaN), a finite positive rescale factor. One line naming the file."""
    found = _image_processor(path)
    if found is None:
        return
    file, ip = found
    size = ip.get("size")
    if isinstance(size, dict):
        for key in ("height", "width"):
            value = size.get(key, image_size)
            if value != image_size or isinstance(value, bool):
                raise UserError(f"{file}: size.{key} is {_short(value)}, but the vision tower takes {image_size}x"
                                f"{image_size} images (config.json vision_config.image_size)")
    for key in ("image_mean", "image_std"):
        values = ip.get(key)
        if values is None:
            continue
        values = values if isinstance(values, list) else [values]
        for i, x in enumerate(values):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or (
                    key == "image_std" and x == 0):
                need = "a finite non-zero number" if key == "image_std" else "a finite number"
                raise UserError(f"{file}: {key}[{i}] is {_short(x)}; each must be {need}")
    factor = ip.get("rescale_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not math.isfinite(factor) or factor <= 0):
        raise UserError(f"{file}: rescale_factor is {_short(factor)}; it must be a finite positive number")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _weight_files(path: Path) -> tuple[Path, ...]:
    if (path / INDEX_FILE).is_file():
        index = read_json(path / INDEX_FILE, INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{path / INDEX_FILE}: no weight_map")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise UserError(f"{path / INDEX_FILE}: shard {name!r} is not a .safetensors file name in the directory")
            if not (path / name).is_file():
                raise UserError(f"{path}: shard {name} listed in {INDEX_FILE} is missing")
        return tuple(path / n for n in names)
    if (path / "model.safetensors").is_file():
        return (path / "model.safetensors",)
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    found_text = f"found {', '.join(found)}; pickle files are never loaded" if found else "found none"
    raise UserError(f"{path}: no model.safetensors or {INDEX_FILE} ({found_text})")


def check_safetensors(path: Path) -> dict:
    """Parse a safetensors header and check every tensor's byte range; -> {name: (dtype, shape)}."""
    return {name: (dtype, shape) for name, (dtype, shape, _, _) in tensor_index(path).items()}


def tensor_index(path: Path) -> dict:
    """A safetensors file's checked header: {name: (dtype, shape, first byte, end byte)}, offsets in the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise UserError(f"{path}: not a safetensors file, or truncated (header of {n} bytes in a "
                                f"{size}-byte file)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: unreadable safetensors header ({first_line(exc)})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_bytes = size - 8 - n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            count = 1
            for d in shape:
                count *= d
            valid = (dtype in DTYPE_BYTES and min(shape, default=0) >= 0 and 0 <= begin <= end
                     and end - begin == count * DTYPE_BYTES[dtype])
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise UserError(f"{path}: malformed safetensors entry for tensor {name!r}")
        if end > data_bytes:
            raise UserError(f"{path}: truncated: tensor {name!r} ends at byte {end} of {data_bytes} "
                            "(an interrupted download?)")
        tensors[name] = (dtype, tuple(shape), 8 + n + begin, 8 + n + end)
    return tensors


def load_strict(directory: Path, dtype):
    """PaliGemmaForConditionalGeneration from the directory, with every tensor accounted for.

    transformers fills a missing tensor with random values and only logs it; the PyTorch reference of a build
    would then share that random weight and parity would pass on a model nobody trained. Here a missing,
    unexpected or wrongly shaped tensor is an error naming it. The one exception is by rule: transformers
    leaves tied weights (the lm_head when tie_word_embeddings) out of missing_keys itself.
    """
    from transformers import PaliGemmaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the report below says what matters, in one line
    hf_logging.disable_progress_bar()  # transformers' per-tensor bar: noise on stderr, and not one line
    try:
        model, info = PaliGemmaForConditionalGeneration.from_pretrained(
            directory, dtype=dtype, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{directory}: transformers could not load the checkpoint ({first_line(exc)[:240]})") from None
    problems = []
    for key, label in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                       ("mismatched_keys", "wrong shape")):
        names = sorted(_key_name(k) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise UserError(f"{directory}: the checkpoint does not match the PaliGemma architecture its config "
                        f"describes ({'; '.join(problems)})")
    return model.eval()


def _key_name(key) -> str:
    # mismatched_keys entries are (name, checkpoint shape, model shape) in some versions
    if isinstance(key, tuple):
        return f"{key[0]} {tuple(key[1])} vs {tuple(key[2])}" if len(key) == 3 else str(key[0])
    return str(key)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
