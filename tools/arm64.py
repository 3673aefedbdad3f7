"""An emulated ARM64 Python that runs the Python runtime on onnxruntime's ARM kernels, on an x86 machine.

A Debian arm64 root holds Python (Debian's packages, fetched and checked by `debootstrap --download-only`, then
unpacked with `dpkg-deb -x`: nothing of the root is executed to make it, so no root privileges, chroot or
binfmt_misc are needed), and site-packages unpacked from the aarch64 wheels of the versions this environment runs
(onnxruntime, numpy, pillow, tokenizers). `qemu-aarch64-static -L ROOT` runs that Python: the ELF loader and every
file that exists under ROOT are read from there, everything else (the repository, the bundles) from the host.

One root per emulated CPU, sharing the base's programs and libraries by symbolic links, differs in /proc/cpuinfo: the host's x86
/proc/cpuinfo would otherwise reach onnxruntime's cpuinfo, which parses it as ARM's and crashes (signal 11).
What the kernels see of the CPU (HWCAP: dot product, i8mm, SVE) comes from qemu's CPU model:

- cortex-a53: Armv8.0 NEON, no int8 dot product (Raspberry Pi 3, older phones);
- cortex-a76: int8 dot product, no i8mm (Raspberry Pi 5, most phones from 2019 on);
- max: i8mm, SVE and BF16 as well (Armv9 phones, AWS Graviton 3).

Speed under emulation says nothing about an ARM CPU's speed; what it checks is what the kernels compute.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PYTHON = "python3.11"  # bookworm's Python, whose ABI (cp311) the wheels are taken for
PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
WHEELS = ("onnxruntime", "numpy", "pillow", "tokenizers")  # the runtime's dependencies, at this environment's versions
# what of the root the emulated Python sees (qemu -L): the programs, libraries and /etc. A folder that is also a host
# path (/tmp, /root, /home) would hide the host's: a lookup relative to it (openat, realpath) stays in the root.
SHOWN = ("usr", "bin", "lib", "sbin", "etc")
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "dpkg-deb": "dpkg"}
# qemu's CPU model -> (what it stands for, the MIDR part /proc/cpuinfo gives it, its feature words)
CPUS = {
    "cortex-a53": ("Armv8.0 NEON, no dot product", "0xd03", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a76": ("int8 dot product", "0xd0b",
                   "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                   "asimddp"),
    "max": ("dot product, i8mm, SVE, BF16", "0xd40",
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp "
            "sve i8mm bf16 svei8mm svebf16"),
}


def missing_tools() -> list[str]:
    """The Debian packages to install for what is missing here ([] when everything is)."""
    return sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})


def versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in WHEELS}


def ensure_root(cache: Path, log=print) -> Path:
    """The base root for this environment's versions under cache/arm64, made once (in a temporary folder, then
    renamed): Debian's packages unpacked, the wheels unpacked into opt/site, a root per CPU beside it."""
    pins = versions()
    key = hashlib.sha256(repr((SUITE, PACKAGES, SHOWN, sorted(pins.items()))).encode()).hexdigest()[:12]
    final = cache / "arm64" / f"{SUITE}-{key}"
    if (final / "ready").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".making-", dir=final.parent))
    try:
        base = work / "base"
        _debian(base, work / "debootstrap", log)
        _wheels(base / "opt" / "site", pins, work / "wheels", log)
        for cpu, (_, part, features) in CPUS.items():
            _cpu_root(work / cpu, base, part, features)
        (work / "ready").write_text(repr(pins) + "\n")
        try:
            work.rename(final)
        except OSError:  # another process made it meanwhile: use theirs, remove ours
            if not (final / "ready").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def python(root: Path, cpu: str, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run the emulated Python on `cpu` (a key of CPUS) with the repository's runtime importable."""
    repo = Path(__file__).resolve().parents[1]
    cpu_root = root / cpu
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "base" / "opt" / "site"),
                                                         str(repo / "runtimes" / "python")]),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    command = ["qemu-aarch64-static", "-cpu", cpu, "-L", str(cpu_root), str(cpu_root / "usr" / "bin" / PYTHON), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo, timeout=timeout)


def _debian(base: Path, download: Path, log) -> None:
    log(f"arm64: fetching Debian {SUITE} packages for {PYTHON}")
    subprocess.run(["debootstrap", "--download-only", "--arch=arm64", "--variant=minbase",
                    f"--include={','.join(PACKAGES)}", SUITE, str(download), MIRROR],
                   check=True, capture_output=True, text=True)
    (base / "usr").mkdir(parents=True)
    for name in ("bin", "lib", "sbin"):  # the merged /usr that the packages assume
        (base / "usr" / name).mkdir()
        (base / name).symlink_to(f"usr/{name}")
    for deb in sorted((download / "var" / "cache" / "apt" / "archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(base)], check=True, capture_output=True)


def _wheels(site: Path, pins: dict[str, str], download: Path, log) -> None:
    log("arm64: fetching the aarch64 wheels of " + ", ".join(f"{k}=={v}" for k, v in pins.items()))
    platforms = [a for p in ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
                 for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *platforms,
                    "--python-version", "3.11", "--implementation", "cp", "-d", str(download),
                    *(f"{k}=={v}" for k, v in pins.items())], check=True, capture_output=True, text=True)
    site.mkdir(parents=True)
    for wheel in sorted(download.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)


def _cpu_root(root: Path, base: Path, part: str, features: str) -> None:
    root.mkdir()
    for name in SHOWN:
        (root / name).symlink_to(Path("..") / "base" / name)
    (root / "proc").mkdir()
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             f"CPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 0\n")
    cpus = os.cpu_count() or 1
    (root / "proc" / "cpuinfo").write_text("".join(f"processor\t: {i}\n{block}\n" for i in range(cpus)))
