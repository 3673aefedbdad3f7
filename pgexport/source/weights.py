"""Where a build's weights come from, one tensor at a time.

A build that holds the whole float32 model needs about 1.45x its size in memory (17.5 GB for 3B). A graph can
instead be exported from a model whose parameters are on the meta device (shapes only) and have its weights
bound afterwards, each read when it is written (export/bind.py). Two sources give those tensors by the
model's own parameter names (`model.language_model.layers.0.self_attn.q_proj.weight`):

- `ModuleWeights`: a model in memory (a preset's random weights, a merged adapter, a GPTQ import);
- `ChangedWeights`: another source with some of its tensors changed as they are read (an adapter merged in,
  adapter_merge.MergedWeights; AWQ scales folded in, quant/awq.ScaledWeights);
- `CheckpointWeights`: a checkpoint's safetensors files, each tensor read and converted to float32 on
  request. Read, not memory-mapped: pages of a mapping stay in the process's resident set once touched, so a
  streamed 3B build held 10.9 GB, most of it the checkpoint's bf16 pages. Checkpoint keys are renamed the way transformers' own loader renames them (PaliGemma 1
  checkpoints say `language_model.model.layers...`), and the set of tensors is checked against the
  architecture before anything is read, as `checkpoint.load_strict` checks a whole-model load.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from pgexport_runtime.errors import UserError

from pgexport.source import checkpoint

FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def meta_model(config):
    """PaliGemmaForConditionalGeneration with every parameter on the meta device (no memory, no values) and
    its buffers (rotary frequencies, the embedding scale) computed on the CPU as transformers computes them."""
    from accelerate import init_empty_weights
    from transformers import PaliGemmaForConditionalGeneration

    with init_empty_weights(include_buffers=False):
        model = PaliGemmaForConditionalGeneration(config)
    model.tie_weights()  # as from_pretrained does: a tied lm_head is the embedding table, one parameter
    return model.eval()


def parameter_names(model) -> dict[int, str]:
    """id(parameter) -> its name in the model (a tied parameter: the name the checkpoint stores it under)."""
    return {id(p): name for name, p in model.named_parameters()}


class ModuleWeights:
    """The parameters of a model in memory."""

    def __init__(self, model):
        self._params = dict(model.named_parameters())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._params.items()}

    def get(self, name: str) -> torch.Tensor:
        return self._params[name].detach().to(torch.float32)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._params[name].detach()[start:stop].to(torch.float32)


class CheckpointWeights:
    """The tensors of a checkpoint directory's safetensors files, read lazily by model parameter name."""

    def __init__(self, directory: Path, model):
        """model: the architecture (meta_model(config)) the checkpoint must supply every parameter of."""
        files = checkpoint.check_directory(directory).weights
        renamings, converters = _renamings(model)
        wanted = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self._where: dict[str, tuple[Path, str, int, int]] = {}  # name -> file, dtype, byte range
        unexpected, wrong = [], []
        for path in files:
            for key, (dtype, shape, start, end) in checkpoint.tensor_index(path).items():
                name = _rename(key, renamings, converters)
                if name not in wanted:
                    unexpected.append(key)
                elif shape != wanted[name]:
                    wrong.append(f"{key} {shape} vs {wanted[name]}")
                elif dtype not in FLOAT_DTYPES:
                    wrong.append(f"{key} stored as {dtype}, not a float type")
                else:
                    self._where[name] = (path, dtype, start, end)
        missing = sorted(set(wanted) - set(self._where))
        problems = [f"{len(names)} {label}: " + ", ".join(names[:4]) + (f" and {len(names) - 4} more" if
                    len(names) > 4 else "") for names, label in ((missing, "missing"), (sorted(unexpected),
                                                                  "unexpected"), (sorted(wrong), "wrong shape or type"))
                    if names]
        if problems:
            raise UserError(f"{directory}: the checkpoint does not match the PaliGemma architecture its config "
                            f"describes ({'; '.join(problems)})")
        self._shapes = wanted

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.empty(self._shapes[name], dtype=dtype)
        self.read_into(name, out, bytearray(self._where[name][3] - self._where[name][2]))
        return out

    def stored_dtype(self, name: str) -> torch.dtype:
        return FLOAT_DTYPES[self._where[name][1]]

    def read_into(self, name: str, out: torch.Tensor, scratch: bytearray) -> None:
        """The tensor, converted to `out`'s dtype, into `out`, read through `scratch` (at least its size in bytes): a streamed
        model reads every layer on every forward pass into buffers it keeps, so no page is newly faulted in."""
        self._read(name, 0, out, scratch)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of a tensor (a slice of the embedding table), in float32, read alone."""
        shape = self._shapes[name]
        start, stop = max(0, start), min(stop, shape[0])
        out = torch.empty((max(stop - start, 0), *shape[1:]), dtype=torch.float32)
        row_bytes = self.nbytes(name) // shape[0] if shape[0] else 0
        self._read(name, start * row_bytes, out, bytearray(out.shape[0] * row_bytes))
        return out

    def _read(self, name: str, offset: int, out: torch.Tensor, scratch: bytearray) -> None:
        """out.numel() stored elements of `name` from byte `offset` of it, converted into `out`."""
        path, dtype, start, end = self._where[name]
        size = out.numel() * FLOAT_DTYPES[dtype].itemsize
        if size == 0:
            return
        view = memoryview(scratch)[:size]
        with open(path, "rb") as f:
            f.seek(start + offset)
            if start + offset + size > end or f.readinto(view) != size:
                raise UserError(f"{path}: truncated while reading {name}")
        # safetensors is little-endian, as every platform torch runs on here
        out.copy_(torch.frombuffer(view, dtype=FLOAT_DTYPES[dtype]).reshape(out.shape))

    def nbytes(self, name: str) -> int:
        """The tensor's size in the checkpoint."""
        return self._where[name][3] - self._where[name][2]


