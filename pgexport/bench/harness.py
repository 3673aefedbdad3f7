"""What every script in benchmarks/ measures with: medians of timed repeats, RSS and peak RSS from /proc, the
CPU it ran on, and the measurement file it writes into docs/measurements/.

A measurement file is the only place a table of figures lives in the docs. It says which script wrote it, on
which CPU (model and the instruction-set flags that change which kernels run), on which date, and with which
command; tests/test_docs.py checks each one against its script's COLUMNS, so a table cannot drift from the
script that makes it.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pgexport.files import atomic_path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "measurements"
# the flags that decide onnxruntime's and PyTorch's CPU kernels (MLAS, oneDNN): named beside every figure
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                "amx_bf16", "asimd", "asimddp", "i8mm", "sve")
HEADER = re.compile(r"^- (CPU|Date|Command): (.+)$")


def cpu() -> str:
    """'model (N CPUs; flags ...)' as /proc/cpuinfo gives them (platform's words where there is none)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags |= set(value.split())
    except OSError:
        pass
    named = [f for f in KERNEL_FLAGS if f in flags]
    return f"{model} ({os.cpu_count()} CPUs; {' '.join(named) or 'no AVX2/AVX-512/AMX/NEON dot-product flags'})"


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> list[float]:
    """The wall time in seconds of each of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """The median wall time of `repeats` calls of fn, after `warmup` untimed ones."""
    return statistics.median(timed(fn, repeats, warmup))


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """RSS and peak RSS (VmRSS, VmHWM) of a process in MB (10^6 bytes); empty off Linux."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return out


def command() -> str:
    """How this script was started, as a reader would type it (relative to the repository root)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(DOCS.parents[1])
    except ValueError:
        script = Path(script.name)
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def table(columns: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A markdown table; numbers right-aligned."""
    def cell(v) -> str:
        return "–" if v is None else str(v).replace("|", "\\|")

    align = ["---:" if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) else "---"
             for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"a row of {len(r)} cells under {len(columns)} columns")
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return lines


def write_measurement(name: str, title: str, script: str, columns: Sequence[str], rows: Sequence[Sequence],
                      notes: Sequence[str] = (), out_dir: Path | None = None) -> Path:
    """docs/measurements/NAME.md: the title, where and how it was measured, the table, then notes."""
    path = (out_dir or DOCS) / f"{name}.md"
    lines = [f"<!-- written by {script}; rerun it to change this file -->", f"# {title}", "",
             f"- CPU: {cpu()}", f"- Date: {datetime.date.today().isoformat()}", f"- Command: `{command()}`", "",
             *table(columns, rows)]
    if notes:
        lines += ["", *notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def read_measurement(path: Path) -> dict:
    """The parts a check compares: script, CPU, date, command and the table's columns."""
    text = path.read_text().splitlines()
    first = re.match(r"<!-- written by (\S+);", text[0]) if text else None
    out = {"script": first.group(1) if first else None, "columns": None}
    for line in text:
        if (m := HEADER.match(line)) is not None:
            out[m.group(1).lower()] = m.group(2)
        elif line.startswith("| ") and out["columns"] is None:
            out["columns"] = [c.strip() for c in line.strip().strip("|").split(" | ")]
    return out
