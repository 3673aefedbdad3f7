"""How a decoder graph takes its KV cache: one small typed object per layout, from contract.json.

- "concat": past [B, kv_heads, P, D] in, present [B, kv_heads, P + S, D] out, a second buffer every step.
- "shared": past and present are one buffer [B, kv_heads, max_len, D] that the graph's GroupQueryAttention
  writes in place; the cached length is carried by the attention mask.
- "static": the same one buffer, of the manifest's fixed length, and every graph of fixed shape (batch 1,
  a prefill graph per prefix length; static.py).

The exporter builds the graph from it, the runtimes' loaders bind the cache by it, and the CLI offers its names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgexport_runtime.contract import CONTRACT


@dataclass(frozen=True)
class KvLayout:
    name: str
    in_place: bool  # past and present are one buffer the graph writes its new rows into
    fixed_shape: bool  # every shape fixed: one cache length, batch 1, prefixes padded to a prefill graph's length
    javascript: bool  # the JavaScript runtime reads bundles of this layout
    words: str  # what `inspect` says of it ({max_len} and {lengths} filled in for a fixed-shape layout)

    def __str__(self) -> str:
        return self.name

    @property
    def buffers(self) -> int:
        """Buffers per cached tensor: one written in place, or two that swap past and present roles."""
        return 1 if self.in_place else 2

    def bound_lengths(self, cached: int, new_tokens: int, max_len: int) -> tuple[int, int]:
        """The (past, present) lengths bound for a step of `new_tokens` after `cached` tokens."""
        if self.in_place:
            return max_len, max_len
        return cached, cached + new_tokens

    def room(self, max_new_tokens: int, prefix: int, max_len: int) -> int:
        """max_new_tokens within what a fixed-length cache holds after a prefix of `prefix` tokens (the last
        token chosen is never fed back); any other layout's cache is sized to the request."""
        if not self.fixed_shape:
            return max_new_tokens
        return max(1, min(max_new_tokens, max_len - prefix + 1))

    def describe(self, max_len: int | None = None, lengths: tuple[int, ...] = ()) -> str:
        return self.words.format(max_len=max_len, lengths=" or ".join(map(str, lengths)))


LAYOUTS: dict[str, KvLayout] = {name: KvLayout(name, **spec) for name, spec in CONTRACT["kv_layouts"].items()}
CONCAT, SHARED, STATIC = LAYOUTS["concat"], LAYOUTS["shared"], LAYOUTS["static"]
