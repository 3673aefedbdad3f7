"""Faults during a build: SIGTERM or SIGKILL, a full disk, a second build or another program at the same --out.
Nothing that looks like a bundle is left, no PyTorch child outlives the build, and no build replaces a bundle
it was not asked to."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start_build(out: Path) -> tuple[subprocess.Popen, int]:
    """A build of tiny-pg1, returned once its PyTorch child has started exporting."""
    proc = subprocess.Popen([sys.executable, "-m", "pgexport.cli", "build", "--model", "tiny-pg1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        kids = _children(proc.pid)
        tmp = list(out.parent.glob(f".pgexport-tmp-{out.name}-{proc.pid}/.torch/job.json"))
        if kids and tmp:
            time.sleep(2.0)  # well inside the PyTorch phase
            return proc, kids[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the build's PyTorch child never started")


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _looks_like_a_bundle(root: Path) -> list[Path]:
    return list(root.rglob("manifest.json")) + list(root.rglob("manifest.partial.json"))


def test_sigterm_cleans_up_like_sigint(tmp_path):
    out = tmp_path / "b"
    proc, child = _start_build(out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("interrupted; nothing was written")
    assert _wait_gone(child, 10), "the PyTorch child outlived the build"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_takes_the_child_along_and_the_next_build_clears_the_leftovers(tmp_path):
    out = tmp_path / "b"
    proc, child = _start_build(out)
    proc.kill()
    proc.wait(timeout=30)
    assert _wait_gone(child, 10), "the PyTorch child outlived the build"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".pgexport-lock-b", f".pgexport-tmp-b-{proc.pid}"]  # SIGKILL leaves the temp dir (nothing can run) ...
    assert _looks_like_a_bundle(tmp_path) == []  # ... but nothing in it looks like a bundle

    done = subprocess.run([sys.executable, "-m", "pgexport.cli", "build", "--model", "tiny-pg1", "--out",
                           str(tmp_path / "other"), "--skip-parity"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    notes = [ln for ln in done.stderr.splitlines() if "left by an interrupted build" in ln]
    assert len(notes) == 1 and f".pgexport-tmp-b-{proc.pid}" in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def _build(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgexport.cli", "build", "--model", "tiny-pg1", "--out", str(out),
                             "--skip-parity", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_builds_into_one_target_at_once_one_refuses(tmp_path):
    """The second build finds the target's lock held and refuses in one line; the first one's bundle stays."""
    procs = [_build(tmp_path / "same"), _build(tmp_path / "same")]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    ok, refused = outs[codes.index(0)], outs[codes.index(2)]
    lines = [ln for ln in refused[1].splitlines() if ln.strip()]
    assert "Traceback" not in refused[1] and len(lines) == 1, refused[1]
    assert lines[0].startswith(f"error: {tmp_path / 'same'} is being written by another build"), lines
    assert ok[0].startswith(f"wrote {tmp_path / 'same'}") and "wrote" not in refused[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]
    assert (tmp_path / "same" / "manifest.json").is_file()


def test_a_target_that_appears_during_the_build_is_not_replaced(tmp_path):
    """Another program creates --out while the build runs: without --force the build refuses at the rename."""
    out = tmp_path / "b"
    proc, _ = _start_build(out)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _, err = proc.communicate(timeout=600)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and "appeared while this build ran" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_stale_directories_are_judged_by_their_lock_not_their_pid(tmp_path):
    """A live build in another PID namespace has a PID that is no process here: its lock, held, keeps its
    temporary directory. A leftover whose PID happens to be a live process here goes once its lock is free."""
    from pgexport.build.target_lock import TargetLock
    from pgexport.build.writer import remove_stale

    no_such_pid = int(Path("/proc/sys/kernel/pid_max").read_text())  # PIDs are below pid_max
    live = tmp_path / f".pgexport-tmp-live-{no_such_pid}"
    (live / ".torch").mkdir(parents=True)
    other = TargetLock(tmp_path, "live")
    assert other.try_acquire()  # held as that build holds it (flock: a second open file is another holder)
    left = tmp_path / ".pgexport-tmp-left-1"  # PID 1 is alive, but no build of "left" holds the lock
    left.mkdir()
    (tmp_path / ".pgexport-lock-left").touch()  # and the lock file a SIGKILLed build leaves

    notes: list[str] = []
    remove_stale(tmp_path, notes.append)
    assert live.is_dir() and not left.exists() and not (tmp_path / ".pgexport-lock-left").exists()
    assert len(notes) == 1 and left.name in notes[0]
    assert not TargetLock(tmp_path, "live").try_acquire()  # still that build's

    other.release()  # that build ends without cleaning up (as if killed): the next look removes its directory
    remove_stale(tmp_path, notes.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes every write past 300 kB fail with EFBIG, in the build and its child alike, as a full
    disk does with ENOSPC (SIGXFSZ ignored, so the write returns the error instead of killing the process)."""
    import resource

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    done = subprocess.run([sys.executable, "-m", "pgexport.cli", "build", "--model", "tiny-pg1", "--out",
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=600, preexec_fn=small_disk)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {tmp_path / 'b'}:"), lines
    assert "nothing was written" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("limit", [None, 100_000])
def test_numpy_short_write_is_a_full_disk(tmp_path, limit):
    """onnx_ir writes external weights with numpy's tofile, which reports a full disk as an OSError of its own
    without errno (a 3B build that filled the disk printed a traceback): write_errors makes it the one-line
    full-disk error. /dev/full answers every write with ENOSPC; RLIMIT_FSIZE cuts a write short with EFBIG."""
    import resource

    import numpy as np

    from pgexport.files import write_errors
    from pgexport_runtime.errors import UserError

    target = Path("/dev/full") if limit is None else tmp_path / "w.bin"
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        with pytest.raises(UserError, match="no space left on device .* nothing was written"):
            with write_errors(tmp_path / "b"), open(target, "wb") as f:
                np.zeros(1 << 20, np.float32).tofile(f)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)
    with pytest.raises(OSError, match="unrelated"):  # other errors are not turned into a full disk
        with write_errors(tmp_path / "b"):
            raise OSError("unrelated")
