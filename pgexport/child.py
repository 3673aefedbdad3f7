"""Child processes: the one way pgexport runs work in a fresh Python (the build's PyTorch phase, bench workers).

Why children: a model loaded in PyTorch, or a bundle measured for its peak RSS, must not share a process with
what comes after it; when the child exits, its memory is back with the OS.

Protocol: the parent writes the job as JSON and starts `python -m MODULE JOB.json`; the child prints
`@@<event> <text>` lines on stdout (`@@step NAME`, `@@progress N`, ...), which the parent hands to its
callback, `@@error MESSAGE` for a user error or a write that failed (a full disk: exit 2), and `@@oom WORDS`
when memory ran out (exit 3); stderr goes to a log file in the work directory. A child that dies without a
word (killed, or a native abort) is judged by its log and exit status: ChildOutOfMemory when the log says
memory ran out, ChildFailed otherwise. The child dies with the parent (Linux), so an interrupted build or
bench leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from pgexport_runtime.errors import UserError
from pgexport_runtime.out_of_memory import is_out_of_memory, says_out_of_memory, what_ran_out

PARENT_ENV = "PGEXPORT_PARENT_PID"  # the process the child belongs to
PR_SET_PDEATHSIG = 1
_PREFIX = "@@"


class ChildFailed(RuntimeError):
    """The child exited non-zero without a user error; `tail` holds the last lines of its stderr (none when it
    wrote nothing: killed, or a full disk that took its log too)."""

    def __init__(self, module: str, code: int, tail: list[str], log: Path):
        self.code, self.tail, self.log = code, tail, log
        super().__init__(f"{module} failed ({self.how}):\n" + "\n".join(tail or ["(no output)"]))

    @property
    def how(self) -> str:
        """"exit 1", or "killed by SIGKILL" for a child a signal ended."""
        if self.code >= 0:
            return f"exit {self.code}"
        try:
            return f"killed by {signal.Signals(-self.code).name}"
        except ValueError:
            return f"killed by signal {-self.code}"


class ChildOutOfMemory(ChildFailed):
    """The child ran out of memory: `words` say how (its MemoryError, an allocator's or the loader's message)."""

    def __init__(self, module: str, code: int, tail: list[str], log: Path, words: str):
        super().__init__(module, code, tail, log)
        self.words = words


def run(module: str, job: dict, job_file: Path, on_event: Callable[[str, str], None]) -> None:
    """Run `python -m module job_file` with `job` written to job_file; relay its events; raise UserError
    (its @@error) or ChildFailed. The child's stderr is kept in job_file with the suffix .log."""
    job_file.write_text(json.dumps(job))
    log = job_file.with_suffix(".log")
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    user_error = oom = None
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, str(job_file)], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
        try:
            for line in proc.stdout:
                if not line.startswith(_PREFIX):
                    continue
                event, _, text = line[len(_PREFIX):].rstrip("\n").partition(" ")
                if event == "error":
                    user_error = text
                elif event == "oom":
                    oom = text
                else:
                    on_event(event, text)
            code = proc.wait()
        finally:  # interrupted (SIGINT, SIGTERM) or failed here: the child must not outlive its parent
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    if user_error is not None:
        raise UserError(user_error)
    if code != 0:
        try:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-12:]
        except OSError:  # the log is gone (its folder removed under us)
            tail = []
        if oom is not None or says_out_of_memory("\n".join(tail)):
            words = oom or what_ran_out(next(ln for ln in reversed(tail) if says_out_of_memory(ln)))
            raise ChildOutOfMemory(module, code, tail, log, words)
        raise ChildFailed(module, code, tail, log)


def emit(event: str, text: str) -> None:
    """In the child: one event line for the parent."""
    print(f"{_PREFIX}{event} {text}", flush=True)


def main(work: Callable[[dict, Path], None]) -> int:
    """In the child: `sys.exit(child.main(fn))` reads the job named on the command line and runs
    fn(job, job_file); a UserError becomes @@error and exit 2."""
    _die_with_parent()
    job_file = Path(sys.argv[1])
    try:
        work(json.loads(job_file.read_text()), job_file)
    except UserError as exc:
        emit("error", " ".join(str(exc).split()))
        return 2
    except OSError as exc:
        from pgexport.files import write_failure

        message = write_failure(exc, Path(exc.filename) if exc.filename else job_file.parent)
        if message is None:
            raise
        emit("error", message)  # a full disk: said here, where the reason is known (the log may be full too)
        return 2
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        emit("oom", what_ran_out(exc))
        return 3
    return 0


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this process when the parent dies, even by SIGKILL; otherwise a build's
    child would keep exporting into a temporary directory nobody will rename or remove."""
    import ctypes
    import signal

    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)
