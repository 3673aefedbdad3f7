"""The catalogue of bad inputs: each case is one mistake (or attack) a user can make, and how the CLI must answer.

A case runs the real CLI in a subprocess (`python -m pgexport.cli ARGS`) inside a fresh workspace and must end
with the expected exit status (2: refused), exactly one non-empty line on stderr that contains `needle`, no
traceback, and no path on disk that was not there before it ran. tests/test_catalogue.py runs every case.

To add a case, append a Case to CASES (build-side cases too: set `bundle=False` when the args name no bundle).
Args are format strings: {bundle}, {image} and {root} become the workspace's paths. `setup` makes the bad
input in the workspace before the CLI runs; it may break the workspace's private bundle copy freely. The bundle
is tiny-pg1's, of the KV-cache layout `layout` names; with `checkpoint=True` the workspace also holds `ckpt/`,
a copy of tiny-pg1 as transformers' save_pretrained writes it, for setups that break a checkpoint.
A case that the JavaScript runtime's CLI must refuse alike, with the same words, goes in tests/runtime_cases.json
instead: both runtimes' tests read that one list, and its cases join this catalogue at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import runtime_cases
from pgexport_runtime.manifest import sha256_file


@dataclass
class Workspace:
    root: Path  # the CLI's working directory, and what "nothing left on disk" is checked in
    bundle: Path  # a private copy of a tiny bundle
    image: Path  # a valid 50x40 PNG
    checkpoint: Path | None = None  # a private copy of a tiny checkpoint (Case.checkpoint)
    after: list[Callable[[], None]] = field(default_factory=list)  # undone once the CLI has run (a lock held)

    @property
    def manifest_path(self) -> Path:
        return self.bundle / "manifest.json"

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, m) -> None:
        self.manifest_path.write_text(json.dumps(m))  # json.dumps writes NaN / Infinity as Python's json reads them

    def rehash(self, name: str) -> None:
        m = self.manifest()
        m["files"][name] = sha256_file(self.bundle / name)
        self.write_manifest(m)


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    needle: str
    setup: Callable[[Workspace], None] | None = None
    code: int = 2
    bundle: bool = True
    layout: str = "concat"  # the workspace bundle's KV-cache layout: concat, shared or static
    checkpoint: bool = False  # the workspace holds ckpt/, a tiny checkpoint to break


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    new_paths: tuple[str, ...]


def make_workspace(root: Path, bundle_src: Path | None, image, checkpoint_src: Path | None = None) -> Workspace:
    """`image` is a PIL image saved as the workspace's img.png."""
    root.mkdir(parents=True, exist_ok=True)
    bundle = root / "bundle"
    if bundle_src is not None:
        shutil.copytree(bundle_src, bundle)
    image_path = root / "img.png"
    image.save(image_path)
    checkpoint = None
    if checkpoint_src is not None:
        checkpoint = root / "ckpt"
        shutil.copytree(checkpoint_src, checkpoint)
    return Workspace(root, bundle, image_path, checkpoint)


def run_case(case: Case, ws: Workspace, timeout: float = 180) -> Outcome:
    if case.setup is not None:
        case.setup(ws)
    before = _paths(ws.root)
    args = [a.format(bundle=ws.bundle, image=ws.image, root=ws.root) for a in case.args]
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # warnings visible: they must not add lines either
    try:
        proc = subprocess.run([sys.executable, "-m", "pgexport.cli", *args], cwd=ws.root, capture_output=True,
                              text=True, errors="replace", timeout=timeout, env=env)
        return Outcome(proc.returncode, proc.stdout, proc.stderr, tuple(sorted(_paths(ws.root) - before)))
    finally:
        for undo in ws.after:
            undo()


def check(case: Case, out: Outcome) -> None:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, out.stderr
    assert out.code == case.code, (out.code, out.stderr)
    assert len(lines) == 1, out.stderr
    assert case.needle in lines[0], lines[0]
    assert out.new_paths == (), out.new_paths


def _paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------- setups


def edit(fn: Callable[[dict], object]) -> Callable[[Workspace], None]:
    """A setup that changes the manifest: fn mutates the dict in place, or returns a replacement."""
    def setup(ws: Workspace) -> None:
        m = ws.manifest()
        new = fn(m)
        ws.write_manifest(m if new is None else new)
    return setup


def write_manifest_text(text: str) -> Callable[[Workspace], None]:
    return lambda ws: ws.manifest_path.write_text(text)


def drop(section: str, key: str | None = None):
    def fn(m):
        del (m if key is None else m[section])[section if key is None else key]
    return edit(fn)


def put(section: str, key: str | None, value):
    def fn(m):
        if key is None:
            m[section] = value
        else:
            m[section][key] = value
    return edit(fn)


