"""The model geometry: every size and id the graphs and the runtime depend on, in one frozen object.

The exporter builds it once from the Hugging Face config (pgexport.geometry); the bundle stores it in
manifest.json; the runtime rebuilds it from there. Nothing downstream inspects a config again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Geometry:
    family: str  # "paligemma" (Gemma backbone) or "paligemma2" (Gemma 2 backbone)
    # vision tower (SigLIP)
    image_size: int
    patch_size: int
    num_image_tokens: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    # text decoder (Gemma / Gemma 2)
    text_hidden: int
    text_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    text_intermediate: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    attn_scale: float  # multiplier of q.k (head_dim**-0.5, or query_pre_attn_scalar**-0.5 in Gemma 2)
    attn_softcap: float | None  # Gemma 2 attention-logit soft-capping
    final_softcap: float | None  # Gemma 2 final-logit soft-capping
    sliding_window: int | None
    sliding_layers: tuple[bool, ...]  # per layer: True if it uses the sliding window
    tie_word_embeddings: bool
    # special tokens
    image_token_id: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sliding_layers"] = list(self.sliding_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        names = {f.name for f in fields(cls)}
        missing = names - d.keys()
        if missing:
            raise ValueError(f"geometry is missing fields: {sorted(missing)}")
        # fields may be appended in later schema versions: ignore what this version does not know
        kwargs = {k: d[k] for k in names}
        kwargs["sliding_layers"] = tuple(bool(x) for x in d["sliding_layers"])
        return cls(**kwargs)

    @property
    def kv_shape_tail(self) -> tuple[int, int]:
        """(kv heads, head dim): a past/present tensor is [batch, kv_heads, length, head_dim]."""
        return self.num_kv_heads, self.head_dim
