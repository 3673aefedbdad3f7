"""manifest.json: the contract between `pgexport build` and the runtime.

The runtime reads nothing about a model except this file and the files it lists. Fields are only ever
appended; SCHEMA_VERSION changes when a reader of an older version could misread a bundle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError
from .geometry import Geometry

SCHEMA = "pgexport.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("vision_encoder", "projector", "decoder")
OPTIONAL_GRAPHS = ("mask_decoder",)  # appended later; older bundles simply lack them
KV_LAYOUTS = ("concat",)  # present = past + new tokens, written by ORT into a second buffer (kv_cache.py)


@dataclass(frozen=True)
class GraphEntry:
    file: str
    data_files: tuple[str, ...]
    precision: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    root: Path
    raw: dict
    geometry: Geometry
    graphs: dict[str, GraphEntry]

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def tokenizer_file(self) -> Path:
        return self.root / self.raw["tokenizer"]["file"]

    @property
    def preprocessing(self) -> dict:
        return self.raw["preprocessing"]

    @property
    def generation(self) -> dict:
        return self.raw["generation"]


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
    if not mpath.is_file():
        raise BundleError(f"{root}: not a pgexport bundle (no {manifest_file})")
    try:
        raw = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: unreadable manifest ({exc})") from None
    if raw.get("schema") != SCHEMA:
        raise BundleError(f"{mpath}: not a pgexport manifest (schema {raw.get('schema')!r})")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: schema version {version!r} is not supported by this runtime (it reads version {SCHEMA_VERSION})"
        )
    files: dict = raw.get("files", {})
    for name, digest in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{root}: missing bundle file {name}")
        if verify and sha256_file(path) != digest:
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (modified or corrupt)")
    graphs = {}
    for name in GRAPHS + OPTIONAL_GRAPHS:
        g = raw["graphs"].get(name)
        if g is None and name in OPTIONAL_GRAPHS:
            continue
        if g is None:
            raise BundleError(f"{mpath}: graph {name!r} is missing")
        for f in [g["file"], *g.get("data_files", [])]:
            if f not in files:
                raise BundleError(f"{mpath}: graph file {f} is not covered by a sha256")
        graphs[name] = GraphEntry(
            g["file"], tuple(g.get("data_files", [])), g["precision"], tuple(g["inputs"]), tuple(g["outputs"])
        )
    layout = raw.get("kv_cache", {}).get("layout")
    if layout not in KV_LAYOUTS:
        raise BundleError(f"{mpath}: KV-cache layout {layout!r} is not supported by this runtime ({', '.join(KV_LAYOUTS)})")
    if raw["tokenizer"]["file"] not in files:
        raise BundleError(f"{mpath}: tokenizer file is not covered by a sha256")
    return Manifest(root=root, raw=raw, geometry=Geometry.from_dict(raw["geometry"]), graphs=graphs)
