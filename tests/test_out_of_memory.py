"""Out of memory is one line, whatever runs out first and in whichever process: `pgexport-run run` and
`pgexport build` under an address-space limit (`ulimit -v`, in a bash child), and a missing package still
says how to install it, limit or none.

The limits are where each stage of a run on this repository's pinned libraries runs out (measured): at 160 MB
importing numpy, at 190 and 220 MB mapping onnxruntime's shared library, at 250 MB loading a graph, at 270 MB a
static bundle's decoder graphs; a build at 0.9 and 1.1 GB in its PyTorch phase (or, now and then at 0.9 GB, in
its own imports). Each test also runs the same command with room to spare: what fails is the limit.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -v is RLIMIT_AS on Linux")


def _limited(kb: int | None, *command: str) -> subprocess.CompletedProcess:
    line = shlex.join(command)
    script = line if kb is None else f"ulimit -v {kb}; exec {line}"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    return lines[0]


# glibc's dynamic loader ends the process itself (exit status 127, this one line) when a thread touches a shared
# library's thread-local storage for the first time and there is no memory for it: onnxruntime's pool threads
# start with every session and may do that while the main thread is loading a graph. No code in the process sees
# it coming or can catch it, so it is the one death under a limit that is not the runtime's own line.
LOADER_ABORT = "cannot allocate memory for thread-local data: ABORT"


def _runtime_line(done: subprocess.CompletedProcess) -> str | None:
    """The runtime's one line, or None when the loader ended the process in its own (one line, exit 127): the
    test then runs the command again, up to three times, for the runtime's line."""
    if done.returncode == 127 and done.stderr.strip() == LOADER_ABORT:
        return None
    return _one_line(done)


@pytest.fixture(scope="module")
def image_file(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("oom") / "image.png"
    images[0].save(path)
    return path


# Limits where the runtime runs out of address space at some stage on a 2-core x86 machine (250 MB is on the
# edge: some runs fit): which stage (the
# interpreter, the libraries, a graph) moves with the library builds and the CPU, so only the form is checked.
RUN_LIMITS = [("concat", 160_000), ("concat", 190_000), ("concat", 220_000), ("static", 270_000)]


@pytest.mark.parametrize("layout, kb", RUN_LIMITS, ids=[f"{lay}-{kb // 1000}MB" for lay, kb in RUN_LIMITS])
def test_runtime_out_of_memory_is_one_line(bundles, layout_bundles, image_file, layout, kb):
    bundle = bundles["tiny-pg1"] if layout == "concat" else layout_bundles[layout]
    command = (sys.executable, "-m", "pgexport_runtime", "run", str(bundle), "--image", str(image_file),
               "--prompt", "caption en", "--max-new-tokens", "2")
    roomy = _limited(2_000_000, *command)
    assert roomy.returncode == 0, roomy.stderr[-2000:]
    line = next(filter(None, (_runtime_line(_limited(kb, *command)) for _ in range(3))), None)
    assert line is not None, f"the dynamic loader ended all three runs: {LOADER_ABORT}"
    assert line.startswith("error: out of memory while "), line
    assert f"this process may use {kb * 1024 / 1e6:,.0f} MB (ulimit -v); raise the limit" in line, line
    assert "pip install" not in line


MISSING = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "onnxruntime":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Missing())
    sys.argv = ["pgexport-run", *sys.argv[1:]]
    runpy.run_module("pgexport_runtime", run_name="__main__")
    """
)


@pytest.mark.parametrize("kb", [None, 400_000])
def test_a_missing_onnxruntime_is_not_out_of_memory(bundles, image_file, kb):
    """Without onnxruntime the command says how to install it, also under a limit that leaves room to run."""
    done = _limited(kb, sys.executable, "-c", MISSING, "run", str(bundles["tiny-pg1"]), "--image", str(image_file),
                    "--prompt", "caption en")
    line = _one_line(done)
    assert line.startswith("error: pgexport-runtime needs onnxruntime: from a pgexport checkout, pip install"), line


@pytest.mark.parametrize("kb", [900_000, 1_100_000])
def test_build_out_of_memory_is_one_line_and_leaves_nothing(tmp_path, kb):
    """The PyTorch child runs out (a MemoryError, or a native abort whose words reach only its log), or the build
    process does: one line naming the step, and the temporary directory removed."""
    command = (sys.executable, "-m", "pgexport.cli", "build", "--model", "tiny-pg1", "--out", str(tmp_path / "b"))
    line = _one_line(_limited(kb, *command))
    assert line.startswith("error: out of memory while building ("), line
    assert f"this process may use {kb * 1024 / 1e6:,.0f} MB (ulimit -v); nothing was written" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    done = _limited(2_500_000, *command)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("words", ["error return without exception set",
                                   "<function export at 0x7f0> returned NULL without setting an exception"])
def test_a_c_call_failing_silently_is_out_of_memory_only_under_a_limit(monkeypatch, words):
    """CPython's SystemError for a C call that set no exception, in either wording, is memory running out under an
    address-space limit (its allocation failed before it could say so), and a bug without one."""
    from pgexport_runtime import out_of_memory as oom

    monkeypatch.setattr(oom, "address_space_limit", lambda: 900_000 * 1024)
    assert oom.is_out_of_memory(SystemError(words))
    assert not oom.is_out_of_memory(SystemError("bad argument to internal function"))
    monkeypatch.setattr(oom, "address_space_limit", lambda: None)
    assert not oom.is_out_of_memory(SystemError(words))


@pytest.mark.parametrize("words, what", [
    ("libgomp: Thread creation failed: Resource temporarily unavailable", "a thread could not start"),
    ("RuntimeError: can't start new thread", "a thread could not start"),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : std::bad_alloc", "std::bad_alloc"),
    ("Failed to allocate memory for requested buffer of size 8388608", "a buffer of 8 MB could not be allocated"),
    ("ImportError: libonnxruntime.so: failed to map segment from shared object", "a shared library could not be mapped"),
])
def test_each_voice_of_running_out_is_recognised(words, what):
    """The words a child's last lines or an exception carry when memory ran out, each told in a few words."""
    from pgexport_runtime import out_of_memory as oom

    assert oom.says_out_of_memory(words)
    assert oom.what_ran_out(words) == what
    assert not oom.says_out_of_memory("libgomp: Invalid value for environment variable OMP_NUM_THREADS")

