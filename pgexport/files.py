"""Writing files the user will keep: whole or not at all, and a full disk is one line.

Every file a command writes goes to a temporary name beside its target and is renamed into place once
complete (`atomic_path`), so an interrupted or failed write never leaves a truncated file under the real
name. A full disk, a quota, a read-only or forbidden target (`write_errors`) is the user's to fix: a
UserError naming the target, not a traceback.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgexport_runtime.errors import UserError

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


@contextmanager
def write_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise UserError(f"cannot write {target}: {exc.strerror or exc}; nothing was written") from None
        if exc.errno is None and SHORT_WRITE.match(str(exc)):
            raise UserError(f"cannot write {target}: no space left on device (or a file size limit); nothing "
                            "was written") from None
        raise


# numpy's ndarray.tofile (onnx_ir writes external weights with it) reports a full disk as an OSError of its own
# with no errno: "Not enough free space to write N bytes after offset M" when its fallocate fails with ENOSPC,
# "N requested and M written" when the write itself comes up short (ENOSPC, EFBIG)
SHORT_WRITE = re.compile(r"^(Not enough free space to write \d+ bytes|\d+ requested and \d+ written)")


def check_folder_target(path: Path, option: str = "--out") -> None:
    """`path` is to be a folder: refuse, before any work, a path that is a file or lies under one (mkdir would
    fail there with NotADirectoryError or FileExistsError after the work was done)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder")
    for above in path.parents:
        if above.exists() or above.is_symlink():
            if not above.is_dir():
                raise UserError(f"{option} {path}: {above} is a file, not a folder")
            return


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; renamed to `path` when the block ends without error, removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")  # keeps the suffix: savefig reads it
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
