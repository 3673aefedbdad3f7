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
from pgexport_runtime.session import SessionConfig, create_session
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


def _outputs(graph: Path, xs: Path, out: Path, emulate: bool) -> dict[str, np.ndarray]:
    cmd = [sys.executable, "-c", _RUN, str(graph), str(xs), str(out)]
    if emulate:
        cmd = [QEMU, "-cpu", CPU, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


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
