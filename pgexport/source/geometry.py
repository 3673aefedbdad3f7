"""Build the frozen Geometry from a Hugging Face PaliGemmaConfig — the only place that reads it.

Its sizes are bounded first, by the bounds the runtime reads a manifest's geometry with (contract.json): a config
with 0 heads, 10**6 layers or a 10**9-pixel image is refused here, in the build process, naming the config's
own key, before any model is made of it.
"""

from __future__ import annotations

from pgexport_runtime import typed_json
from pgexport_runtime.contract import CONTRACT
from pgexport_runtime.geometry import Geometry

# config.json (vision_config / text_config) key -> the geometry field whose contract bound it has
_BOUNDED = {
    ("vision_config", "image_size"): "image_size", ("vision_config", "patch_size"): "patch_size",
    ("vision_config", "hidden_size"): "vision_hidden", ("vision_config", "num_hidden_layers"): "vision_layers",
    ("vision_config", "num_attention_heads"): "vision_heads",
    ("vision_config", "intermediate_size"): "vision_intermediate",
    ("text_config", "hidden_size"): "text_hidden", ("text_config", "num_hidden_layers"): "text_layers",
    ("text_config", "num_attention_heads"): "num_heads", ("text_config", "num_key_value_heads"): "num_kv_heads",
    ("text_config", "head_dim"): "head_dim", ("text_config", "intermediate_size"): "text_intermediate",
    ("text_config", "vocab_size"): "vocab_size", ("text_config", "max_position_embeddings"): "max_position_embeddings",
}
_BOUNDS = CONTRACT["geometry"]["int_bounds"]


def check_bounds(config) -> None:
    """The config's sizes as integers within the contract's bounds (head_dim may be absent: hidden / heads)."""
    for (section, key), field in _BOUNDED.items():
        value = getattr(getattr(config, section), key, None)
        if value is None and key == "head_dim":
            continue
        lo, hi = _BOUNDS[field]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{section}.{key} must be an integer, not {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{section}.{key} is {value}, outside {lo}..{hi}")


def geometry_from_config(config) -> Geometry:
    check_bounds(config)
    v, t = config.vision_config, config.text_config
    family = {"gemma": "paligemma", "gemma2": "paligemma2"}.get(t.model_type)
    if family is None:
        raise ValueError(f"unsupported text backbone {t.model_type!r} (expected gemma or gemma2)")
    if v.model_type != "siglip_vision_model":
        raise ValueError(f"unsupported vision tower {v.model_type!r} (expected siglip_vision_model)")
    head_dim = t.head_dim or t.hidden_size // t.num_attention_heads
    gemma2 = family == "paligemma2"
    layer_types = getattr(t, "layer_types", None) or ["full_attention"] * t.num_hidden_layers
    sliding = tuple(kind == "sliding_attention" for kind in layer_types) if gemma2 else (False,) * t.num_hidden_layers
    rope = t.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported rope_type {rope.get('rope_type')!r}")
    return Geometry(
        family=family,
        image_size=v.image_size,
        patch_size=v.patch_size,
        num_image_tokens=(v.image_size // v.patch_size) ** 2,
        vision_hidden=v.hidden_size,
        vision_layers=v.num_hidden_layers,
        vision_heads=v.num_attention_heads,
        vision_intermediate=v.intermediate_size,
        text_hidden=t.hidden_size,
        text_layers=t.num_hidden_layers,
        num_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads,
        head_dim=head_dim,
        text_intermediate=t.intermediate_size,
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        rms_norm_eps=float(t.rms_norm_eps),
        attn_scale=float(t.query_pre_attn_scalar) ** -0.5 if gemma2 else head_dim**-0.5,
        attn_softcap=float(t.attn_logit_softcapping) if gemma2 and t.attn_logit_softcapping else None,
        final_softcap=float(t.final_logit_softcapping) if gemma2 and t.final_logit_softcapping else None,
        sliding_window=int(t.sliding_window) if gemma2 and t.sliding_window else None,
        sliding_layers=sliding,
        tie_word_embeddings=bool(config.tie_word_embeddings),
        image_token_id=int(config.image_token_id),
        bos_token_id=int(t.bos_token_id),
        eos_token_id=int(t.eos_token_id) if isinstance(t.eos_token_id, int) else int(t.eos_token_id[0]),
        pad_token_id=int(t.pad_token_id),
    )


def checked_geometry(config) -> Geometry:
    """geometry_from_config, then read back as a manifest's geometry is (derived sizes, special-token ids within
    the vocabulary, heads a multiple of kv heads): what the runtime would refuse, refused before the build."""
    g = geometry_from_config(config)
    try:
        return Geometry.from_dict(g.to_dict())
    except typed_json.FieldError as exc:
        raise ValueError(str(exc)) from None
