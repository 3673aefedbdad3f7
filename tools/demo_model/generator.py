"""Seeded, deterministic generator of scenes and PaliGemma-format task examples (PIL + numpy, no torch).

A scene is a 128x128 RGB image with 1-4 shapes (kinds x colours, varied sizes and positions, partial
overlaps allowed), a background colour with colour jitter and pixel noise, and optionally a rendered
word/number string. Each example is (prefix, suffix) in PaliGemma's formats:

    caption en                 -> "a red circle and two blue squares on a white background."
    answer en <question>       -> "red" / "3" / "yes" / "left" ...
    ocr                        -> the rendered text
    detect <cls> [; <cls>]     -> "<locY0><locX0><locY1><locX1> cls ; ..."
    segment <cls>              -> "<locY0><locX0><locY1><locX1><segNNN>x16 cls ; ..."

Sample `i` of seed `s` depends only on (s, i): `sample(s, i)` is reproducible and order-independent.
Boxes are (y0, x0, y1, x1) pixels with exclusive y1/x1 edges (a one-pixel object at row 5 has y0=5, y1=6),
written as <locY0><locX0><locY1><locX1> with the runtime's binning (pgexport_runtime.answers.coord_to_bin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pgexport_runtime.answers import coord_to_bin

IMAGE_SIZE = 128
SS = 2  # supersampling factor for rendering

KINDS = ["circle", "square", "triangle", "diamond", "star"]
PLURALS = {k: k + "s" for k in KINDS}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
}
BACKGROUNDS = {"white": (235, 235, 235), "black": (25, 25, 25), "gray": (128, 128, 128)}
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
WORDS = (
    "cat dog sun moon tree bird fish star blue red green box cup map pen key book door car bus boat "
    "rain snow wind fire lake hill road city park home milk tea cake apple lemon bread rice salt "
    "gold iron wood rock sand leaf rose lily frog bear wolf fox owl bee ant cow pig hen duck goat "
    "king queen frog ship train plane bike kite ball game play run jump walk sing read open stop go "
    "yes no up down left right top big small hot cold new old fast slow good bad day night time"
).split()
WORDS = sorted(set(WORDS))
TASKS = ["caption", "vqa", "ocr", "detect", "segment"]
TASK_WEIGHTS = [0.15, 0.25, 0.15, 0.2, 0.25]


@dataclass
class Obj:
    kind: str
    colour: str
    mask: np.ndarray  # bool [H, W], visible pixels
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # y0, x0, y1, x1 in pixels, y1/x1 exclusive

    @property
    def centre(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.box
        return (y0 + y1) / 2, (x0 + x1) / 2


@dataclass
class Scene:
    image: Image.Image
    background: str
    objects: list[Obj]
    text: str | None = None
    text_box: tuple[int, int, int, int] | None = None


@dataclass
class Example:
    task: str
    prefix: str
    suffix: str
    scene: Scene
    # for detect/segment: the objects in suffix order (ground truth for metrics)
    targets: list[Obj] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x9A11])


def _shape_polygon(kind: str, cy: float, cx: float, r: float) -> list[tuple[float, float]] | None:
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if kind == "star":
        pts = []
        for i in range(10):
            a = -np.pi / 2 + i * np.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a) + r * 0.1))
        return pts
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cy: float, cx: float, r: float, fill) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(kind, cy, cx, r), fill=fill)


def _shape_mask(kind: str, cy: float, cx: float, r: float) -> np.ndarray:
    S = IMAGE_SIZE * SS
    m = Image.new("L", (S, S), 0)
    _draw_shape(ImageDraw.Draw(m), kind, cy * SS, cx * SS, r * SS, 255)
    a = np.asarray(m, dtype=np.float32).reshape(IMAGE_SIZE, SS, IMAGE_SIZE, SS).mean(axis=(1, 3))
    return a >= 127.5


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _random_text(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.45:
        return str(rng.choice(WORDS))
    if r < 0.8:
        return f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
    if r < 0.9:
        return str(int(rng.integers(0, 1000)))
    return f"{rng.choice(WORDS)} {int(rng.integers(0, 100))}"


def _overlaps(a, b, margin=0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_scene(rng: np.random.Generator, with_text: bool | None = None) -> Scene:
    """Render one random scene. `with_text` forces text on/off (None: 50%)."""
    S = IMAGE_SIZE
    bg_name = str(rng.choice(list(BACKGROUNDS)))
    bg = np.array(BACKGROUNDS[bg_name]) + rng.integers(-12, 13, size=3)
    if with_text is None:
        with_text = bool(rng.random() < 0.5)

    text = text_box = None
    font_size = 0
    if with_text:
        for _ in range(20):
            font_size = int(rng.integers(13, 18))
            cand = _random_text(rng)
            l, t, r, b = _font(font_size * SS).getbbox(cand)
            w, h = (r - l) / SS, (b - t) / SS
            if w > S - 8:
                continue
            x = float(rng.uniform(2, S - 2 - w))
            y = float(rng.uniform(2, S - 2 - h))
            text = cand
            text_box = (int(y), int(x), int(np.ceil(y + h)), int(np.ceil(x + w)))
            text_origin = (x * SS - l, y * SS - t)
            break

    n = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.3, 0.25, 0.2]))
    shapes: list[tuple[str, str, float, float, float]] = []
    masks: list[np.ndarray] = []
    attempts = 0
    while len(shapes) < n and attempts < 60:
        attempts += 1
        kind = str(rng.choice(KINDS))
        colour = str(rng.choice(list(COLOURS)))
        r = float(rng.uniform(9, 22))
        cy = float(rng.uniform(r + 1, S - r - 1))
        cx = float(rng.uniform(r + 1, S - r - 1))
        bbox = (cy - r - 1, cx - r - 1, cy + r + 1, cx + r + 1)
        if text_box is not None and _overlaps(bbox, text_box, margin=2):
            continue
        m = _shape_mask(kind, cy, cx, r)
        # the new shape is drawn on top: every earlier shape must keep >= 60% of its pixels visible
        ok = True
        for pm in masks:
            vis = pm.copy()
            vis &= ~m
            if vis.sum() < 0.6 * pm.sum():
                ok = False
                break
        if ok:
            for j, pm in enumerate(masks):
                # check against the already-occluded state too
                occl = np.zeros_like(m)
                for k in range(j + 1, len(masks)):
                    occl |= masks[k]
                occl |= m
                if (pm & ~occl).sum() < 0.6 * pm.sum():
                    ok = False
                    break
        if not ok:
            continue
        shapes.append((kind, colour, cy, cx, r))
        masks.append(m)

    big = Image.new("RGB", (S * SS, S * SS), tuple(int(c) for c in np.clip(bg, 0, 255)))
    draw = ImageDraw.Draw(big)
    for kind, colour, cy, cx, r in shapes:
        fill = np.array(COLOURS[colour]) + rng.integers(-15, 16, size=3)
        _draw_shape(draw, kind, cy * SS, cx * SS, r * SS, tuple(int(c) for c in np.clip(fill, 0, 255)))
    if text is not None:
        tc = (20, 20, 20) if bg_name == "white" else (240, 240, 240)
        if bg_name == "gray":
            tc = (10, 10, 10) if rng.random() < 0.5 else (250, 250, 250)
        draw.text(text_origin, text, font=_font(font_size * SS), fill=tc)
    img = big.resize((S, S), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    sigma = float(rng.uniform(0, 10))
    arr = arr + rng.normal(0, sigma, size=arr.shape)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))

    objects = []
    for i, (kind, colour, *_rest) in enumerate(shapes):
        vis = masks[i].copy()
        for m2 in masks[i + 1 :]:
            vis &= ~m2
        ys, xs = np.nonzero(vis)
        box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
        objects.append(Obj(kind, colour, vis, box))
    return Scene(img, bg_name, objects, text, text_box)


# ----------------------------------------------------------------------------------------------- tasks


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """Canonical caption: groups ordered by kind then colour (the order of KINDS / COLOURS)."""
    counts: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        counts[(o.kind, o.colour)] = counts.get((o.kind, o.colour), 0) + 1
    keys = sorted(counts, key=lambda k: (KINDS.index(k[0]), list(COLOURS).index(k[1])))
    parts = []
    for kind, colour in keys:
        c = counts[(kind, colour)]
        parts.append(f"{NUMBER_WORDS[c]} {colour} {kind if c == 1 else PLURALS[kind]}")
    return f"{_join(parts)} on a {scene.background} background."


def vqa(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    objs = scene.objects
    kinds = [o.kind for o in objs]
    colours = [o.colour for o in objs]
    pairs = [(o.kind, o.colour) for o in objs]
    options = ["count_all", "count_kind", "count_colour", "exists", "background"]
    if any(kinds.count(k) == 1 for k in kinds):
        options.append("colour_of")
    if any(colours.count(c) == 1 for c in colours):
        options.append("shape_of")
    side = [o for o in objs if pairs.count((o.kind, o.colour)) == 1 and abs(o.centre[1] - IMAGE_SIZE / 2) >= 10]
    vert = [o for o in objs if pairs.count((o.kind, o.colour)) == 1 and abs(o.centre[0] - IMAGE_SIZE / 2) >= 10]
    if side:
        options.append("side")
    if vert:
        options.append("vertical")
    q = str(rng.choice(options))
    if q == "count_all":
        return "how many shapes are there?", str(len(objs))
    if q == "count_kind":
        k = str(rng.choice(KINDS))
        return f"how many {PLURALS[k]} are there?", str(kinds.count(k))
    if q == "count_colour":
        c = str(rng.choice(list(COLOURS)))
        return f"how many {c} shapes are there?", str(colours.count(c))
    if q == "exists":
        if rng.random() < 0.5:
            k, c = pairs[int(rng.integers(len(pairs)))]
        else:
            k, c = str(rng.choice(KINDS)), str(rng.choice(list(COLOURS)))
        return f"is there a {c} {k}?", "yes" if (k, c) in pairs else "no"
    if q == "background":
        return "what colour is the background?", scene.background
    if q == "colour_of":
        k = str(rng.choice(sorted({k for k in kinds if kinds.count(k) == 1})))
        return f"what colour is the {k}?", colours[kinds.index(k)]
    if q == "shape_of":
        c = str(rng.choice(sorted({c for c in colours if colours.count(c) == 1})))
        return f"what shape is the {c} object?", kinds[colours.index(c)]
    if q == "side":
        o = side[int(rng.integers(len(side)))]
        return f"is the {o.colour} {o.kind} on the left or on the right?", "left" if o.centre[1] < 64 else "right"
    o = vert[int(rng.integers(len(vert)))]
    return f"is the {o.colour} {o.kind} at the top or at the bottom?", "top" if o.centre[0] < 64 else "bottom"


def _sorted_targets(objs: list[Obj], classes: list[str]) -> list[Obj]:
    out = []
    for c in classes:
        out += sorted([o for o in objs if o.kind == c], key=lambda o: (o.box[0], o.box[1]))
    return out


def box_to_loc(box, height: int, width: int) -> str:
    y0, x0, y1, x1 = box
    bins = [coord_to_bin(y0, height), coord_to_bin(x0, width), coord_to_bin(y1, height), coord_to_bin(x1, width)]
    return "".join(f"<loc{b:04d}>" for b in bins)


def detect_suffix(objs: list[Obj]) -> str:
    return " ; ".join(f"{box_to_loc(o.box, IMAGE_SIZE, IMAGE_SIZE)} {o.kind}" for o in objs)


def segment_suffix(objs: list[Obj], codes: list[list[int]]) -> str:
    parts = []
    for o, cs in zip(objs, codes):
        segs = "".join(f"<seg{int(c):03d}>" for c in cs)
        parts.append(f"{box_to_loc(o.box, IMAGE_SIZE, IMAGE_SIZE)}{segs} {o.kind}")
    return " ; ".join(parts)


def crop_mask(mask: np.ndarray, box: tuple[int, int, int, int], size: int = 64) -> np.ndarray:
    """Crop a full-image bool mask to `box` and resize to size x size, float in [-1, 1] (the VQ-VAE input)."""
    y0, x0, y1, x1 = box
    crop = Image.fromarray((mask[y0:y1, x0:x1] * 255).astype(np.uint8))
    crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.float32) / 127.5 - 1.0


def make_example(
    seed: int,
    index: int,
    task: str | None = None,
    encode_masks: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Example:
    """Example `index` of `seed`. `encode_masks` maps [N,64,64] crops in [-1,1] to [N,16] VQ codes
    (needed for segment suffixes; without it the segment suffix is left empty but targets are set)."""
    rng = _rng(seed, index)
    if task is None:
        task = str(rng.choice(TASKS, p=TASK_WEIGHTS))
    scene = make_scene(rng, with_text=True if task == "ocr" else None)
    if task == "caption":
        return Example(task, "caption en", caption(scene), scene)
    if task == "vqa":
        q, a = vqa(scene, rng)
        return Example(task, f"answer en {q}", a, scene)
    if task == "ocr":
        return Example(task, "ocr", scene.text or "", scene)
    present = sorted({o.kind for o in scene.objects}, key=KINDS.index)
    if task == "detect":
        k = 2 if (len(present) >= 2 and rng.random() < 0.4) else 1
        classes = [str(c) for c in rng.choice(present, size=k, replace=False)]
        targets = _sorted_targets(scene.objects, classes)
        return Example(task, "detect " + " ; ".join(classes), detect_suffix(targets), scene, targets, classes)
    if task == "segment":
        cls = str(rng.choice(present))
        targets = _sorted_targets(scene.objects, [cls])
        suffix = ""
        if encode_masks is not None:
            crops = np.stack([crop_mask(o.mask, o.box) for o in targets])
            suffix = segment_suffix(targets, [list(c) for c in encode_masks(crops)])
        return Example(task, f"segment {cls}", suffix, scene, targets, [cls])
    raise ValueError(task)


def corpus(n: int = 3000, seed: int = 12345) -> list[str]:
    """Task texts for training the tokenizer (prefixes + suffixes, with the '\\n' separator)."""
    texts = []
    for i in range(n):
        ex = make_example(seed, i)
        if ex.task == "segment":
            continue
        texts.append(ex.prefix + "\n" + ex.suffix)
    # OCR vocabulary: make every word likely to be a single token
    texts += [" ".join(WORDS)] * 60 + [" ".join(str(i) for i in range(1000))]
    for k in KINDS:
        texts += [f"segment {k}\n", f"detect {k}\n"]
    return texts
