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
import shutil
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
        message = write_failure(exc, target)
        if message is None:
            raise
        raise UserError(f"{message}; nothing was written") from None


def write_failure(exc: OSError, target: Path) -> str | None:
    """"cannot write TARGET: REASON" for a full disk, a quota, a read-only or forbidden target; None for other
    errors."""
    if exc.errno in WRITE_ERRNOS:
        return f"cannot write {target}: {exc.strerror or exc}"
    if exc.errno is None and SHORT_WRITE.match(str(exc)):
        return f"cannot write {target}: no space left on device (or a file size limit)"
    return None


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


def remove_except(root: Path, keep: Path | None = None) -> None:
    """Remove the folder `root` and all it holds, but the file `keep` under it (a log an error message names)
    and the folders that lead to it."""
    root = Path(root)
    if keep is None or root not in Path(keep).parents or not Path(keep).is_file():
        shutil.rmtree(root, ignore_errors=True)
        return
    for entry in root.iterdir():
        if entry == keep:
            continue
        if entry in Path(keep).parents:
            remove_except(entry, keep)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


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
