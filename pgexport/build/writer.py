"""Writing a bundle: into a temporary directory beside the target, renamed into place only when done.

A failed or interrupted build leaves no directory that looks like a bundle: the temporary one has no
manifest until the last step, and is removed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, sha256_file


class GraphFilesError(Exception):
    """A graph refers to an external-data file that the bundle does not hold (a build bug, caught before commit)."""


def check_graph_files(directory: Path, manifest: dict) -> None:
    """Every external-data file a graph names must be in the bundle and listed under the graph's data_files.

    Structural only (the graphs are read without their weights), so it runs even when parity and the
    accuracy gate are skipped: a bundle that onnxruntime cannot open is never committed.
    """
    import onnx

    for name, graph in manifest["graphs"].items():
        proto = onnx.load(directory / graph["file"], load_external_data=False)
        tensors = list(proto.graph.initializer)
        tensors += [a.t for node in proto.graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        named = set()
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                named.update(e.value for e in t.external_data if e.key == "location")
        missing = sorted(f for f in named if not (directory / f).is_file())
        unlisted = sorted(named - set(graph.get("data_files", [])))
        if missing or unlisted:
            raise GraphFilesError(f"{name} graph {graph['file']} refers to external data "
                                  f"{', '.join(missing or unlisted)} that the bundle "
                                  f"{'does not hold' if missing else 'does not list'}")


def remove_stale(directory: Path, notify) -> None:
    """Remove the temp directories that killed builds left in `directory` (their process is gone).

    A build writes into `.pgexport-tmp-NAME-PID` and only renames it at the end; SIGKILL or a power cut
    leaves it behind. The PID says whether its build still runs: a live process's directory is never touched.
    """
    for stale in sorted(directory.glob(".pgexport-*-*")):
        kind, _, pid = stale.name.rpartition("-")
        if not (kind.startswith((".pgexport-tmp-", ".pgexport-old-")) and pid.isdigit() and stale.is_dir()):
            continue
        if _process_alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)
        notify(f"removed {stale.name}, left by an interrupted build (process {pid} is gone)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class BundleWriter:
    def __init__(self, out: Path, force: bool = False, notify=None):
        self.out = Path(out)
        self.notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))
        if self.out.exists() and not force:
            raise UserError(f"{self.out} already exists (use --force to replace it)")
        if self.out.exists() and not (self.out / MANIFEST).is_file():
            raise UserError(f"{self.out} exists and is not a bundle; refusing to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".pgexport-tmp-{self.out.name}-{os.getpid()}"
        self._hashes: dict = {}

    def __enter__(self) -> "BundleWriter":
        remove_stale(self.out.parent, self.notify)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def path(self, name: str) -> Path:
        return self.tmp / name

    partial_name = "manifest.partial.json"

    def write_manifest(self, manifest: dict, final: bool) -> None:
        """Hash every file and write the manifest (schema first, files last).

        Before the last step it is written as manifest.partial.json, which the parity check reads: a build
        killed before the end (even by SIGKILL) never leaves a manifest.json behind.
        """
        skip = {MANIFEST, self.partial_name}
        files = {p.name: self._hash(p) for p in sorted(self.tmp.iterdir()) if p.is_file() and p.name not in skip}
        body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **manifest, "files": files}
        (self.tmp / (MANIFEST if final else self.partial_name)).write_text(json.dumps(body, indent=2) + "\n")
        if final:
            (self.tmp / self.partial_name).unlink(missing_ok=True)

    def _hash(self, p: Path) -> str:
        st = p.stat()
        key = (p.name, st.st_size, st.st_mtime_ns)
        if key not in self._hashes:  # the manifest is written twice (before and after parity): hash once
            self._hashes[key] = sha256_file(p)
        return self._hashes[key]

    def commit(self) -> Path:
        """Move the finished bundle into place (replacing an older bundle only now)."""
        old = None
        if self.out.exists():
            old = self.out.parent / f".pgexport-old-{self.out.name}-{os.getpid()}"
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


def derive_bundle(src: Path, out: Path, write: Callable[[BundleWriter, dict], dict], force: bool = False,
                  notify=None) -> dict:
    """Make the bundle `out` from the bundle `src` without a build; -> what `write` returned.

    `write(writer, manifest)` writes each file it replaces or adds at writer.path(name), reading the source's
    from src, and may edit `manifest` (the source's) in place; what it returns is recorded under build.derived
    with the source's directory name. Every other file of src is hard-linked (copied across file systems). The source's
    sha256 values are checked first; the new manifest lists every file's own and drops quantization.accuracy,
    which was measured on the source's graphs. A failure leaves neither `out` nor a temporary directory.
    """
    from pgexport_runtime import typed_json

    src = Path(src)
    manifest = json.loads((src / MANIFEST).read_text())
    for name, digest in manifest["files"].items():
        typed_json.file_name(name, f"{src}: files")  # nothing outside the bundle is read or linked
        if sha256_file(src / name) != digest:
            raise UserError(f"{src}: {name} does not match its sha256 in the manifest (modified or corrupt)")
    with BundleWriter(out, force, notify) as writer:
        record = write(writer, manifest)
        for name, digest in manifest["files"].items():
            if not writer.path(name).exists():
                try:
                    os.link(src / name, writer.path(name))
                except OSError:
                    shutil.copy2(src / name, writer.path(name))
                st = writer.path(name).stat()
                writer._hashes[(name, st.st_size, st.st_mtime_ns)] = digest  # checked above: not hashed again
        (manifest.get("quantization") or {}).pop("accuracy", None)
        manifest.setdefault("build", {})["derived"] = {"from": src.resolve().name, **record}
        writer.write_manifest(manifest, final=True)
        writer.commit()
    return record
