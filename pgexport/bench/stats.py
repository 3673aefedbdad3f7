"""Small measurement helpers shared by the workers and the report: percentiles, memory, the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

STAGES = ("preprocess", "vision_encoder", "projector", "prefill", "ttft", "decode_per_token", "end_to_end")


def summarize(samples_ms: list[float]) -> dict:
    """Median and p90 of a list of milliseconds (n = how many samples went in)."""
    if not samples_ms:
        return {"median_ms": None, "p90_ms": None, "n": 0}
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"median_ms": round(float(np.median(a)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4), "n": len(a)}


def memory_mb() -> dict:
    """Current and peak resident set size of this process (VmRSS / VmHWM), in MiB."""
    out = {"rss_mb": None, "peak_rss_mb": None}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                out["rss_mb"] = round(int(value.split()[0]) / 1024, 1)
            elif key == "VmHWM":
                out["peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    except OSError:  # not Linux: fall back to getrusage (peak only)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_mb"] = round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024), 1)
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The flags among harness.KERNEL_FLAGS that this CPU has: which integer, bf16 and matrix kernels can run
    (VNNI decides the dynamic int8 path, docs/runtime.md)."""
    from pgexport.bench.harness import KERNEL_FLAGS

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags |= set(value.split())
    except OSError:
        pass
    return [f for f in KERNEL_FLAGS if f in flags]


def versions(names=("pgexport", "onnxruntime", "onnx", "numpy", "torch", "transformers", "tokenizers", "pillow")) -> dict:
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def system_info() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load,  # the machine may be shared: read latencies with this in mind
        "versions": versions(),
    }


def overloaded(system: dict) -> str | None:
    """A warning when the 1-minute load average at the end of a run exceeds the CPUs: other work competed for
    them while it ran, and its timings are not to be trusted."""
    load, cpus = system.get("load_average"), system.get("cpu_count")
    if not load or not cpus or load[0] <= cpus:
        return None
    return (f"warning: the load average ({load[0]:.2f}) exceeded the {cpus} CPUs during the run: other work "
            "competed for them, and these timings are unreliable")


def dir_bytes(paths) -> int:
    return int(sum(Path(p).stat().st_size for p in paths))
