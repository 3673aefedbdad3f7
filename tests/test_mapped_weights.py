"""Giving back the resident pages of mmapped weight files (pgexport_runtime/mapped.py) changes no output."""

from __future__ import annotations

import json
import mmap
import shutil
import sys

import numpy as np
import onnx
import pytest

from pgexport_runtime import PaliGemma, SessionConfig
from pgexport_runtime.manifest import sha256_file
from pgexport_runtime.mapped import release_mapped_pages, released_while

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise on /proc/self/smaps: Linux")


def _rss_of(path) -> int:
    from pgexport_runtime.mapped import _mappings

    return sum(m["rss"] for m in _mappings() if m["path"] == str(path))


def test_release_keeps_written_copy_on_write_pages(tmp_path):
    """A private mapping with a page written by the process is never released (that page would be lost)."""
    path = tmp_path / "w.data"
    path.write_bytes(bytes(range(256)) * 64)
    with open(path, "r+b") as f:
        written = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private copy-on-write
        written[0] = 255
        assert release_mapped_pages([path]) == 0
        assert written[0] == 255 and written[1] == 1
        written.close()
    with open(path, "rb") as f:
        clean = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert clean[4095] == 255  # touch every page: resident, unmodified
        _ = bytes(clean[:])
        assert _rss_of(path) > 0
        assert release_mapped_pages([path]) > 0
        assert _rss_of(path) == 0
        assert bytes(clean[:256]) == bytes(range(256))  # faults back in from the file
        clean.close()


def test_pages_are_reclaimed_while_a_block_runs_and_read_back_unchanged(tmp_path):
    """released_while: pages read inside the block leave the resident set before it ends (MADV_PAGEOUT, what a
    graph's load uses while onnxruntime maps and unmaps), and read back from the file unchanged."""
    import time

    path = tmp_path / "w.data"
    data = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with released_while([path], period=0.01):
            assert bytes(view[:]) == data
            deadline = time.time() + 5
            while _rss_of(path) > 0 and time.time() < deadline:
                time.sleep(0.01)
            assert _rss_of(path) == 0
        assert bytes(view[:]) == data and _rss_of(path) > 0
        view.close()


def test_int4_bundle_with_external_weights_gives_the_same_outputs_in_less_memory(bundles, images, tmp_path):
    """The tiny bundle quantized to int4 and rewritten with external-data weights, as a 3B bundle is: the
    lm_head's prepacking reads the shared 4-bit table at load, the release gives those pages back, and tokens
    and image embeddings are identical with and without it."""
    from pgexport.quant.apply import quantize_graphs
    from pgexport.quant.recipes import RECIPES

    bundle = tmp_path / "ext"
    shutil.copytree(bundles["tiny-pg2"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = ("vision_encoder", "projector", "decoder")
    quantize_graphs({n: bundle / manifest["graphs"][n]["file"] for n in names}, RECIPES["int4-rtn-b32"])
    for entry in manifest["graphs"].values():
        path = bundle / entry["file"]
        data = entry["file"] + ".data"
        onnx.save(onnx.load(path), path, save_as_external_data=True, location=data, size_threshold=4096)
        entry["data_files"] = [data]
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(bundle.iterdir()) if p.name != "manifest.json"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    def run(release: bool):
        pg = PaliGemma(bundle, SessionConfig(release_mapped_weights=release))
        resident = sum(_rss_of(bundle / e.data_files[0]) for e in pg.manifest.graphs.values())
        out = pg.generate(images[:2], ["caption en", "detect cat ; dog"], max_new_tokens=8)
        return [r.tokens for r in out], pg.image_embeddings(images[:1]), resident

    tokens_on, embeds_on, resident_on = run(True)
    tokens_off, embeds_off, resident_off = run(False)
    assert tokens_on == tokens_off and len(set(tokens_on[0])) > 1
    assert np.array_equal(embeds_on, embeds_off)
    assert resident_off > 0 and resident_on < resident_off
