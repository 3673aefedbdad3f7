"""Shared test vectors for the JavaScript runtime, written by the PYTHON runtime (tests/test_web.py).

`write_vectors(out, bundles)` writes, under out/:
- images/*.png|jpg: odd-sized RGB, RGBA with every kind of alpha, grayscale, grey+alpha, palette with transparency,
  a large image that is shrunk (the antialiasing rule), a JPEG and an EXIF-rotated JPEG;
- pixels/<name>.f32: the Python runtime's pixel_values for each (raw little-endian float32, [1, 3, H, W]);
- items/<id>.png: held-out demo items (the demo's held-out set, split eval: all five tasks, interleaved);
- tokenizers/<name>.json: tiny tokenizers of every model type (tests/tiny_tokenizers.py);
- vectors.json: the bundles, images, prompts with their token ids, and per item and bundle the answer of
  `pgexport run --json` (Answer.to_json()) from the Python runtime; per tiny tokenizer, the Python runtime's token ids
  (and their decoded text) for prompts with words outside its vocabulary; Python's repr() of awkward strings, and
  command-line bytes that are not UTF-8 as Python decodes them.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PROMPTS = ["caption en", "answer en what colour is the large shape on the left?", "detect circle ; square", "ocr",
           "segment triangle", "answer en où est le café ☕ ?", "caption en\nsecond  line ", "describe <loc0001> x"]


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(17)
    noise = lambda h, w, c: (rng.random((h, w, c)) * 256).astype(np.uint8)  # noqa: E731
    rgba = noise(37, 53, 4)
    rgba[::3, :, 3] = 0  # transparent rows, opaque columns, the rest semi-transparent
    rgba[:, ::4, 3] = 255
    y, x = np.mgrid[0:203, 0:301]
    smooth = np.stack([(x * 255 // 300), (y * 255 // 202), ((x + y) % 256)], -1).astype(np.uint8)
    palette = Image.fromarray(noise(33, 41, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {
        "odd_rgb.png": Image.fromarray(noise(45, 61, 3)),
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "gray.png": Image.fromarray(noise(29, 71, 1)[:, :, 0], "L"),
        "gray_alpha.png": Image.fromarray(noise(31, 23, 2), "LA"),
        "palette_trns.png": palette,
        "large_rgb.png": Image.fromarray(smooth),
        "photo.jpg": Image.fromarray(np.clip(smooth.astype(int) + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)),
        "rotated.jpg": Image.fromarray(noise(40, 70, 3)),  # saved with EXIF orientation 6 (rotate 90)
    }


def _save(img: Image.Image, path: Path) -> None:
    if path.name == "rotated.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(path, quality=92, exif=exif)
    elif path.suffix == ".jpg":
        img.save(path, quality=92)
    elif img.mode == "P":
        img.save(path, transparency=img.info["transparency"])
    else:
        img.save(path)


# strings a terminal would act on, and some it would not: Python's repr() of each is what messages quote
REPR_STRINGS = ["plain", "it's", 'say "hi"', "both ' and \"", "back\\slash", "tab\tnew\nline\rreturn",
                "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "\x9b2J c1", "del\x7f", "nul\x00", "\u202eevil\u202c",
                "\u2066isolate\u2069", "line\u2028sep", "nbsp\xa0", "zero\u200dwidth joiner", "soft\xadhyphen",
                "café ☕ 日本\u3000語", "emoji 🦓", "private \ue000", "astral \U0001d11e", "lone \ud800 surrogate"]

# command-line bytes (hex) that are not all UTF-8: Python's surrogateescape decoding of each
ARGV_BYTES = ["6f6372", "63617074696f6e20fffe", "636166c3", "c0af", "eda080", "f4908080", "e282", "e282ac", "f09fa693",
              "80", "c3a9c3"]


def _tokenizer_vectors(out: Path) -> list[dict]:
    """Per tiny tokenizer: the Python runtime's prefix ids of each prompt, and their text decoded."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        import tiny_tokenizers
    finally:
        sys.path.pop(0)
    from pgexport_runtime.prompt import PromptTokenizer

    (out / "tokenizers").mkdir(exist_ok=True)
    rows = []
    for name, tok in tiny_tokenizers.build().items():
        path = out / "tokenizers" / f"{name}.json"
        tok.save(str(path))
        runtime = PromptTokenizer(path, tiny_tokenizers.geometry())
        prompts = []
        for p in tiny_tokenizers.PROMPTS:
            ids = runtime.prefix_ids(p)
            prompts.append({"prompt": p, "ids": ids, "text": runtime.decode(ids[tiny_tokenizers.NUM_IMAGE_TOKENS + 1:])})
        unk = tiny_tokenizers.SPECIAL.index("<unk>")
        assert any(unk in row["ids"] for row in prompts) or "byte-fallback" in name, name  # the unknown path is taken
        rows.append({"name": name, "file": f"tokenizers/{name}.json", "image_token_id": tiny_tokenizers.IMAGE_TOKEN_ID,
                     "num_image_tokens": tiny_tokenizers.NUM_IMAGE_TOKENS, "prompts": prompts})
    return rows


