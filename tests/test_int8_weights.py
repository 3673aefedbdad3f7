"""Dynamic int8 graphs hold int8 weights; every x86 CPU must compute the same integers with them.

onnxruntime multiplies uint8 activations by int8 weights with VNNI where the CPU has it, exactly. An x86 CPU
without VNNI (AVX2) sums pairs of those products in int16 and saturates, unless the session option
`session.x64quantprecision` makes onnxruntime turn the weights into uint8 when the graph loads; the runtime sets
it. This test runs the same graph on this machine and on an emulated Haswell (AVX2, no AVX-512, no VNNI) under
qemu-x86_64: as the runtime opens it, the emulated CPU must give this machine's outputs bit for bit; opened
without the option, it must not (the input drives pairs of products past int16), or the test would prove nothing.

The same graph gives this machine's outputs on the emulated ARM64 CPUs of tests/test_arm64.py too, whose
integer kernels (NEON, dot product, i8mm) multiply int8 weights without saturating.

Needs Debian's qemu-user-static (and debootstrap for ARM64). Outside CI a missing emulator skips with the reason;
with the CI environment variable set it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pgexport.quant.recipes import RECIPES

QEMU = "qemu-x86_64-static"
CPU = "Haswell-v4"  # AVX2 and FMA; no AVX-512, no VNNI

_RUN = """
import sys
import numpy as np
import onnxruntime as ort
from pgexport_runtime.cpu import int8_weights_saturate
from pgexport_runtime.session import SessionConfig, create_session
print(int8_weights_saturate())
xs = np.load(sys.argv[2])
runtime = create_session(sys.argv[1], SessionConfig()).run(None, {"x": xs})[0]
plain = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
np.savez(sys.argv[3], runtime=runtime, plain=plain)
"""


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory) -> tuple[Path, Path]:
    """A dynamic int8 linear as the int8-dynamic recipe writes it, and an input whose products pass int16 in pairs."""
    import onnx_ir as ir

    from pgexport.quant.apply import quantize_graph

    work = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.05, (96, 40)).astype(np.float32)
    x = ir.val("x", ir.DataType.FLOAT, ["b", 96])
    weight = ir.Value(name="w", const_value=ir.tensor(w))
    mm = ir.node("MatMul", [x, weight], name="mm",
                 metadata_props={"pkg.torch.onnx.name_scopes": "['', 'encoder.layers.0.mlp.fc2', 'linear']"})
    mm.outputs[0].name = "y"
    path = work / "vision_encoder.onnx"
    ir.save(ir.Model(ir.Graph([x], mm.outputs, nodes=[mm], initializers=[weight], opset_imports={"": 18}),
                     ir_version=10), path)
    quantize_graph("vision_encoder", path, RECIPES["int8-dynamic"])
    assert {t.data_type for t in onnx.load(str(path)).graph.initializer if t.name.endswith((".q8", ".zero_point"))} \
        == {onnx.TensorProto.INT8}
    xs = work / "x.npy"
    np.save(xs, (rng.normal(0, 1, (3, 96)) * 4).astype(np.float32))
    return path, xs


# what /proc/cpuinfo says on a Haswell: qemu-x86_64 passes the host's through, so the emulated process reads this
# one instead (-L: absolute paths are looked up under the folder first), as the runtime reads the CPU's flags
HASWELL_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
                 "ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 "
                 "movbe popcnt aes xsave avx f16c rdrand lahf_lm abm fsgsbase bmi1 avx2 smep bmi2 erms invpcid")


def _outputs(graph: Path, xs: Path, out: Path, emulate: bool) -> dict[str, np.ndarray]:
    cmd = [sys.executable, "-c", _RUN, str(graph), str(xs), str(out)]
    if emulate:
        root = out.parent / "haswell-root"
        (root / "proc").mkdir(parents=True, exist_ok=True)
        (root / "proc" / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: Haswell\nflags\t\t: {HASWELL_FLAGS}\n")
        cmd = [QEMU, "-cpu", CPU, "-L", str(root), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as f:
        return {"saturates": done.stdout.split()[-1] == "True", **{k: f[k] for k in f.files}}


def _need(missing: list[str]) -> None:
    if missing:
        message = f"emulation needs {', '.join(missing)} (Debian's qemu-user-static, debootstrap)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_int8_weights_give_the_same_integers_on_an_x86_cpu_without_vnni(int8_graph, tmp_path):
    _need([QEMU] if shutil.which(QEMU) is None else [])
    graph, xs = int8_graph
    here = _outputs(graph, xs, tmp_path / "here.npz", emulate=False)
    avx2 = _outputs(graph, xs, tmp_path / "avx2.npz", emulate=True)
    assert avx2["saturates"]  # the runtime took the emulated CPU for one without VNNI
    assert np.ptp(here["runtime"]) > 0
    np.testing.assert_array_equal(avx2["runtime"], here["runtime"])
    assert not np.array_equal(avx2["plain"], here["runtime"])  # without the option the emulated CPU saturates


def test_int8_weights_give_the_same_integers_on_arm64(int8_graph, tmp_path):
    from pgexport.source import sources
    from tools import arm64

    _need(arm64.missing_tools())
    root = arm64.ensure_root(sources.cache_dir())
    graph, xs = int8_graph
    here = _outputs(graph, xs, tmp_path / "here.npz", emulate=False)["runtime"]
    for cpu in arm64.CPUS:
        done = arm64.python(root, cpu, "-c", _RUN, str(graph), str(xs), str(tmp_path / f"{cpu}.npz"), timeout=600)
        assert done.returncode == 0, (cpu, done.stderr[-2000:])
        with np.load(tmp_path / f"{cpu}.npz") as got:
            np.testing.assert_array_equal(got["runtime"], here, err_msg=cpu)


def test_an_ort_format_graph_keeps_uint8_weights(int8_graph, tmp_path):
    """onnxruntime turns int8 weights into uint8 only for graphs it optimizes as they load, not for an ORT-format
    graph. `pgexport package --format ort` therefore converts a graph whose dynamic int8 weights are uint8 again,
    and the emulated AVX2 CPU gives this machine's outputs from the .ort as from the .onnx."""
    _need([QEMU] if shutil.which(QEMU) is None else [])
    from pgexport.package import _convert, _unsigned_int8

    graph, xs = int8_graph
    work = tmp_path / "ort"
    work.mkdir()
    shutil.copy(graph, work / graph.name)
    assert _unsigned_int8(work / graph.name) == 2  # the codes and their zero points
    assert {t.data_type for t in onnx.load(str(work / graph.name)).graph.initializer
            if t.name.endswith((".q8", ".zero_point"))} == {onnx.TensorProto.UINT8}
    ort_file = work / _convert(work / graph.name, work, "extended")
    here = _outputs(graph, xs, tmp_path / "here.npz", emulate=False)["runtime"]
    avx2 = _outputs(ort_file, xs, tmp_path / "avx2.npz", emulate=True)
    np.testing.assert_array_equal(avx2["runtime"], here)
    np.testing.assert_array_equal(avx2["plain"], here)  # uint8 weights need no option


@pytest.mark.parametrize("machine,flags,saturates", [
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False), ("x86_64", {"avx2", "avx_vnni"}, False),
    ("x86_64", {"avx2", "avx512f"}, True), ("x86_64", None, True), ("AMD64", {"avx2"}, True),
    ("aarch64", None, False), ("arm64", {"asimd"}, False)])
def test_only_x86_without_vnni_is_taken_to_saturate(monkeypatch, machine, flags, saturates):
    from pgexport_runtime import cpu

    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu, "_x86_flags", lambda: flags)
    cpu.int8_weights_saturate.cache_clear()
    try:
        assert cpu.int8_weights_saturate() is saturates
    finally:
        cpu.int8_weights_saturate.cache_clear()
