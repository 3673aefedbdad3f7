"""The manifest is written and read by the same typed sections (pgexport_runtime/manifest.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from pgexport_runtime import PaliGemma
from pgexport_runtime.manifest import MANIFEST, SCHEMA_VERSION, load_manifest


def test_what_is_written_is_what_is_read(bundles):
    for bundle in bundles.values():
        written = json.loads((bundle / MANIFEST).read_text())
        m = load_manifest(bundle)
        assert written["schema_version"] == SCHEMA_VERSION == m.schema_version
        assert {k: v for k, v in written.items() if k not in ("schema", "schema_version", "files")} == m.to_dict()
        assert m.files == written["files"]


def test_nothing_is_stored_twice(bundles):
    written = json.loads((bundles["tiny-pg2"] / MANIFEST).read_text())
    ids = {k for k in written["geometry"] if k.endswith("_token_id")}
    assert ids == {"image_token_id", "bos_token_id", "eos_token_id", "pad_token_id"}
    assert not any(k.endswith("_id") or k.endswith("_ids") for k in [*written["tokenizer"], *written["generation"]])
    assert set(written["kv_cache"]) == {"layout", "dtype"}  # the KV names are the graphs' I/O lists


def test_a_version_1_bundle_reads_and_answers_alike(bundles, tmp_path):
    """Version 1 stored the special-token ids and stop ids twice and the KV name patterns; it still loads,
    and answers exactly as its version 2 twin."""
    v1 = tmp_path / "v1"
    shutil.copytree(bundles["tiny-pg1"], v1)
    m = json.loads((v1 / MANIFEST).read_text())
    g = m["geometry"]
    m["schema_version"] = 1
    m["tokenizer"] |= {k: g[k] for k in ("image_token_id", "bos_token_id", "eos_token_id", "pad_token_id")}
    m["generation"]["eos_token_ids"] = [g["eos_token_id"]]
    m["kv_cache"] |= {"past": ["past_key_values.{i}.key", "past_key_values.{i}.value"],
                      "present": ["present.{i}.key", "present.{i}.value"]}
    (v1 / MANIFEST).write_text(json.dumps(m))
    image = Image.fromarray((np.random.default_rng(3).random((40, 52, 3)) * 255).astype(np.uint8))
    a = PaliGemma(v1)(image, "caption en", max_new_tokens=8)
    b = PaliGemma(bundles["tiny-pg1"])(image, "caption en", max_new_tokens=8)
    assert load_manifest(v1).schema_version == 1 and a.tokens == b.tokens and len(a.tokens) == 8
