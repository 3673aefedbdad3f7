"""manifest.json: the contract between `pgexport build` and the runtime.

The runtime reads nothing about a model except this file and the files it lists. Fields are only ever
appended; SCHEMA_VERSION changes when a reader of an older version could misread a bundle.

Loading checks, in this order and before any listed file is opened: the manifest's size and JSON; its
schema; each section it reads, typed and bounded (fields.py, Geometry.from_dict, Preprocessing.from_dict,
provenance.py); that every file it names is a plain file name inside the bundle and covered by a sha256;
then, per file: not a symbolic link, present, and (verify) its sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import fields, provenance
from .errors import BundleError
from .geometry import Geometry
from .preprocess import Preprocessing

SCHEMA = "pgexport.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("vision_encoder", "projector", "decoder")
OPTIONAL_GRAPHS = ("mask_decoder",)  # appended later; older bundles simply lack them
KV_LAYOUTS = ("concat",)  # present = past + new tokens, written by ORT into a second buffer (kv_cache.py)
MAX_MANIFEST_BYTES = 8 << 20  # a 3B int4 manifest is about 20 KB
MAX_TOKENIZER_BYTES = 256 << 20  # Gemma's tokenizer.json is 17 MB; it is read whole into memory
MAX_FILES = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class GraphEntry:
    file: str
    data_files: tuple[str, ...]
    precision: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    image_token: str
    bos_token: str
    eos_token: str
    pad_token: str


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int  # the default when a caller gives none
    eos_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    root: Path
    raw: dict  # the whole JSON, for `inspect --json`; the runtime reads the typed sections below
    geometry: Geometry
    graphs: dict[str, GraphEntry]
    tokenizer: TokenizerInfo
    preprocessing: Preprocessing
    generation: Generation
    files: dict[str, str]  # plain file name -> sha256

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def tokenizer_file(self) -> Path:
        return self.root / self.tokenizer.file


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle: str | Path, verify: bool = True, manifest_file: str = MANIFEST) -> Manifest:
    """Read and check a bundle's manifest; with verify, also the sha256 of every file it lists."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    mpath = root / manifest_file
    raw = _read_json(root, mpath)
    try:
        m = _parse(root, raw)
    except fields.FieldError as exc:
        raise BundleError(f"{mpath}: {exc}") from None
    for name, digest in m.files.items():
        path = _bundle_file(root, name)
        if name == m.tokenizer.file and path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise BundleError(f"{root}: {name} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")
        if verify and sha256_file(path) != digest:
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (modified or corrupt)")
    return m


def _read_json(root: Path, mpath: Path) -> dict:
    if mpath.is_symlink():
        raise BundleError(f"{mpath} is a symbolic link; a bundle holds plain files only")
    if not mpath.is_file():
        raise BundleError(f"{root}: not a pgexport bundle (no {mpath.name})")
    with open(mpath, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a manifest this runtime reads")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad JSON or encoding, an over-long integer, deep nesting
        raise BundleError(f"{mpath}: unreadable manifest ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{mpath}: not a pgexport manifest (a JSON {type(raw).__name__}, not an object)")
    if raw.get("schema") != SCHEMA:
        raise BundleError(f"{mpath}: not a pgexport manifest (schema {_short(raw.get('schema'))})")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise BundleError(f"{mpath}: schema version {_short(version)} is not supported by this runtime "
                          f"(it reads version {SCHEMA_VERSION})")
    return raw


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _parse(root: Path, raw: dict) -> Manifest:
    files = _files(fields.section(raw, "files", "manifest"))
    geometry = Geometry.from_dict(fields.section(raw, "geometry", "manifest"))
    graphs_raw = fields.section(raw, "graphs", "manifest")
    graphs = {}
    for name in GRAPHS + OPTIONAL_GRAPHS:
        g = fields.section(graphs_raw, name, "graphs", optional=name in OPTIONAL_GRAPHS)
        if g is not None:
            graphs[name] = _graph(g, f"graphs.{name}", files)
    layout = fields.text(fields.section(raw, "kv_cache", "manifest"), "layout", "kv_cache")
    if layout not in KV_LAYOUTS:
        raise fields.FieldError(f"KV-cache layout {layout!r} is not supported by this runtime ({', '.join(KV_LAYOUTS)})")
    t = fields.section(raw, "tokenizer", "manifest")
    tokenizer = TokenizerInfo(_covered(fields.text(t, "file", "tokenizer"), "tokenizer.file", files),
                              *(fields.text(t, k, "tokenizer") for k in ("image_token", "bos_token", "eos_token",
                                                                          "pad_token")))
    gen = fields.section(raw, "generation", "manifest")
    generation = Generation(
        fields.integer(gen, "max_new_tokens", "generation", 1, geometry.max_position_embeddings),
        fields.integers(gen, "eos_token_ids", "generation", 0, geometry.vocab_size - 1, max_len=64))
    preprocessing = Preprocessing.from_dict(fields.section(raw, "preprocessing", "manifest"))
    provenance.check(raw)
    return Manifest(root=root, raw=raw, geometry=geometry, graphs=graphs, tokenizer=tokenizer,
                    preprocessing=preprocessing, generation=generation, files=files)


def _files(files: dict) -> dict[str, str]:
    if len(files) > MAX_FILES:
        raise fields.FieldError(f"files lists {len(files)} files, more than {MAX_FILES}")
    for name, digest in files.items():
        fields.file_name(name, "files")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise fields.FieldError(f"files.{name} is not a sha256 (64 lowercase hex digits)")
    return files


def _graph(g: dict, where: str, files: dict) -> GraphEntry:
    return GraphEntry(
        file=_covered(fields.text(g, "file", where), f"{where}.file", files),
        data_files=tuple(_covered(f, f"{where}.data_files", files) for f in fields.texts(g, "data_files", where,
                                                                                          optional=True)),
        precision=fields.text(g, "precision", where),
        inputs=fields.texts(g, "inputs", where),
        outputs=fields.texts(g, "outputs", where),
    )


def _covered(name: str, where: str, files: dict) -> str:
    fields.file_name(name, where)
    if name not in files:
        kind = "tokenizer file" if where.startswith("tokenizer") else f"graph file {name}"
        raise fields.FieldError(f"{kind} is not covered by a sha256")
    return name


def _bundle_file(root: Path, name: str) -> Path:
    """A listed file as a path that stays inside the bundle: the name is plain (checked at parse) and the
    file itself is not a symbolic link, so nothing outside `root` is read or hashed."""
    path = root / name
    if path.is_symlink():
        raise BundleError(f"{root}: {name} is a symbolic link; a bundle holds plain files only")
    if not path.exists():
        raise BundleError(f"{root}: missing bundle file {name}")
    if not path.is_file():
        raise BundleError(f"{root}: {name} is not a regular file")
    return path
