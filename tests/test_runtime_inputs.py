"""Runtime hardening through the Python API: the bounds the CLI shares (limits.py), image decoding, the manifest
loader (with a fuzz test), atomic overlays, answer warnings (with a fuzz test), threads and memory.
The same mistakes through the CLI are the catalogue (tests/catalogue.py)."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pgexport_runtime import BundleError, PaliGemma, Sampling, SessionConfig, UserError, load_manifest
from pgexport_runtime import limits
from pgexport_runtime.answers import TASK_PREFIXES, collapse, parse_objects, task_warning
from pgexport_runtime.errors import LimitError
from pgexport_runtime.images import as_image, load_image
from pgexport_runtime.manifest import Generation, MANIFEST
from pgexport_runtime.overlay import save_overlay
from pgexport_runtime.preprocess import Preprocessing, to_rgb
from pgexport_runtime.typed_answers import Answer, Detection, to_answer

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pg(bundles):
    return PaliGemma(bundles["tiny-pg1"], SessionConfig(intra_op_threads=1))


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))


def header_only_png(path, width: int, height: int) -> None:
    """A few dozen bytes whose header claims width x height pixels (the decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------- request bounds


def test_no_prompts_no_results(pg):
    assert pg.generate([], []) == []
    assert pg.answers([], []) == []


def test_max_new_tokens_zero_is_refused_not_the_default(pg, image):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(LimitError, match="max_new_tokens must be an integer >= 1"):
            pg(image, "caption en", max_new_tokens=bad)
    assert len(pg(image, "caption en", max_new_tokens=1).tokens) == 1
    assert pg.manifest.generation == Generation(64)  # None means this default


def test_positions_bound_is_checked_before_any_work(pg, image):
    long = "caption en " + "x " * 9000
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="the model's limit of 8192 positions"):
        pg(image, long)
    assert time.perf_counter() - t0 < 2.0  # refused after tokenizing, before the vision encoder
    with pytest.raises(LimitError, match="max_new_tokens is 8190"):
        pg(image, "caption en", max_new_tokens=8190)  # 16 image + 4 text + 8190 > 8192
    assert isinstance(LimitError("x"), ValueError) and isinstance(LimitError("x"), UserError)


def test_top_k_is_bounded_by_the_vocabulary(pg, image):
    with pytest.raises(LimitError, match="vocabulary of 1728"):
        pg(image, "caption en", sampling=Sampling(do_sample=True, top_k=1729))
    pg(image, "caption en", max_new_tokens=2, sampling=Sampling(do_sample=True, top_k=1728, seed=0))


@pytest.mark.parametrize("kwargs", [
    {"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": -1.0}, {"temperature": 0.0},
    {"top_p": float("nan")}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"top_k": 2.0},
    {"seed": -5}, {"seed": 2**64}, {"seed": 1.5}, {"do_sample": "yes"},
])
def test_sampling_refuses_non_finite_and_out_of_range(kwargs):
    with pytest.raises(LimitError):
        Sampling(**kwargs)


def test_threads_are_bounded_before_a_session_exists():
    assert 1 <= limits.max_threads() <= limits.MAX_THREADS
    for bad in (-1, limits.max_threads() + 1, 100_000, 1.0):
        with pytest.raises(LimitError, match="out of range"):
            SessionConfig(intra_op_threads=bad)
        with pytest.raises(LimitError):
            SessionConfig(inter_op_threads=bad)
    SessionConfig(intra_op_threads=limits.max_threads(), inter_op_threads=0)


@pytest.mark.parametrize("stops, needle", [([""], "stop string 1 is empty"), ("abc", "a list of strings"),
                                           (["ok", "\udcff"], "stop string 2 is not valid UTF-8")])
def test_stop_strings(pg, image, stops, needle):
    with pytest.raises(LimitError, match=needle):
        pg(image, "caption en", stop_strings=stops)


@pytest.mark.parametrize("prompt, needle", [("caption \udcff", "not valid UTF-8"), (None, "must be a string"),
                                            ("  \n", "empty prompt"), ("x" * 1_000_001, "1,000,000")])
def test_prompts(pg, image, prompt, needle):
    with pytest.raises(UserError, match=needle):
        pg(image, prompt)


def test_lists_are_required(pg, image):
    with pytest.raises(UserError, match="takes lists"):
        pg.generate(image, "caption en")
    with pytest.raises(UserError, match="one image per prompt"):
        pg.generate([image, image], ["caption en"])


# ------------------------------------------------------------------------------------------- images


