"""manifest.json: the contract between `pgexport build` and the runtime.

The runtime reads nothing about a model except this file and the files it lists. Each section is a small
frozen dataclass with from_dict (typed and bounded: a malformed field is a one-line BundleError) and
to_dict; the build writes the manifest through the same classes, so what is written is what is read.
Fields are only ever appended; SCHEMA_VERSION changes when a reader of an older version could misread a
bundle. Version 2 dropped what version 1 stored twice (special-token ids outside `geometry`, generation's
stop ids, the KV-cache name patterns of io_names.py); version 1 bundles read as version 2.

Loading checks, in this order and before any listed file is opened: the manifest's size and JSON; its
schema; each section; that every file it names is a plain file name inside the bundle and covered by a
sha256; then, per file: not a symbolic link, present, and (verify) its sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from pgexport_runtime import provenance, typed_json
from pgexport_runtime.contract import CONTRACT
from pgexport_runtime.errors import BundleError
from pgexport_runtime.geometry import Geometry
from pgexport_runtime.kv_layout import CONCAT, LAYOUTS, KvLayout
from pgexport_runtime.preprocess import Preprocessing

_M = CONTRACT["manifest"]
SCHEMA = _M["schema"]
SCHEMA_VERSION = _M["schema_version"]
READS = _M["reads"]  # version 1 holds everything version 2 reads
MANIFEST = _M["file"]
GRAPHS = _M["graphs"]
OPTIONAL_GRAPHS = _M["optional_graphs"]  # appended later; older bundles simply lack them
KV_LAYOUTS = tuple(LAYOUTS)  # kv_layout.py
MAX_PREFILL_GRAPHS = _M["max_prefill_graphs"]
KV_DTYPES = _M["kv_dtypes"]
MAX_MANIFEST_BYTES = _M["max_manifest_bytes"]  # a 3B int4 manifest is about 20 KB
MAX_TOKENIZER_BYTES = _M["max_tokenizer_bytes"]  # Gemma's tokenizer.json is 17 MB; it is read whole into memory
MAX_FILES = _M["max_files"]
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class MaskCodes:
    """The mask decoder's code format (segment answers): `num_tokens` <seg> codes per object, each below
    `num_codes`, decoded to a mask_size x mask_size mask."""

    num_tokens: int
    num_codes: int
    mask_size: int

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "MaskCodes":
        return cls(typed_json.integer(d, "num_tokens", where, 1, 1024), typed_json.integer(d, "num_codes", where, 1, 1 << 16),
                   typed_json.integer(d, "mask_size", where, 1, 4096))


@dataclass(frozen=True)
class GraphEntry:
    file: str
    data_files: tuple[str, ...]  # external data (decoder.onnx.data), each covered by a sha256
    precision: str  # fp32, fp16, int8, int4, mixed: what the recipe made of the graph's weights
    inputs: tuple[str, ...]  # the names the runtime feeds and fetches (io_names.py); checked against the graph
    outputs: tuple[str, ...]
    codes: MaskCodes | None = None  # mask_decoder only
    weights: str | None = None  # mask_decoder only: the file its weights came from (informational)

    def to_dict(self) -> dict:
        d = {"file": self.file, "data_files": list(self.data_files), "precision": self.precision,
             "inputs": list(self.inputs), "outputs": list(self.outputs)}
        if self.codes is not None:
            d |= {"num_tokens": self.codes.num_tokens, "num_codes": self.codes.num_codes,
                  "mask_size": self.codes.mask_size, "weights": self.weights}
        return d

    @classmethod
    def from_dict(cls, g: dict, where: str, files: dict, mask: bool = False) -> "GraphEntry":
        data = typed_json.texts(g, "data_files", where, optional=True)
        return cls(file=_covered(typed_json.text(g, "file", where), f"{where}.file", files),
                   data_files=tuple(_covered(f, f"{where}.data_files", files) for f in data),
                   precision=typed_json.text(g, "precision", where),
                   inputs=typed_json.texts(g, "inputs", where), outputs=typed_json.texts(g, "outputs", where),
                   codes=MaskCodes.from_dict(g, where) if mask else None,
                   weights=typed_json.text(g, "weights", where, optional=True) if mask else None)


@dataclass(frozen=True)
class KvCache:
    layout: KvLayout = CONCAT
    dtype: str = "float32"
    # a fixed-shape layout only: the buffer's fixed length (prefix + answer), and the prefix lengths a prefill graph
    # exists for (graphs "decoder_prefill_<n>"; a prefix is padded up to the next one)
    max_len: int | None = None
    prefill_lengths: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = {"layout": self.layout.name, "dtype": self.dtype}
        if self.layout.fixed_shape:
            d |= {"max_len": self.max_len, "prefill_lengths": list(self.prefill_lengths)}
        return d

    @property
    def prefill_graphs(self) -> dict[int, str]:
        """prefix length -> the graph entry's name."""
        return {n: prefill_graph(n) for n in self.prefill_lengths}

    @classmethod
    def from_dict(cls, d: dict, g: Geometry) -> "KvCache":
        name = typed_json.text(d, "layout", "kv_cache")
        if name not in LAYOUTS:
            raise typed_json.FieldError(f"KV-cache layout {name!r} is not supported by this runtime "
                                        f"({', '.join(KV_LAYOUTS)})")
        layout = LAYOUTS[name]
        dtype = typed_json.text(d, "dtype", "kv_cache", optional=True) or "float32"
        if dtype not in KV_DTYPES:
            raise typed_json.FieldError(f"KV-cache dtype {dtype!r} is not supported by this runtime")
        if not layout.fixed_shape:
            return cls(layout, dtype)
        max_len = typed_json.integer(d, "max_len", "kv_cache", 2, g.max_position_embeddings)
        lengths = d.get("prefill_lengths")
        if (not isinstance(lengths, list) or not 1 <= len(lengths) <= MAX_PREFILL_GRAPHS
                or any(not isinstance(n, int) or isinstance(n, bool) for n in lengths)
                or lengths != sorted(set(lengths)) or not 2 <= lengths[0] or lengths[-1] > max_len):
            raise typed_json.FieldError(f"kv_cache.prefill_lengths must be 1 to {MAX_PREFILL_GRAPHS} increasing "
                                        f"integers from 2 to max_len ({max_len})")
        return cls(layout, dtype, max_len, tuple(lengths))


