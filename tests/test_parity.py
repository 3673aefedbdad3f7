"""The bundle is the same model as transformers: logits, greedy tokens, batches with left padding, prefix-LM mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import PROMPTS
from pgexport_runtime import PaliGemma
from pgexport_runtime import decoder
from pgexport_runtime.kv_cache import KVCache

N_TOKENS = 16


@pytest.fixture(scope="module")
def runtime(tiny, bundles):
    return PaliGemma(bundles[tiny.name])


def test_fixture_outputs_are_diverse(tiny, images):
    """Random tiny models at default init repeat one token; ours must not, or parity would prove little."""
    rows = tiny.hf_generate(images, PROMPTS, N_TOKENS)
    for row in rows:
        assert len(row) == N_TOKENS
        assert len(set(row)) >= 6, row
    assert len({tuple(r) for r in rows}) == len(rows)


def test_greedy_batch1_matches_transformers(tiny, runtime, images):
    for image, prompt in zip(images, PROMPTS):
        expected = tiny.hf_generate([image], [prompt], N_TOKENS)[0]
        got = runtime(image, prompt, max_new_tokens=N_TOKENS).tokens
        assert got == expected, prompt


def test_batch_of_3_left_padded_matches_batch_1_and_transformers(tiny, runtime, images):
    expected = tiny.hf_generate(images, PROMPTS, N_TOKENS)
    batch = [r.tokens for r in runtime.generate(images, PROMPTS, max_new_tokens=N_TOKENS)]
    single = [runtime(im, p, max_new_tokens=N_TOKENS).tokens for im, p in zip(images, PROMPTS)]
    assert batch == single
    assert batch == expected


def _prefill_logits(runtime, ids, mask, embeds, token_type_ids):
    g = runtime.geometry
    keep = np.tile(np.arange(ids.shape[1], dtype=np.int64), (ids.shape[0], 1))
    return decoder.prefill(runtime.graphs, g, KVCache(g, ids.shape[0], ids.shape[1]), ids, embeds, mask,
                           token_type_ids, keep)


def test_prefill_logits_match_transformers_with_token_type_ids(tiny, runtime, images):
    inputs = tiny.hf_inputs(images, PROMPTS)
    with torch.no_grad():
        ref = tiny.model(**inputs).logits.numpy()
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    embeds = runtime.image_embeddings(images)
    got = _prefill_logits(runtime, ids, mask, embeds, np.zeros_like(ids))
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() <= 1e-3 * np.abs(ref[real]).max()


def test_prefill_attention_is_not_causal(tiny, runtime, images):
    """The bundle's prefill equals transformers' prefix-LM forward and is far from a causal forward.

    A decoder exported with a causal mask (or with the mask ignored) would match the causal reference.
    """
    inputs = tiny.hf_inputs(images, PROMPTS)
    with torch.no_grad():
        prefix_lm = tiny.model(**inputs).logits.numpy()
        causal = tiny.model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits.numpy()
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    got = _prefill_logits(runtime, ids, mask, runtime.image_embeddings(images), np.zeros_like(ids))
    real = mask.astype(bool)
    scale = np.abs(prefix_lm[real]).max()
    assert np.abs(prefix_lm[real] - causal[real]).max() > 0.05 * scale  # the two references really differ
    assert np.abs(got[real] - prefix_lm[real]).max() < 1e-3 * scale
    assert np.abs(got[real] - causal[real]).max() > 0.05 * scale


def test_teacher_forced_suffix_matches_transformers(tiny, runtime, images):
    """Prefix bidirectional + suffix causal in ONE call (token_type 1 on the suffix), as in training."""
    suffixes = ["a red circle", "blue", "<loc0100><loc0200><loc0300><loc0400> cat"]
    inputs = tiny.hf_inputs(images, PROMPTS, suffixes)
    with torch.no_grad():
        ref = tiny.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.numpy()
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    tt = inputs["token_type_ids"].numpy()
    assert tt.sum() > 0  # there is a causal suffix
    got = _prefill_logits(runtime, ids, mask, runtime.image_embeddings(images), tt)
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() <= 1e-3 * np.abs(ref[real]).max()


def test_build_recorded_parity(tiny, bundles):
    import json

    manifest = json.loads((bundles[tiny.name] / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["ok"] and parity["checks"]["greedy"]["match"]
    assert set(parity["checks"]) >= {"preprocessing", "vision_encoder", "projector", "decoder_prefill", "greedy"}


def test_graphs_carry_onnxruntime_fusions(tiny, bundles):
    """Norms, GELU and rotary embedding are exported as onnxruntime's fused ops (parity above is measured on
    them); the elementwise patterns they replace are gone."""
    from collections import Counter

    import onnx

    def ops(name):
        return Counter(n.op_type for n in onnx.load(str(bundles[tiny.name] / name), load_external_data=False).graph.node)

    dec, vis = ops("decoder.onnx"), ops("vision_encoder.onnx")
    layers = tiny.geometry.text_layers
    norms_per_layer = 4 if tiny.geometry.family == "paligemma2" else 2
    assert dec["SimplifiedLayerNormalization"] + dec["SkipSimplifiedLayerNormalization"] == layers * norms_per_layer + 1
    assert dec["SkipSimplifiedLayerNormalization"] >= layers
    assert dec["FastGelu"] == layers and dec["RotaryEmbedding"] == 2 * layers
    assert dec["Pow"] == 0 and dec["Neg"] == 0 and dec["Reciprocal"] == 0
    if tiny.geometry.attn_softcap is None:  # Gemma 2's soft-capping is a Tanh of its own
        assert dec["Tanh"] == 0
    assert vis["FastGelu"] >= 1 and vis["SkipLayerNormalization"] >= 1 and vis["Pow"] == 0
    # SigLIP's unmasked attention is onnxruntime's MultiHeadAttention, one per layer, no Softmax left
    assert vis["MultiHeadAttention"] == tiny.geometry.vision_layers and vis["Softmax"] == 0


def test_vision_attention_op_is_transformers_attention(tiny):
    """The vision graph's attention op (export/attention.py) against transformers' eager SigLIP attention on
    the tiny model's first layer; exporting leaves the model's own attention setting as it was."""
    from transformers.models.siglip.modeling_siglip import eager_attention_forward

    from pgexport.export.vision import VisionEncoder

    layer = tiny.model.model.vision_tower.encoder.layers[0].self_attn
    gen = torch.Generator().manual_seed(1)
    b, n = 2, 37
    q, k, v = (torch.randn(b, layer.num_heads, n, layer.head_dim, generator=gen) for _ in range(3))
    from pgexport.export.attention import unmasked_attention

    want, _ = eager_attention_forward(layer, q, k, v, None, scaling=layer.scale)
    got, _ = unmasked_attention(layer, q, k, v, None, scaling=layer.scale)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        unmasked_attention(layer, q, k, v, torch.zeros(b, 1, n, n), scaling=layer.scale)

    config = tiny.model.model.vision_tower.config
    before = config._attn_implementation
    VisionEncoder(tiny.model)(torch.zeros(1, 3, tiny.geometry.image_size, tiny.geometry.image_size))
    assert config._attn_implementation == before
