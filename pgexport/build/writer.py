"""Writing a bundle: into a temporary directory beside the target, renamed into place only when done.

A failed or interrupted build leaves no directory that looks like a bundle: the temporary one has no
manifest until the last step, and is removed on failure. One build at a time writes a target: the writer holds
the target's lock (target_lock.py) from before its temporary directory exists until the rename.
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

from pgexport.build.target_lock import TargetLock, target_name
from pgexport.files import check_folder_target


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


def remove_stale(directory: Path, notify, holding: str | None = None) -> None:
    """Remove what killed builds left in `directory`: their temporary and old directories, and lock files.

    A build writes into `.pgexport-tmp-NAME-PID` and only renames it at the end; SIGKILL or a power cut leaves
    it behind. Whether a build of NAME still runs is the lock it holds (target_lock.py), not its PID, which
    may name a live process of another PID namespace or be reused: a directory is removed only while its
    target's lock is free, or held by this process (`holding`: the target this process is building).
    """
    groups: dict[str, list[Path]] = {}
    for entry in sorted(directory.glob(".pgexport-*")):
        found = target_name(entry.name)
        if found is not None and (found[0] == "lock" or (entry.is_dir() and not entry.is_symlink())):
            groups.setdefault(found[1], []).append(entry)
    for name, entries in groups.items():
        lock = None
        if name != holding:
            lock = TargetLock(directory, name)
            try:
                if not lock.try_acquire():
                    continue  # a build of NAME is running: its directories are its own
            except OSError:
                continue
        try:
            for entry in entries:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                    notify(f"removed {entry.name}, left by an interrupted build (no build of {name} holds its lock)")
        finally:
            if lock is not None:
                lock.release()  # removes the stale lock file too


class BundleWriter:
    """A bundle written into `.pgexport-tmp-NAME-PID` beside the target NAME, under NAME's lock, and renamed into
    place by `commit` (replacing an existing bundle only with force). Used as a context manager: the lock is
    taken on entry and released on exit, and a failure removes the temporary directory."""

    def __init__(self, out: Path, force: bool = False, notify=None):
        self.out = Path(out)
        self.force = force
        self.notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))
        check_folder_target(self.out)
        self._check_target()
        self.tmp = self.out.parent / f".pgexport-tmp-{self.out.name}-{os.getpid()}"
        self.lock = TargetLock(self.out.parent, self.out.name)
        self._hashes: dict = {}

    def _check_target(self, when: str = "") -> None:
        if self.out.exists() and not self.force:
            raise UserError(f"{self.out} {when or 'already exists'} (use --force to replace it)")
        if self.out.exists() and not (self.out / MANIFEST).is_file():
            raise UserError(f"{self.out} {when or 'exists'} and is not a bundle; refusing to replace it")

    def __enter__(self) -> "BundleWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if not self.lock.try_acquire():
            raise UserError(f"{self.out} is being written by another build (it holds {self.lock.path}); wait for it "
                            "to finish, or choose another --out")
        try:
            self._check_target()  # a build that held the lock until just now may have written it
            remove_stale(self.out.parent, self.notify, holding=self.out.name)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self.lock.release()
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
        """Move the finished bundle into place (replacing an older bundle only now, and only with force).

        The target is checked again: the lock keeps other builds out, but not other programs, which may have
        put something at --out since the build started."""
        self._check_target("appeared while this build ran")
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
