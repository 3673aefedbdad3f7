"""The model geometry: every size and id the graphs and the runtime depend on, in one frozen object.

The exporter builds it once from the Hugging Face config (pgexport.source.geometry); the bundle stores it in
manifest.json; the runtime rebuilds it from there. Nothing downstream inspects a config again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pgexport_runtime import typed_json
from pgexport_runtime.contract import CONTRACT

FAMILIES = CONTRACT["geometry"]["families"]


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
        """Read and bound-check a manifest's geometry (typed_json.FieldError, a BundleError, on anything odd).

        The bounds are far above any PaliGemma (3B: 2048 hidden, 26 layers, 257k vocab, 8192 positions) and
        exist so that a tampered manifest cannot size a KV cache or a logits buffer by a garbage number.
        """
        w = "geometry"
        if not isinstance(d, dict):
            raise typed_json.FieldError(f"{w} must be an object")
        v: dict = {name: typed_json.integer(d, name, w, lo, hi) for name, (lo, hi) in _INT_BOUNDS.items()}
        v["family"] = typed_json.text(d, "family", w, choices=FAMILIES)
        for name, (lo, hi) in _FLOAT_BOUNDS.items():
            v[name] = typed_json.number(d, name, w, lo, hi, optional=name in _OPTIONAL)
        v["sliding_window"] = typed_json.integer(d, "sliding_window", w, 1, _MAX_POSITIONS, optional=True)
        v["sliding_layers"] = typed_json.flags(d, "sliding_layers", w, v["text_layers"])
        v["tie_word_embeddings"] = typed_json.flag(d, "tie_word_embeddings", w)
        for name in ("image_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            v[name] = typed_json.integer(d, name, w, 0, v["vocab_size"] - 1)
        if v["num_heads"] % v["num_kv_heads"]:
            raise typed_json.FieldError(f"{w}: num_heads {v['num_heads']} is not a multiple of num_kv_heads "
                                    f"{v['num_kv_heads']}")
        # fields may be appended in later schema versions: what this version does not know is ignored
        return cls(**v)

    @property
    def kv_shape_tail(self) -> tuple[int, int]:
        """(kv heads, head dim): a past/present tensor is [batch, kv_heads, length, head_dim]."""
        return self.num_kv_heads, self.head_dim


_INT_BOUNDS = {name: tuple(b) for name, b in CONTRACT["geometry"]["int_bounds"].items()}  # (lo, hi), inclusive
_MAX_POSITIONS = _INT_BOUNDS["max_position_embeddings"][1]
_FLOAT_BOUNDS = {"rope_theta": (0, 1e12), "rms_norm_eps": (0, 1), "attn_scale": (0, 1e3),
                 "attn_softcap": (0, 1e6), "final_softcap": (0, 1e6)}
_OPTIONAL = ("attn_softcap", "final_softcap")  # null in Gemma 1
