"""Structured answers without a model: the answer grammar, de-binning, masks pasting/RLE and the overlay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pgexport_runtime.answers import bin_to_coord, coord_to_bin, parse_objects
from pgexport_runtime.masks import mask_to_rle, paste_mask, rle_to_mask
from pgexport_runtime.overlay import draw_answer
from pgexport_runtime.typed_answers import Answer, Detection, Segment, to_answer


def loc(*bins: int) -> str:
    return "".join(f"<loc{b:04d}>" for b in bins)


def seg(*codes: int) -> str:
    return "".join(f"<seg{c:03d}>" for c in codes)


# ------------------------------------------------------------------------------------------- grammar


def test_one_object():
    p = parse_objects(loc(0, 0, 1023, 1023) + " cat", width=640, height=480)
    assert p.warnings == ()
    (o,) = p.objects
    assert o.label == "cat" and o.codes is None and o.bins == (0, 0, 1023, 1023)
    assert o.box == (0.0, 0.0, 640.0, 480.0)  # whole image, x1/y1 exclusive edges


def test_several_objects_and_masks():
    codes = tuple(range(100, 116))
    text = f"{loc(100, 200, 300, 400)} red car ; {loc(512, 0, 1023, 511)}{seg(*codes)} dog ; {loc(1, 2, 3, 4)} a b"
    p = parse_objects(text, width=1023, height=2046)
    assert p.warnings == ()
    assert [o.label for o in p.objects] == ["red car", "dog", "a b"]
    car, dog, _ = p.objects
    assert car.box == pytest.approx((200.0, 200.0, 400.0, 600.0))  # x scale 1, y scale 2: separate axes
    assert dog.codes == codes and car.codes is None


@pytest.mark.parametrize("text, n_objects, needle", [
    (loc(1, 2) + " cat", 0, "partial box (2 of 4"),
    (seg(*range(16)) + " cat", 0, "without a complete box"),
    (loc(1, 2, 3, 4) + "<unk> cat", 1, "unknown token <unk>"),
    (loc(1, 2, 3, 4), 1, "missing label"),
    (loc(1, 2, 3, 4) + seg(1, 2, 3) + " cat", 1, "partial mask (3 of 16"),
    (loc(1, 2, 3, 4) + seg(*range(17)) + " cat", 1, "extra <seg016>"),
    (loc(1, 2, 3, 4, 5) + " cat", 1, "extra <loc0005>"),
    (loc(300, 400, 100, 200) + " cat", 1, "out of order"),
    (loc(1, 2, 3, 4) + " cat " + loc(5, 6, 7, 8) + " dog", 2, "without ' ; ' separator"),
    (loc(1, 2, 3, 4) + " cat ; ; " + loc(5, 6, 7, 8) + " dog", 2, "stray ';'"),
    ("cat", 0, "'cat' without a box"),
    (loc(1, 2, 3, 4) + " cat ; " + loc(9), 1, "partial box (1 of 4"),
])
def test_malformed_answers_warn_and_keep_what_parses(text, n_objects, needle):
    p = parse_objects(text, width=100, height=100)
    assert len(p.objects) == n_objects
    assert any(needle in w for w in p.warnings), p.warnings


def test_swapped_corners_are_ordered_and_clamped():
    (o,) = parse_objects(loc(1023, 1023, 0, 0) + " x", width=50, height=70).objects
    assert o.box == (0.0, 0.0, 50.0, 70.0)


def test_plain_text_answers_are_not_objects():
    assert parse_objects("a red circle on a white background.", 10, 10, structured=False).objects == ()
    assert parse_objects("a red circle on a white background.", 10, 10, structured=False).warnings == ()
    assert parse_objects("", 10, 10).warnings == ()


@pytest.mark.parametrize("text", ["<loc", "<<<>>>", ";;;", "<loc12345>" * 3, "<seg>" + seg(1) * 40, "\n\t ;"])
def test_garbage_never_raises(text):
    parse_objects(text, 7, 3)


# ------------------------------------------------------------------------- coordinates vs the generator


def test_debinning_inverts_the_demo_generators_binning():
    from tools.demo_model import generator

    for b in (0, 1, 511, 512, 1022, 1023):
        for size in (128, 480, 1000):
            assert bin_to_coord(b, size) == pytest.approx(b / 1023 * size)  # the /1023 rule
            assert coord_to_bin(bin_to_coord(b, size), size) == b
    for i in range(30):
        ex = generator.make_example(2, 1_000_000 * 4 + i, task="detect")  # held-out detect examples
        S = generator.IMAGE_SIZE
        p = parse_objects(ex.suffix, width=S, height=S)
        assert p.warnings == ()
        assert [o.label for o in p.objects] == [t.kind for t in ex.targets]
        for o, t in zip(p.objects, ex.targets):
            y0, x0, y1, x1 = t.box
            assert o.box == pytest.approx((x0, y0, x1, y1), abs=0.5 * S / 1023)  # within half a bin
            assert tuple(round(v) for v in o.box) == (x0, y0, x1, y1)  # and exactly its pixel edges


def test_boxes_scale_to_the_original_non_square_image():
    from tools.demo_model.generator import box_to_loc

    w, h = 333, 121  # the model sees it squashed to a square; bins are fractions of each side
    box_yx = (10, 200, 100, 333)
    (o,) = parse_objects(box_to_loc(box_yx, h, w) + " star", width=w, height=h).objects
    assert o.box == pytest.approx((200, 10, 333, 100), abs=0.5 * max(w, h) / 1023)


# ----------------------------------------------------------------------------------- masks and RLE


def _big_vision_paste(m64, box_yx, height, width):
    """An independent reference, written row-major as big_vision's evaluator is: whole-pixel (y0, x0, y1, x1)
    box, bilinear resize of the float mask, threshold at 0."""
    from PIL import Image

    y0, x0, y1, x1 = (int(round(v)) for v in box_yx)
    y0, x0 = max(0, min(y0, height)), max(0, min(x0, width))
    y1, x1 = max(y0, min(y1, height)), max(x0, min(x1, width))
    out = np.zeros((height, width), dtype=bool)
    if y1 - y0 >= 1 and x1 - x0 >= 1:
        im = Image.fromarray(m64, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        out[y0:y1, x0:x1] = np.asarray(im) > 0
    return out


def test_paste_mask_matches_big_vision():
    rng = np.random.default_rng(0)
    m64 = rng.normal(0, 1, (64, 64)).astype(np.float32)
    for box_xy in [(3.2, 5.7, 40.1, 90.4), (0, 0, 128, 96), (10, 10, 11, 12), (50, 50, 50, 60)]:
        x0, y0, x1, y1 = box_xy
        ours = paste_mask(m64, box_xy, 128, 96)
        assert ours.shape == (96, 128) and np.array_equal(ours, _big_vision_paste(m64, (y0, x0, y1, x1), 96, 128))
    assert paste_mask(m64, (3.2, 5.7, 40.1, 90.4), 128, 96).any()


def test_rle_round_trip():
    rng = np.random.default_rng(1)
    for mask in [rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)]:
        rle = mask_to_rle(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        assert np.array_equal(rle_to_mask(rle), mask)
    assert mask_to_rle(np.ones((2, 2), bool))["counts"] == [0, 4]  # COCO: runs start with zeros


class _Result:
    def __init__(self, prompt, text):
        self.prompt, self.text, self.tokens = prompt, text, [1, 2]


def test_to_answer_splits_detections_and_segments():
    def decode(codes):  # a fake decoder: the whole box is the object
        return np.ones((len(codes), 64, 64), np.float32)

    text = f"{loc(0, 0, 511, 511)} cat ; {loc(512, 512, 1023, 1023)}{seg(*range(16))} dog"
    a = to_answer(_Result("segment dog", text), 100, 50, decode)
    assert [d.label for d in a.detections] == ["cat"] and [s.label for s in a.segments] == ["dog"]
    (s,) = a.segments
    assert s.mask.shape == (50, 100) and s.mask[30:, 55:].all() and not s.mask[:20].any()
    j = a.to_json()
    assert set(j) >= {"prompt", "text", "tokens", "detections", "segments", "warnings"}
    assert np.array_equal(rle_to_mask(j["segments"][0]["mask"]), s.mask)
    no_decoder = to_answer(_Result("segment dog", text), 100, 50, None)
    assert no_decoder.segments[0].mask is None and any("no mask decoder" in w for w in no_decoder.warnings)


# --------------------------------------------------------------------------------------------- overlay


def test_overlay_size_and_changed_pixels():
    img = Image.new("RGB", (160, 90), (128, 128, 128))
    mask = np.zeros((90, 160), bool)
    mask[50:80, 100:150] = True
    a = Answer("detect cat", "", (), detections=(Detection("cat", (10.0, 10.0, 60.0, 40.0)),),
               segments=(Segment("dog", (100.0, 50.0, 150.0, 80.0), mask),))
    out = draw_answer(img, a)
    assert out.size == img.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(img, np.int16)).sum(-1) > 0
    assert diff[10:40, 10].any() and diff[39, 10:60].any()  # box edges
    assert diff[60:75, 110:140].all()  # semi-transparent mask fill
    assert not diff[85:, :90].any()  # far from every object: untouched


def test_refer_is_parsed_like_detect_and_captions_are_plain_text():
    a = to_answer(_Result("refer the red car", f"{loc(0, 0, 1023, 1023)} the red car"), 10, 20, None)
    assert [d.label for d in a.detections] == ["the red car"] and a.detections[0].box == (0.0, 0.0, 10.0, 20.0)
    plain = to_answer(_Result("caption en", "a red car."), 10, 20, None)
    assert plain.detections == () and plain.segments == () and plain.warnings == ()
    odd = to_answer(_Result("detect car", "no car here"), 10, 20, None)
    assert odd.detections == () and odd.warnings  # a detect answer that is not a box says so
