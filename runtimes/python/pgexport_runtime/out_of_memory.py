"""Out of memory, told in one line: what was being done, what was needed or allowed, and what to try.

Memory runs out in many voices: Python's MemoryError, onnxruntime's "std::bad_alloc" and "Failed to allocate
memory for requested buffer of size N", the dynamic loader's "failed to map segment from shared object" (an
ImportError that is no missing package), "can't start new thread" and OpenMP's "Thread creation failed" (no
room for a thread's stack). Under an address-space limit (`ulimit -v`) any of them may come first. The command
lines turn each into OutOfMemory, a UserError (one line, exit status 2), instead of a traceback or advice to
install what is installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from pgexport_runtime.errors import UserError

try:
    import resource  # imported now: there may be no room for it once memory has run out
except ImportError:  # not POSIX
    resource = None

# what the allocators, loaders and thread libraries say when memory or address space runs out (lower case),
# and how the message words each
MARKERS = {"bad_alloc": "std::bad_alloc", "failed to allocate": "a buffer{size} could not be allocated",
           "cannot allocate memory": "cannot allocate memory",
           "failed to map segment": "a shared library could not be mapped",
           "can't start new thread": "a thread could not start", "pthread_create": "a thread could not start",
           "thread creation failed": "a thread could not start",
           "unable to allocate": "an array{size} could not be allocated", "out of memory": "out of memory",
           "not enough memory": "not enough memory", "memoryerror": "MemoryError"}
# the size a failed allocation asked for: onnxruntime's bytes, numpy's own words
_SIZE = re.compile(r"buffer of size (\d+)|unable to allocate ([\d.]+ [KMGTPE]?i?B)", re.IGNORECASE)


# CPython's words for a C call that failed without setting an exception (both wordings of the supported versions)
_NO_EXCEPTION = re.compile(r"without exception set|without setting an exception")


class OutOfMemory(UserError):
    """The machine (or the process's limit) has less memory than the command needs."""


def says_out_of_memory(text: str) -> bool:
    low = text.lower()
    return any(m in low for m in MARKERS)


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, or an error whose words (or whose cause's) say that memory ran out. Under an address-space
    limit also CPython's SystemError for a C call that failed with no exception set ("error return without
    exception set", "returned NULL without setting an exception"): its allocation failed before it could make
    an exception to say so (seen importing onnx, and in torch.onnx.export, at 0.8 to 0.9 GB)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or says_out_of_memory(f"{type(exc).__name__}: {exc}"):
            return True
        if isinstance(exc, SystemError) and _NO_EXCEPTION.search(str(exc)) and address_space_limit():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def address_space_limit() -> int | None:
    """The process's address-space limit in bytes (`ulimit -v`), None when there is none."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def out_of_memory(doing: str, cause: BaseException | str | None = None, needed: float | None = None,
                  hint: str = "free memory, or use a machine with more") -> OutOfMemory:
    """OutOfMemory for a command that ran out while `doing`: what ran out (`cause`: an exception, or words
    already chosen), the bytes `needed` when an estimate knows them, and the process's limit when it has one:
    "out of memory while loading decoder.onnx: std::bad_alloc; this process may use 270 MB (ulimit -v); ..."."""
    what = "" if cause is None else cause if isinstance(cause, str) else what_ran_out(cause)
    facts = []
    limit = address_space_limit()
    if needed and (limit is None or needed > limit):  # under a lower limit the limit is the news (address
        facts.append(f"about {_mb(needed)} needed")   # space runs out well before an RSS estimate)
    if limit is not None:
        facts.append(f"this process may use {_mb(limit)} (ulimit -v)")
        hint = hint.replace("free memory", "raise the limit, free memory", 1)
    return OutOfMemory("; ".join([f"out of memory while {doing}" + (f": {what[:160]}" if what else ""), *facts,
                                  hint]))


@contextmanager
def reported_while(doing: str, needed: float | None = None) -> Iterator[None]:
    """Memory running out inside the block, in whatever voice, becomes OutOfMemory naming `doing`."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(doing, exc, needed) from None


def what_ran_out(cause: BaseException | str) -> str:
    """What ran out, in a few words (MARKERS), with the size of a failed allocation when it is given."""
    texts, seen = [], set()
    while isinstance(cause, BaseException) and id(cause) not in seen:
        seen.add(id(cause))
        texts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    for text in texts or [cause]:
        for marker, words in MARKERS.items():
            if marker in text.lower():
                size = _SIZE.search(text)
                amount = "" if size is None else f" of {_mb(int(size.group(1)))}" if size.group(1) else \
                    f" of {size.group(2)}"
                return words.format(size=amount)
    return "MemoryError"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"
