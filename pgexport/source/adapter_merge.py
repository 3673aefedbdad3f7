"""A streamed model's peft adapter, merged into its weights one module at a time by peft's own merge.

A streamed build (streamed.py) holds no decoder layer outside its forward, so peft's `merge_and_unload`, which
folds the adapter into weights it holds, has nothing to fold it into. Here each adapted module whose base
weights stream is merged when one of its tensors is read: its base tensors are read from the checkpoint,
peft merges the adapter into them (`merge`, whatever the tuner: LoRA, DoRA, LoRA with a bias, ...), and the
merged tensors are what the reader gets; the module then goes back to its meta tensors, unmerged. Modules whose
base weights are held (the projector, resident from the start) are merged by peft in place, as
`merge_and_unload` would. The same arithmetic as merging the whole model: the graphs are byte for byte the same.
"""

from __future__ import annotations

import torch

from pgexport_runtime.errors import UserError

from pgexport.source.weights import ChangedWeights

ADAPTER = "default"  # the name adapters.attach loads the adapter under


def materialize_adapter(peft_model) -> None:
    """peft creates an adapter's tensors on its base layer's device, which for a streamed layer is the meta device,
    and loads nothing into them there: give them memory (then `load_adapter` fills them)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for attr in module.adapter_layer_names:
            layers = getattr(module, attr)
            if ADAPTER not in layers:
                continue
            part = layers[ADAPTER]
            if not isinstance(part, torch.nn.Module):
                raise UserError(f"--stream does not yet support this adapter's {attr} (merge it into the checkpoint "
                                "with peft first)")
            if any(p.is_meta for p in part.parameters()):
                part.to_empty(device="cpu")


def unload(peft_model, names: dict[int, str], source) -> tuple[object, "MergedWeights"]:
    """(the base model with the adapter layers taken out, the weights to read from now on: `source` with the
    adapter merged). names: id(base parameter) -> its checkpoint name (weights.parameter_names before peft)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    streaming: dict[str, tuple[BaseTunerLayer, str]] = {}
    for module in peft_model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        base = module.get_base_layer()
        params = {key: p for key, p in base._parameters.items() if p is not None}
        if not any(p.is_meta for p in params.values()):
            module.merge(adapter_names=[ADAPTER])  # held: peft merges it in place
            continue
        for key, p in params.items():
            streaming[names[id(p)]] = (module, key)
    return peft_model.unload(), MergedWeights(source, streaming)


class MergedWeights(ChangedWeights):
    """A weight source with an adapter merged into the tensors of the modules it adapts."""

    def __init__(self, source, adapted: dict):
        super().__init__(source)
        self._adapted = adapted
        self._last: tuple[object, dict[str, torch.Tensor]] | None = None  # a module's weight and bias: one merge

    def changes(self, name: str) -> bool:
        return name in self._adapted

    def changed(self, name: str) -> torch.Tensor:
        module, key = self._adapted[name]
        return self._merged(module)[key]

    def _merged(self, module) -> dict[str, torch.Tensor]:
        if self._last is not None and self._last[0] is module:
            return self._last[1]
        base = module.get_base_layer()
        metas = {key: p for key, p in base._parameters.items() if p is not None}
        names = {key: name for name, (m, key) in self._adapted.items() if m is module}
        for key, name in names.items():
            base._parameters[key] = torch.nn.Parameter(self._source.get(name), requires_grad=False)
        try:
            module.merge(adapter_names=[ADAPTER])
            merged = {key: base._parameters[key].detach() for key in names}
        finally:
            base._parameters.update(metas)
            module.merged_adapters.clear()  # its base is back on the meta device, unmerged
        self._last = (module, merged)
        return merged