def _renamings(model):
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    transforms = get_model_conversion_mapping(model)
    return ([t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


def _rename(key: str, renamings, converters) -> str:
    """A checkpoint key as transformers' loader names it in the model."""
    from transformers.core_model_loading import rename_source_key

    name, converter = rename_source_key(key, renamings, converters)
    if converter is not None:  # a tensor transformers would split or merge: no PaliGemma checkpoint has one
        raise UserError(f"checkpoint tensor {key!r} needs transformers' {converter!r} conversion, which a "
                        "streamed build does not do")
    return name


def load_into(module, names: dict[int, str], source) -> list:
    """Give every meta parameter of `module` its tensor from `source`; -> what `release` needs to undo it."""
    swapped = []
    for mod in module.modules():
        for key, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                mod._parameters[key] = torch.nn.Parameter(source.get(names[id(p)]), requires_grad=False)
                swapped.append((mod, key, p))
    return swapped


def release(swapped: list) -> None:
    """Put the meta parameters back: the tensors read by `load_into` are freed."""
    for mod, key, p in swapped:
        mod._parameters[key] = p


@contextmanager
def materialized(module, names: dict[int, str], source):
    """`module` (part of a meta_model) with its parameters read from `source` until the block ends; then
    back on the meta device, its memory released."""
    swapped = load_into(module, names, source)
    try:
        yield module
    finally:
        release(swapped)


class ChangedWeights:
    """A weight source (CheckpointWeights' interface) that changes some tensors of `source` as they are read;
    every other tensor passes through. Subclasses say which (`changes`) and how (`changed`, float32)."""

    def __init__(self, source):
        self._source = source

    def changes(self, name: str) -> bool:
        raise NotImplementedError

    def changed(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def shapes(self) -> dict:
        return self._source.shapes()

    def stored_dtype(self, name: str) -> torch.dtype:
        return self._source.stored_dtype(name)

    def nbytes(self, name: str) -> int:
        return self._source.nbytes(name)

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.changed(name).to(dtype) if self.changes(name) else self._source.get(name, dtype)

    def read_into(self, name: str, out: torch.Tensor, scratch: bytearray) -> None:
        if self.changes(name):
            out.copy_(self.changed(name))
        else:
            self._source.read_into(name, out, scratch)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if self.changes(name):
            return self.changed(name)[max(0, start):stop]
        return self._source.rows(name, start, stop)
