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


def test_batch1_prefill_logits_match_transformers(tiny, runtime, images):
    """A batch-1 prefix masks no key: the decoder's unmasked attention path (MultiHeadAttention, below)."""
    for image, prompt in zip(images, PROMPTS):
        inputs = tiny.hf_inputs([image], [prompt])
        with torch.no_grad():
            ref = tiny.model(**inputs).logits.numpy()
        ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
        assert mask.all()
        got = _prefill_logits(runtime, ids, mask, runtime.image_embeddings([image]), np.zeros_like(ids))
        assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max(), prompt


def test_decoder_attention_paths(tiny, bundles):
    """Each layer's attention is an If on the bias: onnxruntime's MultiHeadAttention when it masks nothing, the
    scores whole (MatMul, Softmax) otherwise. Gemma 2's soft-cap has no place in MultiHeadAttention, so its
    graph has the masked path only."""
    import onnx

    graph = onnx.load(str(bundles[tiny.name] / "decoder.onnx"), load_external_data=False).graph
    branches = [n for n in graph.node if n.op_type == "If"]
    if tiny.geometry.attn_softcap is not None:
        assert branches == []
        assert sum(n.op_type == "Softmax" for n in graph.node) == tiny.geometry.text_layers
        return
    assert len(branches) == tiny.geometry.text_layers
    for node in branches:
        then, other = ({a.name: a.g for a in node.attribute}[k] for k in ("then_branch", "else_branch"))
        assert [n.op_type for n in then.node].count("MultiHeadAttention") == 1
        assert "Softmax" not in [n.op_type for n in then.node]
        assert "MultiHeadAttention" not in [n.op_type for n in other.node]
        assert "Softmax" in [n.op_type for n in other.node]


def test_graphs_carry_no_stack_traces(tiny, bundles):
    """No node keeps the exporter's record of the Python stack that made it: the building machine's paths."""
    from pathlib import Path

    import pgexport

    source = str(Path(pgexport.__file__).resolve().parent).encode()
    for path in sorted(bundles[tiny.name].glob("*.onnx")):
        data = path.read_bytes()
        assert b"pkg.torch.onnx.name_scopes" in data  # the exporter's other records stay (quantization reads them)
        assert b"stack_trace" not in data and source not in data, path.name


def test_unmasked_calls_run_multi_head_attention(tiny, bundles, images, tmp_path):
    """onnxruntime's profile of the decoder: a batch-1 generation runs MultiHeadAttention in every layer of the
    prefill and Softmax in each decode step (Gemma 2: Softmax always); a left-padded batch runs Softmax only."""
    import json

    from pgexport_runtime import SessionConfig


    def ops_run(batch_images, prompts):
        pg = PaliGemma(bundles[tiny.name], SessionConfig(profile_prefix=str(tmp_path / f"p{len(prompts)}")))
        pg.generate(batch_images, prompts, max_new_tokens=4)
        events = json.loads(open(pg.graphs.decoder.end_profiling()).read())
        names = [e["args"].get("op_name") for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        return names.count("MultiHeadAttention"), names.count("Softmax")

    layers = tiny.geometry.text_layers
    unmasked = (layers, 3 * layers) if tiny.geometry.attn_softcap is None else (0, 4 * layers)  # Gemma 2: masked
    assert ops_run(images[:1], PROMPTS[:1]) == unmasked  # the prefill, then 3 decode steps
    mha, softmax = ops_run(images[:2], PROMPTS[:2])  # prompts of two lengths: the shorter is left-padded
    assert mha == 0 and softmax == 4 * layers


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
