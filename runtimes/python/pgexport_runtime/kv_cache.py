"""The KV cache: buffers owned by the caller, allocated once per generation, bound to ORT by pointer.

Layout "concat": the decoder graph maps past_key_values.{i}.* [B, kv_heads, P, head_dim] to present.{i}.*
[B, kv_heads, P+S, head_dim]. Each tensor gets two flat buffers sized for the whole generation. A step reads
the past from one buffer and ORT writes the present straight into the other; then the two swap roles.
Layout "shared": each tensor is one buffer [B, kv_heads, max_len, head_dim], bound as both past and present;
the graph writes this step's rows into it in place (pgexport's export/attention.py), and the cached length
is carried by the attention mask. Layout "static": the same one buffer, of the manifest's fixed length, bound
a batch row at a time (bind_row; static.py). Either way nothing is allocated or concatenated in numpy per step, and on
CUDA the buffers stay on the device.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_layout import CONCAT, KvLayout


class KVCache:
    def __init__(self, g: Geometry, batch: int, max_len: int, device: str = "cpu", device_id: int = 0,
                 layout: KvLayout = CONCAT):
        self.g, self.batch, self.max_len = g, batch, max_len
        self.device, self.device_id = device, device_id
        self.layout = layout
        self.shared = layout.in_place
        self.length = 0  # tokens currently cached
        n = batch * g.num_kv_heads * max_len * g.head_dim
        self._keep = []  # the allocations, kept alive while ORT holds pointers into them
        self._ptr = []  # [tensor][side] base address; tensor = 2*layer + (0 key | 1 value); shared: one side
        for _ in range(2 * g.text_layers):
            sides = []
            for _ in range(layout.buffers):
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
        """Bind the cached past as inputs and the other side as the present outputs of this step (shared: the one
        buffer as both, over its whole length)."""
        if self.length + new_tokens > self.max_len:
            raise RuntimeError(f"KV cache full: {self.length} + {new_tokens} > {self.max_len}")
        past_len, present_len = self.layout.bound_lengths(self.length, new_tokens, self.max_len)
        past, present = (0, 0) if self.shared else (self._side, 1 - self._side)
        for t, (past_name, present_name) in enumerate(self._names()):
            binding.bind_input(past_name, self.device, self.device_id, np.float32,
                               self._shape(past_len), self._ptr[t][past])
            binding.bind_output(present_name, self.device, self.device_id, np.float32,
                                self._shape(present_len), self._ptr[t][present])

    def bind_row(self, binding: ort.IOBinding, row: int) -> None:
        """One batch row's slice of each (one) buffer as both past and present, [1, kv_heads, max_len, head_dim]:
        the static layout's graphs take batch 1."""
        if not self.shared:
            raise RuntimeError("bind_row is for a cache written in place")
        shape = self._shape(self.max_len)
        shape[0] = 1
        offset = row * self.g.num_kv_heads * self.max_len * self.g.head_dim * 4  # float32 bytes
        for t, (past_name, present_name) in enumerate(self._names()):
            ptr = self._ptr[t][0] + offset
            binding.bind_input(past_name, self.device, self.device_id, np.float32, shape, ptr)
            binding.bind_output(present_name, self.device, self.device_id, np.float32, shape, ptr)

    def _names(self) -> list[tuple[str, str]]:
        names = []
        for i in range(self.g.text_layers):
            names += [(io.past_key(i), io.present_key(i)), (io.past_value(i), io.present_value(i))]
        return names

    def advance(self, new_tokens: int) -> None:
        """After a step: the present becomes the past."""
        self.length += new_tokens
        if not self.shared:
            self._side = 1 - self._side
