"""transformers' PaliGemma holding one decoder layer's weights at a time: the PyTorch reference of a build
that streams.

The model is transformers' own (`PaliGemmaForConditionalGeneration`, its forward and `generate`), built on
the meta device. The projector, the embedding table (the tied lm_head) and the final norm are read once and
stay; the vision tower and each decoder layer read their weights from the source when their forward starts
and drop them when it returns (forward hooks). Peak memory is the resident parts plus the vision tower or one
layer, whatever the depth; the price is reading every layer once per forward pass, so references run batched.
"""

from __future__ import annotations

import torch

from .weights import load_into, meta_model, parameter_names, release


def streamed_model(config, source):
    """A PaliGemmaForConditionalGeneration in eval mode whose decoder layers stream from `source`."""
    model = meta_model(config)
    names = parameter_names(model)
    lm = model.model.language_model
    resident = [model.model.multi_modal_projector, lm.embed_tokens, lm.norm]
    if not config.tie_word_embeddings:
        resident.append(model.lm_head)
    for module in resident:
        load_into(module, names, source)
    if config.tie_word_embeddings:
        model.lm_head.weight = lm.embed_tokens.weight  # the table just read, not the meta parameter
    tower = model.model.vision_tower
    tower.register_forward_pre_hook(_load(names, source))
    tower.register_forward_hook(_release)
    slots = _LayerSlots(names, source)
    for layer in lm.layers:
        layer.register_forward_pre_hook(slots.load)
        layer.register_forward_hook(_release)
    return model


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


def drop_table(model) -> None:
    """Once the references are computed: the embedding table (and an untied lm_head) back on the meta device,
    its memory freed for the export steps, which read it again one tensor at a time."""
    lm = model.model.language_model
    for module in (lm.embed_tokens, model.lm_head):
        for key, p in list(module._parameters.items()):
            if p is not None and not p.is_meta:
                module._parameters[key] = torch.nn.Parameter(torch.empty_like(p, device="meta"),
                                                             requires_grad=False)


class ResidentFirst:
    """A weight source for the graphs of a streamed model: the tensors it holds as they are, the rest read
    from `source`, so that exporting never holds a second copy of a tensor the model holds."""

    def __init__(self, model, source):
        self._model, self._source = model, source

    def shapes(self) -> dict:
        return self._source.shapes()

    def get(self, name: str):
        held = dict(self._model.named_parameters()).get(name)
        return held.detach() if held is not None and not held.is_meta else self._source.get(name)


def _load(names, source):
    def hook(module, args):
        module._streamed = load_into(module, names, source)

    return hook


def _release(module, args, output):
    release(module.__dict__.pop("_streamed", []))