def test_numpy_images(pg, image):
    rgb = np.asarray(image)
    assert pg(rgb, "caption en", max_new_tokens=4).tokens == pg(image, "caption en", max_new_tokens=4).tokens
    assert as_image(rgb[..., 0]).mode == "L" and as_image(np.dstack([rgb, rgb[..., :1]])).mode == "RGBA"
    for bad in (rgb.astype(np.float32), rgb.transpose(2, 0, 1), rgb[None], rgb[..., :2]):
        with pytest.raises(UserError, match="a numpy image must be uint8"):
            pg(bad, "caption en")
    with pytest.raises(UserError, match="a file path, a PIL image or a uint8 numpy array"):
        pg(b"not an image", "caption en")


def test_pixel_limit_is_checked_from_the_header(tmp_path, bundles, image):
    bomb = tmp_path / "bomb.png"
    header_only_png(bomb, 20000, 20000)  # 400 million pixels in 70 bytes
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="over the limit of 89,478,485 pixels"):
        load_image(bomb)
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded
    small = PaliGemma(bundles["tiny-pg1"], max_image_pixels=1000)  # 50 x 40 = 2000 pixels
    for given_as in (image, np.asarray(image)):
        with pytest.raises(LimitError, match="2,000 pixels, more than the limit of 1,000"):
            small.answer(given_as, "caption en")
    with pytest.raises(LimitError, match="positive integer"):
        PaliGemma(bundles["tiny-pg1"], max_image_pixels=0)


def test_raising_the_limit_raises_pillows_own(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    big = tmp_path / "big.png"
    header_only_png(big, 14000, 14000)  # 196 M: over Pillow's own hard limit (2 x 89.5 M)
    with pytest.raises(LimitError):
        load_image(big)
    with pytest.raises(UserError, match="cannot read image"):  # allowed: the (empty) data is what fails now
        load_image(big, max_pixels=200_000_000)
    assert Image.MAX_IMAGE_PIXELS == 200_000_000


def test_sixteen_bit_and_unconvertible_modes():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    assert np.asarray(to_rgb(Image.fromarray(values)))[0, :, 0].tolist() == [0, 1, 128, 255]
    big_endian = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    assert np.asarray(to_rgb(big_endian))[0, :, 0].tolist() == [0, 1, 128, 255]
    with pytest.raises(UserError, match="mode La"):
        to_rgb(Image.new("La", (2, 2)))


def test_exif_orientation_gives_upright_images_to_the_model(pg, tmp_path, image):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif)
    (upright,) = pg.images([path])
    assert upright.size == (40, 50)
    with Image.open(path) as opened:
        a = pg.answer(opened, "detect cat", max_new_tokens=8)
    assert all(0 <= d.box[2] <= 40 and 0 <= d.box[3] <= 50 for d in a.detections)  # boxes on the upright image


# ------------------------------------------------------------------------------------ manifest loader


def test_typed_sections(bundles):
    m = load_manifest(bundles["tiny-pg1"])
    assert isinstance(m.preprocessing, Preprocessing) and m.preprocessing.size == (32, 32)
    assert m.tokenizer.file == "tokenizer.json" and m.tokenizer_file.is_file()
    assert set(m.files) >= {"decoder.onnx", "tokenizer.json"}


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundles["tiny-pg1"], dst)
    return dst


def test_symlinks_are_refused_even_without_verify(bundle_copy, tmp_path):
    outside = tmp_path / "decoder.onnx"
    shutil.move(bundle_copy / "decoder.onnx", outside)
    (bundle_copy / "decoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="decoder.onnx is a symbolic link"):
        load_manifest(bundle_copy, verify=False)


def test_names_are_checked_before_any_file_is_opened(bundle_copy, monkeypatch):
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["files"]["../../../etc/shadow"] = "0" * 64
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    opened = []
    monkeypatch.setattr("pgexport_runtime.manifest.sha256_file", lambda p, *a: opened.append(p))
    with pytest.raises(BundleError, match="not a plain file name"):
        load_manifest(bundle_copy)
    assert opened == []


def test_geometry_that_disagrees_with_the_graphs_is_a_bundle_error(bundle_copy):
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["geometry"]["num_kv_heads"] = 2  # 4 heads: still a valid geometry, but not these graphs'
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="on axis 1 where the manifest says 2"):
        PaliGemma(bundle_copy)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.sampled_from(["../x", "/etc/passwd", "a/b", ".", "..", "", "decoder.onnx", "0" * 64]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@pytest.fixture(scope="module")
def fuzz_bundle(bundles, tmp_path_factory):
    dst = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(bundles["tiny-pg1"], dst)
    return dst, json.loads((dst / MANIFEST).read_text())


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_loader_raises_only_bundle_errors(fuzz_bundle, data):
    root, original = fuzz_bundle
    m = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(m), key=repr)))
        if not path:
            m = data.draw(JSON_VALUES)
            break
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    (root / MANIFEST).write_text(json.dumps(m))
    try:
        load_manifest(root)
    except BundleError as exc:
        assert "\n" not in str(exc)  # printed as one line by the CLI
    finally:
        (root / MANIFEST).write_text(json.dumps(original))