def outside_file_listed(name: str):
    """Lists a file outside the bundle under `name` ('../secret.bin', an absolute path) with its true sha256."""
    def setup(ws: Workspace) -> None:
        secret = ws.root / "secret.bin"
        secret.write_bytes(b"not part of the bundle")
        m = ws.manifest()
        m["files"][name.format(root=ws.root)] = sha256_file(secret)
        ws.write_manifest(m)
    return setup


def graph_file(graph: str, key: str, value):
    def fn(m):
        m["graphs"][graph][key] = value
        for f in value if isinstance(value, list) else [value]:
            m["files"][f] = "0" * 64
    return edit(fn)


def symlinked_graph(ws: Workspace) -> None:
    """projector.onnx replaced by a link to an identical file outside the bundle: its sha256 still matches."""
    outside = ws.root / "outside"
    outside.mkdir()
    shutil.move(ws.bundle / "projector.onnx", outside / "projector.onnx")
    (ws.bundle / "projector.onnx").symlink_to(outside / "projector.onnx")


def symlinked_manifest(ws: Workspace) -> None:
    shutil.move(ws.manifest_path, ws.root / "real-manifest.json")
    ws.manifest_path.symlink_to(ws.root / "real-manifest.json")


def garbage_tokenizer(ws: Workspace) -> None:
    (ws.bundle / "tokenizer.json").write_text('{"this is": "not a tokenizer"')
    ws.rehash("tokenizer.json")


def png_header(width: int, height: int, name: str = "big.png"):
    """A PNG whose header claims width x height grey pixels, with one empty data chunk: a few dozen bytes that
    Pillow would expand to width*height bytes. Only the header may be read before the size is refused."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def setup(ws: Workspace) -> None:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        (ws.root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                                     + chunk(b"IEND", b""))
    return setup


def truncated_png(ws: Workspace) -> None:
    data = ws.image.read_bytes()
    (ws.root / "cut.png").write_bytes(data[: len(data) // 2])


def mkdir(name: str):
    return lambda ws: (ws.root / name).mkdir()


def link_to_image(name: str):
    return lambda ws: (ws.root / name).symlink_to(ws.image)


def hard_link_to_image(name: str):
    return lambda ws: os.link(ws.image, ws.root / name)


def write_file(name: str, text: str):
    def setup(ws: Workspace) -> None:
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_text(text)
    return setup


def write_bytes(name: str, data: bytes):
    return lambda ws: (ws.root / name).write_bytes(data)


def long_set(name: str, rows: int):
    """A JSONL set of `rows` rows (a few MB): each a prompt about the workspace's image."""
    return write_file(name, '{"image": "img.png", "prompt": "caption en"}\n' * rows)


def fake_checkpoint(config: str):
    """A directory that looks like a checkpoint until its config.json is read."""
    def setup(ws: Workspace) -> None:
        ckpt = ws.root / "ckpt"
        ckpt.mkdir()
        (ckpt / "config.json").write_text(config)
        (ckpt / "preprocessor_config.json").write_text("{}")
        (ckpt / "tokenizer.json").write_text("{}")
    return setup


def target_locked(name: str):
    """Another build of `name` (in the workspace) running: its lock held for as long as the CLI runs."""
    def setup(ws: Workspace) -> None:
        from pgexport.build.target_lock import TargetLock

        lock = TargetLock(ws.root, name)
        assert lock.try_acquire()
        ws.after.append(lock.release)
    return setup


def swap_graph_file(name: str, other: str):
    """`name` replaced by a copy of the graph `other` (another prefix length), its sha256 updated: every file
    matches the manifest, but a graph's fixed shapes are not the ones it is listed for."""
    def setup(ws: Workspace) -> None:
        shutil.copyfile(ws.bundle / other, ws.bundle / name)
        ws.rehash(name)
    return setup


def checkpoint_json(file: str, fn: Callable[[dict], None]):
    """A setup that edits a JSON file of the workspace's checkpoint in place (NaN and Infinity as Python writes them)."""
    def setup(ws: Workspace) -> None:
        path = ws.checkpoint / file
        value = json.loads(path.read_text())
        fn(value)
        path.write_text(json.dumps(value))
    return setup


def config_put(section: str, key: str, value):
    return checkpoint_json("config.json", lambda c: c[section].__setitem__(key, value))


def processor_put(key: str, value):
    """transformers 5.x keeps the image-processor settings in processor_config.json, under image_processor."""
    return checkpoint_json("processor_config.json", lambda c: c["image_processor"].__setitem__(key, value))


def older_preprocessor_config(key: str, value):
    """The image-processor settings in preprocessor_config.json, as older saves and Google's repositories have
    them (transformers reads that file first)."""
    def setup(ws: Workspace) -> None:
        section = json.loads((ws.checkpoint / "processor_config.json").read_text())["image_processor"]
        section[key] = value
        (ws.checkpoint / "preprocessor_config.json").write_text(json.dumps(section))
    return setup


