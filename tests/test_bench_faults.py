"""Faults during `pgexport bench`: a full disk in a worker, a worker that dies, SIGTERM. One line that says why
(and a log it names still there), and nothing else of the run left in --out."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and RLIMIT_FSIZE are Linux's")

SPEED = ("--repeats", "1", "--warmup", "0")


def _bench(bundle: Path, out: Path, *extra: str, preexec_fn=None) -> subprocess.Popen:
    def start():
        # SIGINT as a terminal delivers it: a test run started in the background by a shell inherits SIGINT
        # ignored, and Python then never installs its KeyboardInterrupt handler, in the bench or its workers
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([sys.executable, "-m", "pgexport.cli", "bench", str(bundle), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=start)


def _first_worker(proc: subprocess.Popen, out: Path, settle: float = 1.0) -> int:
    """The PID of the bench's first worker, once it has started (its log exists), `settle` seconds later."""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            kids = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except FileNotFoundError:
            kids = []
        if kids and (out / "work" / "worker-0.log").exists():
            time.sleep(settle)  # inside its imports
            return kids[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the bench's worker never started")


def _interrupt(pid: int) -> None:
    """SIGINT once the worker is inside its imports (libtorch mapped: its Python's own SIGINT handler is long set,
    and the work has not begun), then again every 0.2 s until it ends, so that one landing in code that catches
    every exception does not decide the test."""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
                break
        except OSError:
            return
        time.sleep(0.01)
    while time.time() < deadline:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def _one_line(proc: subprocess.Popen, code: int) -> str:
    _, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code and "Traceback" not in err and len(lines) == 1, (proc.returncode, err[-3000:])
    return lines[0]


def test_a_full_disk_in_a_worker_says_so_and_leaves_nothing(bundles, tmp_path):
    """Full mode writes each item's log-probabilities (221 kB here) in the reference worker; every file the bench
    process itself writes before is smaller than the 150 kB RLIMIT_FSIZE (a full disk's EFBIG, SIGXFSZ ignored)."""
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    out = tmp_path / "bench"
    proc = _bench(bundles["tiny-pg1"], out, "--mode", "full", "--eval", "generated", "--limit", "1", *SPEED,
                  preexec_fn=small_disk)
    line = _one_line(proc, 2)
    assert line == f"error: cannot write {out / 'work'}: no space left on device (or a file size limit)", line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_worker_killed_without_a_word_is_one_line_that_says_how(bundles, tmp_path):
    out = tmp_path / "bench"
    proc = _bench(bundles["tiny-pg1"], out, *SPEED)
    os.kill(_first_worker(proc, out), signal.SIGKILL)
    line = _one_line(proc, 2)
    assert line.startswith("error: bench worker for torch-bf16 failed (killed by SIGKILL) with nothing on stderr"), line
    assert "full log" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_worker_keeps_the_log_its_message_names(bundles, tmp_path):
    """A worker that fails with words (here: SIGINT, a KeyboardInterrupt traceback in its log): the message names
    its log, which stays; everything else the run wrote goes."""
    out = tmp_path / "bench"
    proc = _bench(bundles["tiny-pg1"], out, *SPEED)
    _interrupt(_first_worker(proc, out, settle=0))
    line = _one_line(proc, 2)
    log = out / "work" / "worker-0.log"
    assert line.startswith("error: bench worker for torch-bf16 failed (") and line.endswith(f"(full log: {log})"), line
    assert "KeyboardInterrupt" in log.read_text()
    left = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert left == [Path("bench"), Path("bench", "work"), Path("bench", "work", "worker-0.log")]


@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_during_bench_removes_what_the_run_wrote(bundles, tmp_path, existing):
    """--out made by the run goes whole; an --out that was there keeps what it held, and loses the work folder."""
    out = tmp_path / "bench"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    proc = _bench(bundles["tiny-pg1"], out, *SPEED)
    _first_worker(proc, out)
    proc.send_signal(signal.SIGTERM)
    assert _one_line(proc, 130) == "interrupted; nothing was written"
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == (["bench", "bench/notes.txt"] if existing else [])
