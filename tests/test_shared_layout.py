"""The "shared" KV-cache layout: one buffer per layer's keys and values, bound as both past and
present, written in place by onnxruntime's GroupQueryAttention (pgexport/export/attention.py).

The oracle is the "concat" bundle of the same model (the `bundles` fixture), whose decoder is parity-checked
against transformers at every build: the shared bundle must give its logits and its tokens, on a left-padded
batch, and the runtime's one buffer must hold what the concat graph returns as present."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

from conftest import PROMPTS

from pgexport_runtime import PaliGemma, decoder
from pgexport_runtime.describe import describe
from pgexport_runtime.errors import UserError


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    from pgexport.build.bundle_steps import BuildOptions, build

    root = tmp_path_factory.mktemp("shared")
    return {name: build(BuildOptions(model=name, out=root / name, kv_cache="shared", parity_tokens=8))
            for name in ("tiny-pg1", "tiny-pg2")}


@pytest.mark.parametrize("name", ["tiny-pg1", "tiny-pg2"])
def test_shared_layout_answers_as_the_concat_bundle(name, shared, bundles, images):
    manifest = json.loads((shared[name] / "manifest.json").read_text())
    assert manifest["kv_cache"]["layout"] == "shared" and manifest["parity"]["ok"]
    ops = Counter(n.op_type for n in ir.load(shared[name] / "decoder.onnx").graph)
    g = PaliGemma(shared[name]).geometry
    assert ops["GroupQueryAttention"] == g.text_layers and ops["Softmax"] == 0

    want, got = PaliGemma(bundles[name]), PaliGemma(shared[name])
    assert "kv cache shared (one buffer, written in place), float32" in describe(got.manifest)
    assert "kv cache concat (present = past + new tokens, a second buffer), float32" in describe(want.manifest)
    prompts = list(PROMPTS)
    a = [r.tokens for r in want.generate(images, prompts, max_new_tokens=16)]
    b = [r.tokens for r in got.generate(images, prompts, max_new_tokens=16)]
    assert a == b and any(len(set(row)) >= 4 for row in a), a

    # one prefill of the padded batch: the same logits, and the one buffer holds the concat graph's present
    ids, mask = _batch(want, prompts)
    embeds = want.image_embeddings(images)
    caches = {}
    logits = {}
    for key, pg in (("concat", want), ("shared", got)):
        caches[key] = pg.graphs.kv_cache(g, ids.shape[0], ids.shape[1] + 4)
        logits[key] = decoder.prefill(pg.graphs, g, caches[key], ids, embeds, mask)
    rel = np.abs(logits["shared"] - logits["concat"]).max() / np.abs(logits["concat"]).max()
    assert rel < 1e-5, rel
    assert caches["shared"].shared and len(caches["shared"]._keep) == 2 * g.text_layers  # one buffer each
    n = ids.shape[1]
    concat = _buffer(caches["concat"], 0, caches["concat"]._side, n)  # after the step: the present's side
    in_place = _buffer(caches["shared"], 0, 0, caches["shared"].max_len)[:, :, :n]
    assert np.allclose(in_place, concat, rtol=1e-5, atol=1e-6)


def _batch(pg, prompts):
    rows = [pg.tokenizer.prefix_ids(p) for p in prompts]
    width = max(len(r) for r in rows)
    ids = np.array([[pg.geometry.pad_token_id] * (width - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    return ids, mask


def _buffer(cache, tensor: int, side: int, length: int) -> np.ndarray:
    """Layer 0's keys as a [B, kv_heads, length, D] view of the cache's buffer on `side`."""
    flat = cache._keep[tensor * (1 if cache.shared else 2) + side]
    return flat[: cache.batch * cache.g.num_kv_heads * length * cache.g.head_dim].reshape(
        cache.batch, cache.g.num_kv_heads, length, cache.g.head_dim)


def test_an_unknown_kv_layout_is_one_line():
    from pgexport.build.plan import BuildOptions, Plan

    with pytest.raises(UserError, match=r"^unknown --kv-cache 'paged' \(use one of concat, shared, static\)"):
        Plan.of(BuildOptions(model="tiny-pg1", kv_cache="paged"))


def test_shared_layout_on_cuda_is_refused_at_load(shared):
    """onnxruntime's CUDA GroupQueryAttention refuses the attention bias that carries the prefix-LM mask: one
    line when the bundle is loaded for CUDA, not an onnxruntime error at the first decoder run. A load of the
    vision half alone has no decoder and is not refused."""
    from pgexport_runtime import SessionConfig

    with pytest.raises(UserError, match="runs on the CPU only .* --kv-cache concat"):
        PaliGemma(shared["tiny-pg1"], SessionConfig(device="cuda"))
    PaliGemma(shared["tiny-pg1"], SessionConfig(device="cpu"))