def write_vectors(out: Path, bundles: dict[str, Path], n_items: int = 30) -> Path:
    from pgexport.verify import image_prompts
    from pgexport_runtime import PaliGemma, SessionConfig
    from pgexport_runtime.images import load_image
    from pgexport_runtime.preprocess import preprocess

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "pixels").mkdir(exist_ok=True)
    (out / "items").mkdir(exist_ok=True)
    pgs = {name: PaliGemma(path, SessionConfig(intra_op_threads=1)) for name, path in bundles.items()}
    first = next(iter(pgs.values()))
    images = []
    for name, img in _images().items():
        path = out / "images" / name
        _save(img, path)
        pixels = preprocess([load_image(path)], first.manifest.preprocessing)
        pixels.astype("<f4").tofile(out / "pixels" / f"{name}.f32")
        images.append({"file": f"images/{name}", "pixels": f"pixels/{name}.f32", "dims": list(pixels.shape)})
    prompts = [{"prompt": p, "ids": first.tokenizer.prefix_ids(p)} for p in PROMPTS]
    items = []
    for item in image_prompts.read(image_prompts.DEMO_SET, "eval", limit=n_items):
        path = out / "items" / f"{item.id}.png"
        shutil.copyfile(item.image, path)
        row = {"id": item.id, "task": item.task, "image": f"items/{path.name}", "prompt": item.prompt,
               "max_new_tokens": item.max_new_tokens}
        for name, pg in pgs.items():
            row[name] = pg.answer(path, item.prompt, max_new_tokens=item.max_new_tokens).to_json()
        items.append(row)
    vectors = {"bundles": {k: str(v) for k, v in bundles.items()}, "images": images, "prompts": prompts, "items": items,
               "tokenizers": _tokenizer_vectors(out), "reprs": [{"text": t, "repr": repr(t)} for t in REPR_STRINGS],
               "argv": [{"hex": h, "text": bytes.fromhex(h).decode("utf-8", "surrogateescape")} for h in ARGV_BYTES]}
    tmp = out / "vectors.json.tmp"
    tmp.write_text(json.dumps(vectors, indent=1))
    tmp.replace(out / "vectors.json")  # whole or absent: the Node tests never read half a file
    return out / "vectors.json"


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="write the JavaScript runtime's test vectors with the Python runtime")
    p.add_argument("out", type=Path)
    p.add_argument("--bundle", action="append", required=True, help="NAME=DIR, e.g. fp32=/tmp/demo")
    p.add_argument("--items", type=int, default=30)
    a = p.parse_args()
    print(write_vectors(a.out, {k: Path(v) for k, v in (b.split("=", 1) for b in a.bundle)}, a.items))