def prefill_graph(length: int) -> str:
    """The graph entry (and file stem) of the static layout's prefill graph for prefixes of `length` tokens."""
    return f"decoder_prefill_{length}"


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer file and its special tokens' strings (their ids are the geometry's)."""

    file: str
    image_token: str
    bos_token: str
    eos_token: str
    pad_token: str

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, t: dict, files: dict) -> "TokenizerInfo":
        return cls(_covered(typed_json.text(t, "file", "tokenizer"), "tokenizer.file", files),
                   *(typed_json.text(t, k, "tokenizer") for k in ("image_token", "bos_token", "eos_token", "pad_token")))


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int  # the default when a caller gives none; generation stops at geometry.eos_token_id

    def to_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens}

    @classmethod
    def from_dict(cls, d: dict, g: Geometry) -> "Generation":
        return cls(typed_json.integer(d, "max_new_tokens", "generation", 1, g.max_position_embeddings))


@dataclass(frozen=True)
class Record:
    """The informational sections (provenance.py checks their shape): where the model came from, the tools,
    the build, the parity report of the float32 graphs, the quantization report and, for a bundle made by
    `pgexport package`, how it was packaged. Generation never reads them; `inspect` prints them and `bench`
    picks its reference from `source`."""

    source: dict | None = None
    tools: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    parity: dict | None = None
    quantization: dict | None = None
    package: dict | None = None  # appended: absent from bundles `pgexport build` writes

    def to_dict(self) -> dict:
        d = dict(vars(self))
        if self.package is None:
            del d["package"]
        return d

    @classmethod
    def from_dict(cls, raw: dict) -> "Record":
        provenance.check(raw)
        return cls(raw.get("source"), raw.get("tools") or {}, raw.get("build") or {}, raw.get("parity"),
                   raw.get("quantization"), raw.get("package"))


@dataclass(frozen=True)
class Manifest:
    geometry: Geometry
    graphs: dict[str, GraphEntry]
    kv_cache: KvCache
    tokenizer: TokenizerInfo
    preprocessing: Preprocessing
    generation: Generation
    record: Record
    files: dict[str, str] = field(default_factory=dict)  # plain file name -> sha256 (the writer fills it)
    root: Path | None = None  # the bundle directory, when read from one
    raw: dict | None = field(default=None, repr=False)  # the file as read, for `inspect --json`
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """The sections as written (schema and files are added by the writer)."""
        return {"geometry": self.geometry.to_dict(), "graphs": {k: v.to_dict() for k, v in self.graphs.items()},
                "kv_cache": self.kv_cache.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                "preprocessing": self.preprocessing.to_dict(), "generation": self.generation.to_dict(),
                **self.record.to_dict()}

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


def load_manifest(bundle: str | Path, verify: bool = True, manifest_file: str = MANIFEST,
                  unused_graphs: Collection[str] = ()) -> Manifest:
    """Read and check a bundle's manifest; with verify, also the sha256 of every file it lists but those only
    `unused_graphs` (optional graphs the caller will not load) read: they must be there, and are not read."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    mpath = root / manifest_file
    raw = _read_json(root, mpath)
    try:
        m = _parse(root, raw)
    except typed_json.FieldError as exc:
        raise BundleError(f"{mpath}: {exc}") from None
    unread = _files_of(m, unused_graphs)
    for name, digest in m.files.items():
        path = _bundle_file(root, name)
        if name == m.tokenizer.file and path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise BundleError(f"{root}: {name} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")
        if verify and name not in unread and sha256_file(path) != digest:
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (modified or corrupt)")
    return m


