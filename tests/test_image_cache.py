"""The image-feature cache: the vision graph runs once per distinct image; answers are the same with it off."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from pgexport_runtime import PaliGemma
from pgexport_runtime.image_cache import ImageCache

PROMPTS = ["caption en", "detect cat ; dog", "answer en what is left of the circle?"]


class _Counting:
    """An InferenceSession stand-in that counts the images it encodes."""

    def __init__(self, session):
        self.session, self.images, self.calls, self.lock = session, 0, 0, threading.Lock()

    def run(self, names, feeds):
        with self.lock:
            self.calls += 1
            self.images += len(next(iter(feeds.values())))
        return self.session.run(names, feeds)


def _counted(pg: PaliGemma) -> _Counting:
    counting = _Counting(pg.graphs.vision)
    pg.graphs = replace(pg.graphs, vision=counting)
    return counting


def test_one_vision_run_for_several_prompts_with_the_same_answers(bundles, images, tmp_path):
    path = tmp_path / "img.png"
    images[1].save(path)
    cached, plain = PaliGemma(bundles["tiny-pg2"]), PaliGemma(bundles["tiny-pg2"], image_cache_bytes=0)
    counted, uncounted = _counted(cached), _counted(plain)
    want = [list(a.tokens) for a in plain.answers([path] * 3, PROMPTS, max_new_tokens=8)]
    got = [list(a.tokens) for a in cached.answers([path] * 3, PROMPTS, max_new_tokens=8)]
    assert got == want and len({tuple(t) for t in want}) > 1  # different prompts, different answers
    assert (counted.images, counted.calls) == (1, 1) and uncounted.images == 3
    again = [cached(images[1], p, max_new_tokens=8).tokens for p in PROMPTS]  # a PIL image, not the path
    assert again == want and counted.images == 1  # the same pixels: served from the cache
    cached(images[0], "caption en", max_new_tokens=4)
    assert counted.images == 2 and (cached.image_cache.hits, cached.image_cache.misses) == (5, 2)


def test_a_batch_encodes_only_what_is_missing(bundles, images):
    pg = PaliGemma(bundles["tiny-pg1"])
    counted = _counted(pg)
    pg.image_embeddings([images[0]])
    both = pg.image_embeddings([images[1], images[0], images[1]])
    assert counted.images == 2  # images[0] once, images[1] once (deduplicated within the batch)
    fresh = PaliGemma(bundles["tiny-pg1"], image_cache_bytes=0).image_embeddings([images[1], images[0], images[1]])
    assert np.array_equal(both, fresh)


def test_the_cache_is_bounded_by_bytes():
    cache = ImageCache(max_bytes=3 * 4 * 10)  # room for three rows of ten float32
    encode = lambda p: p.reshape(len(p), -1)[:, :10].copy()  # noqa: E731
    rows = [np.full((1, 3, 2, 2), float(i), np.float32) for i in range(5)]
    for r in rows:
        cache.embeddings(r, encode)
    assert len(cache._entries) == 3 and cache._bytes <= cache.max_bytes
    cache.embeddings(rows[0], encode)  # evicted first (least recently used): encoded again
    assert cache.misses == 6
    cache.embeddings(rows[4], encode)
    assert cache.misses == 6  # still there
    out = cache.embeddings(rows[4], encode)
    out[:] = -1  # the caller's array is its own: the cached row is untouched
    assert (cache.embeddings(rows[4], encode) == 4).all() and cache.misses == 6


def test_cli_answers_several_prompts_in_order(bundles, images, tmp_path, capsys):
    import json

    from test_cli_errors import run_cli

    path = tmp_path / "img.png"
    images[2].save(path)
    code, out, _ = run_cli(["run", bundles["tiny-pg1"], "--image", path, "--prompt", PROMPTS[0], "--prompt",
                            PROMPTS[1], "--max-new-tokens", "5", "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["prompt"] for r in rows] == PROMPTS[:2]
    pg = PaliGemma(bundles["tiny-pg1"], image_cache_bytes=0)
    assert [r["tokens"] for r in rows] == [pg(path, p, max_new_tokens=5).tokens for p in PROMPTS[:2]]
    code, _, err = run_cli(["run", bundles["tiny-pg1"], "--image", path, "--prompt", "ocr", "--prompt", "ocr",
                            "--overlay", tmp_path / "o.png"], capsys)
    assert code == 2 and "--overlay draws one answer" in err


def test_a_bundle_loaded_in_two_parts_answers_as_one(bundles, images):
    """load="vision" then load="decoder" (the build's gate on a 10B bundle): the same tokens as the whole bundle;
    each part says in one line what it lacks."""
    import pytest

    from pgexport_runtime.errors import UserError

    bundle = bundles["tiny-pg2"]
    whole, vision, dec = PaliGemma(bundle), PaliGemma(bundle, load="vision"), PaliGemma(bundle, load="decoder")
    assert dec.graphs.vision is None and dec.graphs.projector is None and vision.graphs.decoder is None
    want = [whole(im, p, max_new_tokens=8).tokens for im, p in zip(images, PROMPTS)]
    got = [dec.generate([], [p], max_new_tokens=8, image_embeds=vision.image_embeddings([im]))[0].tokens
           for im, p in zip(images, PROMPTS)]
    assert got == want and len({tuple(t) for t in want}) > 1
    with pytest.raises(UserError, match="without the vision encoder"):
        dec(images[0], "caption en")
    with pytest.raises(UserError, match="without the decoder"):
        vision(images[0], "caption en")
    with pytest.raises(UserError, match="unknown load"):
        PaliGemma(bundle, load="half")


def test_a_row_answers_as_it_would_alone(demo_bundles):
    """The int4 recipe's vision encoder quantizes activations with one scale per call (dynamic int8): encoded
    together, images changed each other's embeddings (1.5 % on the demo model; 5 of 40 held-out answers differed
    batched by 4). The runtime encodes each image on its own, so a batch answers as its rows would alone."""
    from pgexport.verify import image_prompts

    pg = PaliGemma(demo_bundles["int4"], image_cache_bytes=0)
    rows = list(image_prompts.read(image_prompts.DEMO_SET, "eval", limit=8))
    images = [r.image for r in rows]
    alone = np.concatenate([pg.image_embeddings([im]) for im in images])
    assert np.array_equal(pg.image_embeddings(images), alone)
    tokens = max(r.max_new_tokens for r in rows)
    batched = [r.tokens for r in pg.generate(images, [r.prompt for r in rows], max_new_tokens=tokens)]
    assert batched == [pg(r.image, r.prompt, max_new_tokens=tokens).tokens for r in rows]
