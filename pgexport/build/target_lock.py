"""One writer per bundle target: a lock file beside --out, held with flock(2) for the whole build.

`.pgexport-lock-NAME`, next to the target NAME, is taken before the build's temporary directory exists and
held until that directory has been renamed into place or removed. A second build (or `package`) into the same
target finds it held and refuses at once, instead of finishing later and replacing the first one's bundle.

The kernel drops the lock when its holder exits, however it exits, and it knows nothing of PIDs: a build in
another PID namespace (a container sharing the folder) holds it just the same. So the directories a build of
NAME leaves beside it (`.pgexport-tmp-NAME-PID`, `.pgexport-old-NAME-PID`) are stale exactly when NAME's lock
can be taken; the PID in their names only keeps them apart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

PREFIX = ".pgexport-lock-"


class TargetLock:
    def __init__(self, parent: Path, name: str):
        self.path = Path(parent) / f"{PREFIX}{name}"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            # the previous holder removes the file before it unlocks (release): a lock taken on a file that is no
            # longer at self.path guards nothing, so open the one that is there now and try again
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file, then unlock (a process that opened it meanwhile sees it gone and retries)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


def target_name(entry: str) -> tuple[str, str] | None:
    """(kind, NAME) of what builds leave beside a target: ("lock", NAME), ("tmp", NAME) or ("old", NAME); None for
    anything else."""
    if entry.startswith(PREFIX) and len(entry) > len(PREFIX):
        return "lock", entry[len(PREFIX):]
    for kind in ("tmp", "old"):
        prefix = f".pgexport-{kind}-"
        if entry.startswith(prefix):
            name, _, pid = entry[len(prefix):].rpartition("-")
            if name and pid.isdigit():
                return kind, name
    return None