# ------------------------------------------------------------------------------------------- overlay


def test_overlay_write_is_atomic(tmp_path, image, monkeypatch):
    answer = Answer("detect cat", "", (), detections=(Detection("cat", (1.0, 1.0, 20.0, 20.0)),))
    target = tmp_path / "out.png"
    target.write_bytes(b"the previous overlay")

    def full_disk(self, fp, format=None, **kw):
        fp.write(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", full_disk)
        with pytest.raises(UserError, match="cannot write .*No space left on device"):
            save_overlay(image, answer, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left
    assert target.read_bytes() == b"the previous overlay"  # and the old file untouched
    save_overlay(image, answer, target)
    with Image.open(target) as written:
        assert written.size == image.size and written.format == "PNG"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


# ------------------------------------------------------------------------------------------- answers


def test_repeated_warnings_collapse_into_one_counted_line():
    text = " ; ".join(["cat"] * 50) + " ; <loc0001><loc0002><loc0003><loc0004>" + "<loc0005>" * 7 + " dog"
    warnings = parse_objects(text, 100, 100).warnings
    assert warnings == ("50 objects (0..49): 'cat' without a box; ignored (50 times)",
                        "object 50: extra <locNNNN> ignored (7 times)")
    assert collapse(["a", "b", "a"]) == ("a (2 times)", "b")


def test_unknown_task_prefix_is_one_warning_and_still_answered(pg, image):
    for known in TASK_PREFIXES:
        assert task_warning(f"{known} en something") is None
    w = task_warning("translate this")
    assert "'translate'" in w and all(p in w for p in TASK_PREFIXES)
    a = pg.answer(image, "translate this", max_new_tokens=3, stop_strings=["<"])
    assert a.warnings == (w,) and len(a.tokens) >= 1


TOKENS = st.one_of(
    st.builds(lambda n: f"<loc{n:04d}>", st.integers(0, 9999)),
    st.builds(lambda n: f"<seg{n:03d}>", st.integers(0, 999)),
    st.sampled_from([" ; ", ";", " cat", " a b", "<unk>", "<", ">", "<loc", " ", "\n", "", "<seg>", "<eos>"]),
    st.text(max_size=5),
)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.lists(TOKENS, max_size=60).map("".join)),
       width=st.integers(1, 5000), height=st.integers(1, 5000), prompt=st.sampled_from(
           ["detect cat", "segment cat", "caption en", "", "refer x", "\udcff"]))
def test_fuzz_answer_parser_never_raises(text, width, height, prompt):
    p = parse_objects(text, width, height, structured=prompt.startswith(("detect", "segment", "refer")))
    for o in p.objects:
        x0, y0, x1, y1 = o.box
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
    assert len(p.warnings) == len(set(p.warnings))

    class R:
        tokens = [1]

    R.prompt, R.text = prompt, text
    a = to_answer(R, width, height, lambda codes: np.ones((len(codes), 64, 64), np.float32))
    assert len(a.detections) + len(a.segments) == len(p.objects)


# -------------------------------------------------------------------------------- threads and memory


def test_threads_sharing_one_object_give_identical_outputs(pg, image):
    prompts = ["caption en", "detect cat", "answer en what is it?", "ocr"]
    expected = {p: pg(image, p, max_new_tokens=6).tokens for p in prompts}
    got, errors = {}, []

    def work(i: int) -> None:
        try:
            for p in prompts[i:] + prompts[:i]:
                got[(i, p)] = pg(image, p, max_new_tokens=6).tokens
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(tokens == expected[p] for (_, p), tokens in got.items()) and len(got) == 16


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_no_memory_growth_over_many_generations(pg, image):
    for _ in range(10):  # warm up: onnxruntime's arenas and caches reach their size
        pg.answer(image, "detect cat", max_new_tokens=8)
    before = _rss_mb()
    for _ in range(60):
        pg.answer(image, "detect cat", max_new_tokens=8)
    assert _rss_mb() - before < 15