def poisoned_weight(value: float, which: int = 0):
    """One float32 value of the checkpoint's `which`-th tensor set to `value` (NaN, infinity), bytes in place."""
    def setup(ws: Workspace) -> None:
        from pgexport.source.checkpoint import tensor_index

        path = ws.checkpoint / "model.safetensors"
        name = sorted(tensor_index(path))[which]
        _, _, begin, _ = tensor_index(path)[name]
        with open(path, "r+b") as f:
            f.seek(begin)
            f.write(struct.pack("<f", value))
    return setup


def nan_adapter(ws: Workspace) -> None:
    """lora/: a LoRA adapter on the checkpoint, one of whose weights is NaN (as a diverged fine-tune leaves it)."""
    import numpy as np
    from safetensors.numpy import save_file

    lora = ws.root / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["language_model.layers.0.self_attn.q_proj"],
        "base_model_name_or_path": str(ws.checkpoint)}))
    prefix = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    a, b = np.zeros((2, 64), np.float32), np.zeros((64, 2), np.float32)
    b[3, 1] = np.nan
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, str(lora / "adapter_model.safetensors"))


# ------------------------------------------------------------------------------------------- the cases

RUN = ("run", "{bundle}", "--image", "{image}")
CAPTION = (*RUN, "--prompt", "caption en", "--max-new-tokens", "2")
INSPECT = ("inspect", "{bundle}")
BENCH = ("bench", "{bundle}", "--out", "{root}/bench-out")
LONG_PROMPT = "caption en " + "x " * 9000  # ~9000 tokens, over the tiny models' 8192 positions

BUILD = ("build", "--model", "tiny-pg1", "--out", "{root}/b")
BUILD_CKPT = ("build", "--model", "ckpt", "--out", "{root}/b")  # the workspace's checkpoint (checkpoint=True)
DEFAULT_STATIC = {"layout": "static", "max_len": 144, "prefill_lengths": [32, 80]}  # tiny-pg1's static bundle