def _files_of(m: Manifest, graphs: Collection[str]) -> set[str]:
    """The files only the optional `graphs` of m read (a file another graph or the tokenizer lists is not)."""
    if set(graphs) - set(OPTIONAL_GRAPHS):
        raise ValueError(f"only optional graphs go unread, not {sorted(set(graphs) - set(OPTIONAL_GRAPHS))}")
    listed = lambda e: {e.file, *e.data_files}  # noqa: E731
    theirs = set().union(*(listed(e) for n, e in m.graphs.items() if n in graphs))
    others = set().union(*(listed(e) for n, e in m.graphs.items() if n not in graphs)) | {m.tokenizer.file}
    return theirs - others


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
    if version not in READS or isinstance(version, bool):
        raise BundleError(f"{mpath}: schema version {_short(version)} is not supported by this runtime "
                          f"(it reads versions {', '.join(map(str, READS))})")
    return raw


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _parse(root: Path, raw: dict) -> Manifest:
    files = _files(typed_json.section(raw, "files", "manifest"))
    geometry = Geometry.from_dict(typed_json.section(raw, "geometry", "manifest"))
    graphs_raw = typed_json.section(raw, "graphs", "manifest")
    kv_cache = KvCache.from_dict(typed_json.section(raw, "kv_cache", "manifest"), geometry)
    graphs = {}
    # a static bundle's prefill graphs are listed once its graphs have fixed shapes (the build's last steps)
    optional = OPTIONAL_GRAPHS + tuple(kv_cache.prefill_graphs.values())
    for name in GRAPHS + optional:
        g = typed_json.section(graphs_raw, name, "graphs", optional=name in optional)
        if g is not None:
            graphs[name] = GraphEntry.from_dict(g, f"graphs.{name}", files, mask=name == "mask_decoder")
    return Manifest(geometry=geometry, graphs=graphs, kv_cache=kv_cache,
                    tokenizer=TokenizerInfo.from_dict(typed_json.section(raw, "tokenizer", "manifest"), files),
                    preprocessing=Preprocessing.from_dict(typed_json.section(raw, "preprocessing", "manifest")),
                    generation=Generation.from_dict(typed_json.section(raw, "generation", "manifest"), geometry),
                    record=Record.from_dict(raw), files=files, root=root, raw=raw,
                    schema_version=raw["schema_version"])


def _files(files: dict) -> dict[str, str]:
    if len(files) > MAX_FILES:
        raise typed_json.FieldError(f"files lists {len(files)} files, more than {MAX_FILES}")
    for name, digest in files.items():
        typed_json.file_name(name, "files")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise typed_json.FieldError(f"files.{name} is not a sha256 (64 lowercase hex digits)")
    return files


def _covered(name: str, where: str, files: dict) -> str:
    typed_json.file_name(name, where)
    if name not in files:
        kind = "tokenizer file" if where.startswith("tokenizer") else f"graph file {name}"
        raise typed_json.FieldError(f"{kind} is not covered by a sha256")
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
