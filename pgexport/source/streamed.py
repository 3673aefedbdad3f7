"""transformers' PaliGemma holding one decoder layer's weights at a time: the PyTorch reference of a build
that streams.

The model is transformers' own (`PaliGemmaForConditionalGeneration`, its forward and `generate`), built on
the meta device. The projector, the embedding table (the tied lm_head) and the final norm are read once and
stay, the table as the checkpoint stores it (bfloat16 for a bf16 checkpoint: its float32 values at half the
memory), looked up and multiplied in float32; the vision tower and each decoder layer read their weights from the source when their forward starts
and drop them when it returns (forward hooks). Peak memory is the resident parts plus the vision tower or one
layer, whatever the depth; the price is reading every layer once per forward pass, so references run batched.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from pgexport.source.weights import load_into, meta_model, parameter_names, release


def streamed_model(config, source):
    """A PaliGemmaForConditionalGeneration in eval mode whose decoder layers stream from `source`."""
    model = meta_model(config)
    names = parameter_names(model)
    lm = model.model.language_model
    for module in (model.model.multi_modal_projector, lm.norm):
        load_into(module, names, source)
    head = None if config.tie_word_embeddings else _stored(source, names[id(model.lm_head.weight)])
    lm.embed_tokens = _Embedding(_stored(source, names[id(lm.embed_tokens.weight)]), lm.embed_tokens.embed_scale)
    model.lm_head = _Head(lm.embed_tokens.weight if head is None else head)  # tied: the one table
    slots = model._layer_slots = _LayerSlots(names, source)
    tower = model.model.vision_tower
    tower.register_forward_pre_hook(_load(names, slots))
    tower.register_forward_hook(_release)
    for layer in lm.layers:
        layer.register_forward_pre_hook(slots.load)
        layer.register_forward_hook(_release)
    return model


def _stored(source, name: str) -> torch.Tensor:
    """A table as the checkpoint stores it when that is a 16-bit float (every value exact in float32, at half
    its memory: 1.8 GB saved at 10B), else float32."""
    dtype = source.stored_dtype(name)
    return source.get(name, dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32)


class _Embedding(torch.nn.Module):
    """Gemma's scaled token embedding over a stored table: looked up, widened to float32, then scaled, which is
    what transformers computes on the float32 table."""

    def __init__(self, table: torch.Tensor, embed_scale: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(table, requires_grad=False)
        self.embed_scale = embed_scale.to(torch.float32)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(input_ids, self.weight).to(torch.float32) * self.embed_scale


class _Head(torch.nn.Module):
    """The lm_head over a stored table, in float32 a slice of the vocabulary at a time (no float32 copy of it)."""

    ROWS = 16384

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.weight = table if isinstance(table, torch.nn.Parameter) else torch.nn.Parameter(table, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float32:
            return torch.nn.functional.linear(hidden, self.weight)
        vocab = self.weight.shape[0]
        out = hidden.new_empty(*hidden.shape[:-1], vocab)
        for a in range(0, vocab, self.ROWS):
            out[..., a:a + self.ROWS] = hidden @ self.weight[a:a + self.ROWS].to(torch.float32).T
        return out


class _LayerSlots:
    """Every decoder layer has the same shapes: one set of float32 buffers serves them all, each layer read
    into it in turn (allocating a layer's tensors afresh on every pass cost three times the reading)."""

    def __init__(self, names, source):
        self.names, self.source = names, source
        self.buffers: dict[str, torch.Tensor] = {}  # parameter path inside a layer -> its buffer
        self.scratch = bytearray()

    def load(self, layer, args):
        swapped = []
        for path, p in list(layer.named_parameters()):
            if not p.is_meta:
                continue
            name = self.names[id(p)]
            buffer = self.buffers.get(path)
            if buffer is None:
                buffer = self.buffers[path] = torch.empty(p.shape)
            if len(self.scratch) < self.source.nbytes(name):
                self.scratch = bytearray(self.source.nbytes(name))
            self.source.read_into(name, buffer, self.scratch)
            mod = layer.get_submodule(path.rpartition(".")[0])
            key = path.rpartition(".")[2]
            mod._parameters[key] = torch.nn.Parameter(buffer, requires_grad=False)
            swapped.append((mod, key, p))
        layer._streamed = swapped


def read_from(model, source) -> None:
    """The vision tower and the decoder layers read their weights from `source` from now on (an adapter merged in:
    merged.MergedWeights)."""
    model._layer_slots.source = source


def source_of(model):
    """Where a streamed model's layers read their weights from (read_from's last `source`)."""
    return model._layer_slots.source


def streams(model) -> bool:
    """Whether `model` is one of streamed_model's."""
    return hasattr(model, "_layer_slots")


@contextmanager
def layer_held(model, layer):
    """A decoder layer with its weights for the block, for code that calls its submodules rather than its forward
    (GPTQ): a streamed model's layer holds them only inside its forward. A loaded model's: as it is."""
    if not streams(model):
        yield layer
        return
    model._layer_slots.load(layer, ())
    try:
        yield layer
    finally:
        _release(layer, (), None)


def drop_table(model) -> None:
    """Once the references are computed: the embedding table (and an untied lm_head) back on the meta device,
    and the layers' shared buffers freed (a forward pass would allocate them again), for the export steps,
    which read weights again one tensor at a time."""
    model._layer_slots.buffers.clear()
    model._layer_slots.scratch = bytearray()
    lm = model.model.language_model
    tied = model.lm_head.weight is lm.embed_tokens.weight
    for module in (lm.embed_tokens, model.lm_head):
        if not module.weight.is_meta:
            module.weight = torch.nn.Parameter(torch.empty_like(module.weight, device="meta"), requires_grad=False)
    if tied:
        model.lm_head.weight = lm.embed_tokens.weight


class ResidentFirst:
    """A weight source for the graphs of a streamed model: the tensors it holds as they are, the rest read
    from `source`, so that exporting never holds a second copy of a tensor the model holds."""

    def __init__(self, model, source):
        self._model, self._source = model, source

    def shapes(self) -> dict:
        return self._source.shapes()

    def get(self, name: str):
        held = self._held(name)
        return self._source.get(name) if held is None else held.to(torch.float32)

    def rows(self, name: str, start: int, stop: int):
        held = self._held(name)
        return self._source.rows(name, start, stop) if held is None else held[start:stop].to(torch.float32)

    def _held(self, name: str) -> torch.Tensor | None:
        held = dict(self._model.named_parameters()).get(name)
        return None if held is None or held.is_meta else held.detach()


def _load(names, slots: _LayerSlots):
    def hook(module, args):
        module._streamed = load_into(module, names, slots.source)

    return hook


def _release(module, args, output):
    release(module.__dict__.pop("_streamed", []))
