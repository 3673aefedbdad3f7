"""The KV cache: buffers owned by the caller, allocated once per generation, bound to ORT by pointer.

The decoder graph maps past_key_values.{i}.* [B, kv_heads, P, head_dim] to present.{i}.* [B, kv_heads,
P+S, head_dim]. Each tensor gets two flat buffers sized for the whole generation. A step reads the past
from one buffer and ORT writes the present straight into the other; then the two swap roles. Nothing is
allocated or concatenated in numpy per step, and on CUDA the buffers stay on the device.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from . import io_names as io
from .geometry import Geometry


class KVCache:
    def __init__(self, g: Geometry, batch: int, max_len: int, device: str = "cpu", device_id: int = 0):
        self.g, self.batch, self.max_len = g, batch, max_len
        self.device, self.device_id = device, device_id
        self.length = 0  # tokens currently cached
        n = batch * g.num_kv_heads * max_len * g.head_dim
        self._keep = []  # the allocations, kept alive while ORT holds pointers into them
        self._ptr = []  # [tensor][side] base address; tensor = 2*layer + (0 key | 1 value)
        for _ in range(2 * g.text_layers):
            sides = []
            for _ in range(2):
                if device == "cpu":
                    buf = np.empty(n, dtype=np.float32)
                    sides.append(buf.ctypes.data)
                else:
                    buf = ort.OrtValue.ortvalue_from_shape_and_type([n], np.float32, device, device_id)
                    sides.append(buf.data_ptr())
                self._keep.append(buf)
            self._ptr.append(sides)
        self._side = 0  # which side holds the past

    def _shape(self, length: int) -> list[int]:
        return [self.batch, self.g.num_kv_heads, length, self.g.head_dim]

    def bind(self, binding: ort.IOBinding, new_tokens: int) -> None:
        """Bind the cached past as inputs and the other side as the present outputs of this step."""
        if self.length + new_tokens > self.max_len:
            raise RuntimeError(f"KV cache full: {self.length} + {new_tokens} > {self.max_len}")
        past, present = self._side, 1 - self._side
        names = []
        for i in range(self.g.text_layers):
            names += [(io.past_key(i), io.present_key(i)), (io.past_value(i), io.present_value(i))]
        for t, (past_name, present_name) in enumerate(names):
            binding.bind_input(past_name, self.device, self.device_id, np.float32,
                               self._shape(self.length), self._ptr[t][past])
            binding.bind_output(present_name, self.device, self.device_id, np.float32,
                                self._shape(self.length + new_tokens), self._ptr[t][present])

    def advance(self, new_tokens: int) -> None:
        """After a step: the present becomes the past."""
        self.length += new_tokens
        self._side = 1 - self._side
