"""Build the frozen Geometry from a Hugging Face PaliGemmaConfig — the only place that reads it."""

from __future__ import annotations

from pgexport_runtime.geometry import Geometry


def geometry_from_config(config) -> Geometry:
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