CASES: list[Case] = [
    # --- the manifest: read into typed, bounded sections before any file is opened
    Case("manifest-is-a-json-list", CAPTION, "not a pgexport manifest (a JSON list", write_manifest_text("[1, 2]")),
    Case("manifest-is-not-json", CAPTION, "unreadable manifest", write_manifest_text('{"schema": ')),
    Case("manifest-too-large", INSPECT, "larger than 8 MiB",
         write_manifest_text('{"pad": "' + "x" * (9 << 20) + '"}')),
    Case("manifest-deeply-nested", INSPECT, "unreadable manifest", write_manifest_text("[" * 200_000)),
    Case("manifest-missing-graphs", CAPTION, "graphs is missing", drop("graphs")),
    Case("manifest-graphs-not-an-object", CAPTION, "graphs must be an object", put("graphs", None, [])),
    Case("graph-entry-is-a-string", CAPTION, "graphs.decoder must be an object", put("graphs", "decoder", "d.onnx")),
    Case("graph-inputs-not-a-list", CAPTION, "graphs.vision_encoder.inputs must be a list",
         edit(lambda m: m["graphs"]["vision_encoder"].update(inputs="pixel_values"))),
    Case("geometry-field-missing", CAPTION, "geometry.vocab_size is missing", drop("geometry", "vocab_size")),
    Case("geometry-wrong-type", CAPTION, "geometry.text_layers must be an integer", put("geometry", "text_layers", "3")),
    Case("geometry-negative", CAPTION, "geometry.num_image_tokens is -1", put("geometry", "num_image_tokens", -1)),
    Case("geometry-absurd", CAPTION, "geometry.max_position_embeddings is", put("geometry", "max_position_embeddings",
                                                                                  10**12)),
    Case("geometry-nan", CAPTION, "geometry.rope_theta is nan", put("geometry", "rope_theta", float("nan"))),
    Case("geometry-boolean-as-int", CAPTION, "geometry.head_dim must be an integer", put("geometry", "head_dim", True)),
    Case("geometry-disagrees-with-graph", CAPTION, "logits has size 1728 on axis 2 where the manifest says 1800",
         put("geometry", "vocab_size", 1800)),
    Case("generation-zero-tokens", CAPTION, "generation.max_new_tokens is 0", put("generation", "max_new_tokens", 0)),
    Case("kv-dtype-unknown", CAPTION, "KV-cache dtype 'int3' is not supported", put("kv_cache", "dtype", "int3")),
    Case("graph-io-list-disagrees", CAPTION, "the manifest lists inputs/outputs this runtime does not use",
         edit(lambda m: m["graphs"]["projector"].update(inputs=["image_features"]))),
    Case("preprocessing-zero-std", CAPTION, "preprocessing.std[] is 0", put("preprocessing", "std", [0, 0.5, 0.5])),
    Case("preprocessing-unknown-resample", CAPTION, "this runtime knows bicubic",
         put("preprocessing", "resample", "lanczos")),
    Case("tokenizer-section-not-an-object", CAPTION, "tokenizer must be an object", put("tokenizer", None, "t.json")),
    Case("kv-layout-unknown", CAPTION, "KV-cache layout 'paged' is not supported", put("kv_cache", "layout", "paged")),
    Case("kv-layout-not-the-graphs", CAPTION, "but the manifest says KV-cache layout 'shared'; graph and manifest do not",
         put("kv_cache", "layout", "shared")),
    Case("schema-version-true", INSPECT, "schema version True is not supported", put("schema_version", None, True)),
    Case("sha256-not-hex", INSPECT, "is not a sha256", edit(lambda m: m["files"].update({"decoder.onnx": "zz"}))),
    # --- files: plain names inside the bundle, no symbolic links, checked before anything is hashed
    Case("file-name-with-dotdot", INSPECT, "'../secret.bin' is not a plain file name", outside_file_listed("../secret.bin")),
    Case("file-name-absolute", INSPECT, "is not a plain file name", outside_file_listed("{root}/secret.bin")),
    Case("graph-file-absolute", CAPTION, "'/etc/passwd' is not a plain file name",
         graph_file("projector", "file", "/etc/passwd")),
    Case("data-file-in-a-subfolder", CAPTION, "'sub/decoder.data' is not a plain file name",
         graph_file("decoder", "data_files", ["sub/decoder.data"])),
    Case("tokenizer-file-dotdot", CAPTION, "tokenizer.file: '../tokenizer.json' is not a plain file name",
         put("tokenizer", "file", "../tokenizer.json")),
    Case("graph-symlinked-outside", CAPTION, "projector.onnx is a symbolic link", symlinked_graph),
    Case("manifest-symlinked", INSPECT, "manifest.json is a symbolic link", symlinked_manifest),
    Case("tokenizer-garbage-valid-sha", CAPTION, "not a tokenizer the tokenizers library can read", garbage_tokenizer),
    # --- the same manifest mistakes through inspect and bench: the same one line
    Case("inspect-manifest-list", INSPECT, "not a pgexport manifest", write_manifest_text("[]")),
    Case("inspect-missing-graphs", INSPECT, "graphs is missing", drop("graphs")),
    Case("inspect-parity-not-an-object", INSPECT, "parity must be an object", put("parity", None, "ok")),
    Case("inspect-parity-relative-text", INSPECT, "must be a number",
         edit(lambda m: m["parity"]["checks"]["projector"].update(relative="small"))),
    Case("inspect-quantization-recipe-number", INSPECT, "quantization.recipe must be an object",
         put("quantization", None, {"recipe": 3, "summary": {}})),
    Case("inspect-source-list", INSPECT, "source must be an object", put("source", None, [])),
    Case("bench-manifest-list", BENCH, "not a pgexport manifest", write_manifest_text("[]")),
    Case("bench-missing-geometry-field", BENCH, "geometry.image_size is missing", drop("geometry", "image_size")),
    Case("bench-threads-too-many", (*BENCH, "--threads", "100000"), "--threads 100000 is out of range"),
    # --- request bounds (limits.py): the CLI and the API share them
    Case("prompt-longer-than-positions", (*RUN, "--prompt", LONG_PROMPT), "the model's limit of 8192 positions"),
    Case("max-new-tokens-past-positions", (*RUN, "--prompt", "ocr", "--max-new-tokens", "9000"),
         "the model's limit of 8192 positions"),
    Case("max-new-tokens-zero", (*RUN, "--prompt", "ocr", "--max-new-tokens", "0"), "max_new_tokens must be"),
    Case("max-new-tokens-negative", (*RUN, "--prompt", "ocr", "--max-new-tokens", "-3"), "max_new_tokens must be"),
    Case("threads-huge", (*CAPTION, "--threads", "100000"), "--threads 100000 is out of range"),
    Case("threads-negative", (*CAPTION, "--threads", "-1"), "--threads -1 is out of range"),
    Case("threads-not-a-number", (*CAPTION, "--threads", "many"), "invalid int value: 'many'"),
    Case("temperature-nan", (*CAPTION, "--sample", "--temperature", "nan"), "temperature must be a finite number"),
    Case("temperature-inf", (*CAPTION, "--sample", "--temperature", "inf"), "temperature must be a finite number"),
    Case("temperature-negative", (*CAPTION, "--temperature", "-1"), "temperature must be a finite number"),
    Case("top-p-nan", (*CAPTION, "--top-p", "nan"), "top_p must be in (0, 1]"),
    Case("top-p-above-one", (*CAPTION, "--top-p", "1.5"), "top_p must be in (0, 1]"),
    Case("top-k-over-vocabulary", (*CAPTION, "--sample", "--top-k", "100000"), "larger than the model's vocabulary"),
    Case("top-k-negative", (*CAPTION, "--top-k", "-1"), "top_k must be an integer >= 0"),
    Case("seed-negative", (*CAPTION, "--sample", "--seed", "-5"), "seed must be an integer in 0..2**64-1"),
    Case("stop-empty", (*CAPTION, "--stop", ""), "stop string 1 is empty"),
    Case("prompt-blank", (*RUN, "--prompt", "   "), "empty prompt"),
    Case("option-unknown", (*CAPTION, "--temprature", "1"), "unrecognized arguments: --temprature"),
    Case("option-missing", RUN, "the following arguments are required: --prompt"),
    # --- images: bounded before decoding
    Case("image-decompression-bomb", ("run", "{bundle}", "--image", "big.png", "--prompt", "ocr"),
         "could be decompression bomb", png_header(30000, 30000)),
    Case("image-over-default-limit", ("run", "{bundle}", "--image", "big.png", "--prompt", "ocr"),
         "is over the limit of 89,478,485 pixels", png_header(10000, 10000)),
    Case("image-over-own-limit", (*CAPTION, "--max-image-pixels", "1000"), "2,000 pixels, more than the limit of 1,000"),
    Case("image-limit-raised-then-read", ("run", "{bundle}", "--image", "big.png", "--prompt", "ocr",
                                          "--max-image-pixels", "200000000"), "cannot read image", png_header(12000, 12000)),
    Case("image-limit-zero", (*CAPTION, "--max-image-pixels", "0"), "max_image_pixels must be a positive integer"),
    Case("image-truncated", ("run", "{bundle}", "--image", "cut.png", "--prompt", "ocr"), "cannot read image",
         truncated_png),
    # --- outputs: never over the input, never half-written
    Case("overlay-is-the-image", (*CAPTION, "--overlay", "{image}"), "is the input image"),
    Case("overlay-is-the-image-via-dotdot", (*CAPTION, "--overlay", "{root}/sub/../img.png"), "is the input image",
         mkdir("sub")),
    Case("overlay-is-the-image-via-symlink", (*CAPTION, "--overlay", "alias.png"), "is the input image",
         link_to_image("alias.png")),
    Case("overlay-is-the-image-via-hard-link", (*CAPTION, "--overlay", "hard.png"), "is the input image",
         hard_link_to_image("hard.png")),
    Case("overlay-folder-missing", (*CAPTION, "--overlay", "nowhere/out.png"), "does not exist"),
    Case("overlay-unknown-format", (*CAPTION, "--overlay", "out.xyz"), "unknown image format"),
    Case("overlay-unwritable-folder", (*CAPTION, "--overlay", "/sys/pgexport-overlay.png"), "cannot write"),
    # --- text a terminal would obey (escape sequences, newlines, bidi overrides) in a manifest or a path: shown
    #     as visible escapes in the one line, which stays one line (pgexport_runtime/terminal.py)
    Case("image-path-with-newline", ("run", "{bundle}", "--image", "no\nsuch.png", "--prompt", "ocr"),
         "image not found: no\\nsuch.png"),
    Case("image-path-clears-the-screen",
         ("run", "{bundle}", "--image", "\x1b[2J\x1b]0;owned\x07.png", "--prompt", "ocr"),
         "image not found: \\x1b[2J\\x1b]0;owned\\x07.png"),
    Case("image-path-bidi-override", ("run", "{bundle}", "--image", "photo\u202egnp.exe", "--prompt", "ocr"),
         "image not found: photo\\u202egnp.exe"),
    Case("image-path-line-separator", ("run", "{bundle}", "--image", "a\u2028b.png", "--prompt", "ocr"),
         "image not found: a\\u2028b.png"),
    Case("image-path-c1-csi-and-del", ("run", "{bundle}", "--image", "a\x9b2Jb\x7f.png", "--prompt", "ocr"),
         "image not found: a\\x9b2Jb\\x7f.png"),
    Case("image-unreadable-name-with-carriage-return",
         ("run", "{bundle}", "--image", "x\rerror: forged.png", "--prompt", "ocr"),
         "cannot read image x\\rerror: forged.png", write_file("x\rerror: forged.png", "not an image")),
    Case("overlay-folder-with-newline", (*CAPTION, "--overlay", "no\nwhere/out.png"),
         "--overlay no\\nwhere/out.png: folder no\\nwhere does not exist"),
    Case("bundle-path-with-newline", ("inspect", "no\nbundle"), "no\\nbundle: no such bundle directory",
         bundle=False),
    Case("option-with-escape-sequence", (*CAPTION, "--\x1b[2J"), "unrecognized arguments: --\\x1b[2J"),
    Case("manifest-tools-key-forges-a-line", INSPECT, "tools.onnx\\nparity ok: greedy = transformers must be a version",
         put("tools", None, {"onnx\nparity ok: greedy = transformers": {"v": 1}})),
    Case("manifest-parity-check-sets-the-title", INSPECT, "parity.checks.\\x1b]0;owned\\x07 must be an object",
         edit(lambda m: m["parity"]["checks"].update({"\x1b]0;owned\x07": "ok"}))),
    # --- not an error: an unknown task prefix is one warning line, and the model still answers.
    #     ('--stop <' ends the answer before any <loc> token of the random tiny model could add parse warnings)
    Case("unknown-task-prefix-warns", (*RUN, "--prompt", "hello there", "--max-new-tokens", "3", "--stop", "<"),
         "warning: unknown task prefix 'hello'", code=0),
    # --- build: sources, recipes, options and targets, refused before anything is written
    Case("build-model-nowhere", ("build", "--model", "nowhere", "--out", "{root}/b"), "not a preset", bundle=False),
    Case("build-model-is-a-file", ("build", "--model", "{image}", "--out", "{root}/b"), "got a file", bundle=False),
    Case("build-config-not-json", ("build", "--model", "ckpt", "--out", "{root}/b"), "unreadable config.json",
         fake_checkpoint("{oops"), bundle=False),
    Case("build-config-not-paligemma", ("build", "--model", "ckpt", "--out", "{root}/b"), "model_type 'llama'",
         fake_checkpoint('{"model_type": "llama"}'), bundle=False),
    Case("build-over-max-memory", ("build", "--model", "paligemma-3b-224", "--out", "{root}/b", "--max-memory", "2"),
         "GB of memory (streaming one decoder layer at a time", bundle=False),
    Case("build-adapter-nowhere", (*BUILD, "--adapter", "nowhere"), "--adapter nowhere: not a directory",
         bundle=False),
    Case("build-recipe-json-list", (*BUILD, "--quant", "r.json"), "holds a JSON object, not list",
         write_file("r.json", "[1, 2]"), bundle=False),
    Case("build-recipe-override-without-precision", (*BUILD, "--quant", "r.json"),
         'override 0 needs a "match" pattern and a "precision"',
         write_file("r.json", '{"base": "int4", "overrides": [{"match": "layers.0.*"}]}'), bundle=False),
    Case("build-recipe-block-size-text", (*BUILD, "--quant", "r.json"), "block_size must be int",
         write_file("r.json", '{"base": "int4", "decoder_linear": {"kind": "int4", "block_size": "64"}}'),
         bundle=False),
    Case("build-recipe-unknown", (*BUILD, "--quant", "int3"), "unknown recipe 'int3'", bundle=False),
    Case("sensitivity-awq-recipe", ("sensitivity", "--model", "tiny-pg1", "--quant", "int4"),
         "without AWQ scales; int4 searches them", bundle=False),
    Case("build-calibration-not-used", (*BUILD, "--quant", "int4-rtn-b32", "--calibration", "c.jsonl"),
         "--calibration is only used by recipes that calibrate", write_file("c.jsonl", "{}"), bundle=False),
    Case("build-out-not-writable", ("build", "--model", "tiny-pg1", "--out", "/sys/pgexport-bundle"),
         "cannot write /sys/pgexport-bundle", bundle=False),
    Case("build-out-is-not-a-bundle", (*BUILD, "--force"), "exists and is not a bundle; refusing to replace it",
         write_file("b/notes.txt", "mine"), bundle=False),
    Case("build-parity-tokens-zero", (*BUILD, "--parity-tokens", "0"), "--parity-tokens", bundle=False),
    Case("bench-out-not-writable", ("bench", "{bundle}", "--out", "/sys/pgexport-bench"),
         "cannot write /sys/pgexport-bench"),
    Case("demo-out-not-writable", ("demo", "--out", "/sys/pgexport-demo"), "cannot write /sys/pgexport-demo",
         bundle=False),
    Case("build-min-agreement-above-one", (*BUILD, "--min-agreement", "1.5"), "--min-agreement", bundle=False),
    # --- --out under a regular file: refused before any work, in every command that writes a folder
    Case("build-out-under-a-file", ("build", "--model", "tiny-pg1", "--out", "somefile/b"),
         "--out somefile/b: somefile is a file, not a folder", write_file("somefile", "x"), bundle=False),
    Case("build-out-deep-under-a-file", ("build", "--model", "tiny-pg1", "--out", "somefile/x/y"),
         "somefile is a file, not a folder", write_file("somefile", "x"), bundle=False),
    Case("package-out-under-a-file", ("package", "{bundle}", "--out", "somefile/pkg"),
         "--out somefile/pkg: somefile is a file, not a folder", write_file("somefile", "x")),
    Case("bench-out-under-a-file", ("bench", "{bundle}", "--out", "somefile/bench"),
         "--out somefile/bench: somefile is a file, not a folder", write_file("somefile", "x")),
    Case("bench-out-is-a-file", ("bench", "{bundle}", "--out", "somefile"), "--out somefile is a file, not a folder",
         write_file("somefile", "x")),
    Case("demo-out-under-a-file", ("demo", "--out", "somefile/demo"), "somefile is a file, not a folder",
         write_file("somefile", "x"), bundle=False),
    # --- a static bundle's fixed shapes are the graphs' own: max_len, prefill lengths and the layout itself
    Case("static-max-len-raised", CAPTION, "holds a KV cache of 144 tokens, but the manifest says kv_cache.max_len 200",
         edit(lambda m: m["kv_cache"].update(max_len=200)), layout="static"),
    Case("static-max-len-lowered", CAPTION, "holds a KV cache of 144 tokens, but the manifest says kv_cache.max_len 100",
         edit(lambda m: m["kv_cache"].update(max_len=100)), layout="static"),
    Case("static-prefill-file-swapped", CAPTION,
         "decoder_prefill_32.onnx takes 80 tokens at a time, but the manifest lists it as the prefill graph for 32",
         swap_graph_file("decoder_prefill_32.onnx", "decoder_prefill_80.onnx"), layout="static"),
    Case("static-prefill-entry-points-at-another-length", CAPTION,
         "decoder_prefill_80.onnx takes 80 tokens at a time, but the manifest lists it as the prefill graph for 32",
         edit(lambda m: m["graphs"]["decoder_prefill_32"].update(file="decoder_prefill_80.onnx")), layout="static"),
    Case("static-prefill-is-the-decode-graph", CAPTION,
         "takes 1 token at a time, but the manifest lists it as the prefill graph for 80",
         swap_graph_file("decoder_prefill_80.onnx", "decoder.onnx"), layout="static"),
    Case("shared-relabelled-static", CAPTION,
         "decoder.onnx takes any number of tokens, but the manifest says KV-cache layout 'static'",
         edit(lambda m: m["kv_cache"].update(DEFAULT_STATIC)), layout="shared"),
    Case("shared-relabelled-static-with-prefill-entries", CAPTION, "takes any number of tokens",
         edit(lambda m: m.update(kv_cache=DEFAULT_STATIC,
                                 graphs=m["graphs"] | {f"decoder_prefill_{n}": m["graphs"]["decoder"] for n in (32, 80)})),
         layout="shared"),
    Case("static-decode-graph-swapped", CAPTION,
         "decoder.onnx takes 32 tokens at a time, but the manifest lists it as the decode graph, which takes one",
         swap_graph_file("decoder.onnx", "decoder_prefill_32.onnx"), layout="static"),
    Case("static-relabelled-shared", CAPTION,
         "decoder.onnx has fixed shapes (1 token at a time), but the manifest says KV-cache layout 'shared'",
         edit(lambda m: m["kv_cache"].update(layout="shared")), layout="static"),
    Case("static-bench-max-len-raised", BENCH, "but the manifest says kv_cache.max_len 200",
         edit(lambda m: m["kv_cache"].update(max_len=200)), layout="static"),
    # --- a checkpoint's geometry bounded (contract.json) when the source is resolved, naming config.json's key
    Case("build-config-zero-heads", BUILD_CKPT, "text_config.num_attention_heads is 0, outside 1..1024",
         config_put("text_config", "num_attention_heads", 0), bundle=False, checkpoint=True),
    Case("build-config-million-layers", BUILD_CKPT, "text_config.num_hidden_layers is 1000000, outside 1..1024",
         config_put("text_config", "num_hidden_layers", 10**6), bundle=False, checkpoint=True),
    Case("build-config-vision-zero-heads", BUILD_CKPT, "vision_config.num_attention_heads is 0, outside 1..1024",
         config_put("vision_config", "num_attention_heads", 0), bundle=False, checkpoint=True),
    Case("build-config-huge-image", BUILD_CKPT, "vision_config.image_size is 1000000000, outside 1..8192",
         config_put("vision_config", "image_size", 10**9), bundle=False, checkpoint=True),
    Case("build-config-patch-larger-than-image", BUILD_CKPT, "geometry.num_image_tokens is 0",
         config_put("vision_config", "patch_size", 64), bundle=False, checkpoint=True),
    Case("build-config-heads-not-a-multiple-of-kv-heads", BUILD_CKPT, "num_heads 4 is not a multiple of num_kv_heads 3",
         config_put("text_config", "num_key_value_heads", 3), bundle=False, checkpoint=True),
    Case("build-config-negative-vocabulary", BUILD_CKPT, "text_config.vocab_size is -5",
         config_put("text_config", "vocab_size", -5), bundle=False, checkpoint=True),
    Case("build-processor-size-huge", BUILD_CKPT,
         "processor_config.json: size.height is 1000000000, but the vision tower takes 32x32 images",
         processor_put("size", {"height": 10**9, "width": 10**9}), bundle=False, checkpoint=True),
    # --- non-finite numbers in the sources: refused before the slow steps, naming the file
    Case("build-processor-mean-nan", BUILD_CKPT, "processor_config.json: image_mean[0] is nan",
         processor_put("image_mean", [float("nan"), 0.5, 0.5]), bundle=False, checkpoint=True),
    Case("build-preprocessor-config-std-infinite", BUILD_CKPT, "preprocessor_config.json: image_std[2] is inf",
         older_preprocessor_config("image_std", [0.5, 0.5, float("inf")]), bundle=False, checkpoint=True),
    Case("build-processor-std-zero", BUILD_CKPT, "image_std[1] is 0; each must be a finite non-zero number",
         processor_put("image_std", [0.5, 0, 0.5]), bundle=False, checkpoint=True),
    Case("build-processor-rescale-nan", BUILD_CKPT, "rescale_factor is nan",
         processor_put("rescale_factor", float("nan")), bundle=False, checkpoint=True),
    Case("build-checkpoint-weight-nan", BUILD_CKPT, "model.safetensors holds NaN or infinite values",
         poisoned_weight(float("nan")), bundle=False, checkpoint=True),
    Case("build-checkpoint-weight-infinite", BUILD_CKPT, "model.safetensors holds NaN or infinite values",
         poisoned_weight(float("-inf"), which=-1), bundle=False, checkpoint=True),
    Case("build-adapter-weight-nan", (*BUILD_CKPT, "--adapter", "lora"),
         "--adapter lora: adapter_model.safetensors holds NaN or infinite values (tensor", nan_adapter, bundle=False,
         checkpoint=True),
    # --- JSONL sets (bench --eval, build --calibration): UTF-8 text as --prompt is, and never silently cut short
    Case("bench-eval-invalid-utf8", (*BENCH, "--eval", "set.jsonl"), "set.jsonl:2: not valid UTF-8",
         write_bytes("set.jsonl", b'{"image": "img.png", "prompt": "ocr"}\n{"image": "img.png", "prompt": "caption \xff\xfe"}\n')),
    Case("bench-eval-escaped-surrogate-prompt", (*BENCH, "--eval", "set.jsonl"),
         "set.jsonl:1: the prompt is not valid UTF-8 text",
         write_file("set.jsonl", '{"image": "img.png", "prompt": "caption \\udcff"}\n')),
    Case("bench-eval-escaped-surrogate-answer", (*BENCH, "--eval", "set.jsonl"), "set.jsonl:1: answer is not valid UTF-8",
         write_file("set.jsonl", '{"image": "img.png", "prompt": "ocr", "answer": "\\ud800"}\n')),
    Case("bench-eval-blank-prompt", (*BENCH, "--eval", "set.jsonl"), "set.jsonl:1: empty prompt",
         write_file("set.jsonl", '{"image": "img.png", "prompt": "  "}\n')),
    Case("bench-eval-more-rows-than-a-set-holds", (*BENCH, "--eval", "set.jsonl", "--limit", "150000"),
         "more than 100,000 eval rows; a set holds at most 100,000", long_set("set.jsonl", 100_001)),
    Case("build-calibration-invalid-utf8", (*BUILD, "--quant", "int4-gptq", "--calibration", "c.jsonl"),
         "c.jsonl:1: not valid UTF-8", write_bytes("c.jsonl", b'{"image": "img.png", "prompt": "\xc3("}\n'),
         bundle=False),
    Case("build-calibration-escaped-surrogate", (*BUILD, "--quant", "int4-gptq", "--calibration", "c.jsonl"),
         "c.jsonl:1: the prompt is not valid UTF-8 text",
         write_file("c.jsonl", '{"image": "img.png", "prompt": "\\udcff caption"}\n'), bundle=False),
    # --- one writer per target: a second build or package into a target being written refuses at once
    Case("build-target-being-written", BUILD, "/b is being written by another build", target_locked("b"),
         bundle=False),
    Case("package-target-being-written", ("package", "{bundle}", "--out", "{root}/pkg"),
         "is being written by another build", target_locked("pkg")),
]

# --- the cases the JavaScript runtime must refuse alike, with the same words (tests/runtime_cases.json, one list for
#     both runtimes; runtimes/web/test/cases.test.js runs them through its CLI)
CASES += [Case(c["name"], ("run", *runtime_cases.args(c["args"])), c["needle"], runtime_cases.setup(c["setup"]))
          for c in runtime_cases.load()]
