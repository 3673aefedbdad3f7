"""The bundle's files as `pgexport serve` sends them: each one the manifest lists, and only while it holds the
bytes the manifest's sha256 names.

A listed name is no promise about what sits under it by the time a request comes: the file may have been replaced
by a hard link to a file outside the bundle (a symbolic link is refused when opened), or rewritten. So a file is
opened once per request without following links, refused when it has another hard link, and its sha256 checked
on the open file before the first byte is sent. A file is hashed once: the match is remembered with the file's
identity (device, inode, size, modification and change times). A replacement changes the inode, and a write the
change time, which no one can set back (short of a write within the same clock tick as the check).
manifest.json has no sha256 of its own; its bytes when the server started stand in for one.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import MANIFEST, load_manifest, sha256_file


class Refused(Exception):
    """A listed file that is not served as it is now; the message says why."""


class BundleFiles:
    def __init__(self, root: Path, digests: dict[str, str]):
        self.root = root
        self.digests = dict(digests)  # name -> sha256, manifest.json included
        self._verified: dict[str, tuple] = {}  # name -> the identity of the file whose sha256 matched
        self._lock = threading.Lock()

    @classmethod
    def of(cls, bundle: Path) -> BundleFiles:
        """The files of `bundle`'s manifest (checked as the runtime checks it; the sha256s when a file is asked for)."""
        before = sha256_file(bundle / MANIFEST) if (bundle / MANIFEST).is_file() else None
        manifest = load_manifest(bundle, verify=False)
        digest = sha256_file(manifest.path(MANIFEST))
        if digest != before:
            raise UserError(f"{bundle}: {MANIFEST} changed while it was read; try again")
        return cls(manifest.root, {**manifest.files, MANIFEST: digest})

    def open(self, name: str) -> tuple[BinaryIO, int]:
        """The listed file `name`, open at its start, and its size. Raises Refused."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise Refused(f"cannot open it ({exc.strerror or exc})") from None
        f = os.fdopen(fd, "rb")
        try:
            self._check(name, f)
        except BaseException:
            f.close()
            raise
        return f, os.fstat(f.fileno()).st_size

    def _check(self, name: str, f: BinaryIO) -> None:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        if st.st_nlink != 1:  # another name for these bytes, maybe outside the bundle
            raise Refused(f"it has {st.st_nlink} hard links; a bundle file has one")
        identity = _identity(st)
        with self._lock:
            if self._verified.get(name) == identity:
                return
        h = hashlib.sha256()
        while block := f.read(1 << 22):
            h.update(block)
        f.seek(0)
        if h.hexdigest() != self.digests[name]:
            raise Refused("it does not match its sha256 in the manifest (modified or corrupt)")
        if _identity(os.fstat(f.fileno())) != identity:  # written to while it was hashed
            raise Refused("it changed while it was checked")
        with self._lock:
            self._verified[name] = identity


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
