"""What onnxruntime's CPU kernels reach on this CPU, on PaliGemma-3B's shapes, beside PyTorch's fp32 and bf16 GEMM.

    python benchmarks/ort_kernels.py [--threads 0] [--repeats 5] [--name ort_kernels]

One graph per kernel and shape, a single product y = x @ W with W [K, N] a constant, timed in onnxruntime's
CPU provider (median of REPEATS runs after 2 warm-ups); PyTorch's nn.Linear on the same shape (gemm_probe.py).
Kernels: float32 MatMul; 4-bit MatMulNBits (symmetric, blocks of 32 and 128) and 8-bit (blocks of 32) at
accuracy_level 4 (int8 activations, what the bundles use) and 4-bit b128 at level 0; the dynamic int8 GEMM per
tensor (DynamicQuantizeMatMul, what onnxruntime's quantize_dynamic writes) and per row (the int8-rows recipe's
nodes: MatMulIntegerToFloat on rows quantized one by one), both with per-channel int8 weights. Writes
docs/measurements/NAME.md: GOP/s (2*M*K*N operations per second), so that a slow bundle can be told from a slow
kernel, and a kernel from one the CPU runs faster.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from pgexport.bench.harness import median_seconds, write_measurement
from pgexport.nbits import pack_rtn


SHAPES = {  # (M, K, N): the 3B decoder's prefill of 259 tokens (256 image tokens + 3), a decode step, SigLIP
    "decoder mlp up, prefill (259x2048x16384)": (259, 2048, 16384),
    "decoder mlp down, prefill (259x16384x2048)": (259, 16384, 2048),
    "decoder q/o, prefill (259x2048x2048)": (259, 2048, 2048),
    "decoder mlp up, decode (1x2048x16384)": (1, 2048, 16384),
    "vision mlp (256x1152x4304)": (256, 1152, 4304),
}
COLUMNS = ("shape", "fp32 MatMul", "4-bit b32", "4-bit b128", "4-bit b128 level 0", "8-bit b32", "int8 per tensor",
           "int8 per row", "PyTorch fp32", "PyTorch bf16")


def _model(m: int, k: int, nodes: list, inits: list, opset: int = 21) -> bytes:
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def _nbits(m: int, w: np.ndarray, bits: int, block: int, level: int) -> bytes:
    k, n = w.shape
    p = pack_rtn(w, bits, block)
    node = helper.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=level)
    return _model(m, k, [node], [numpy_helper.from_array(p.data, "q"), numpy_helper.from_array(p.scales.ravel(), "s")])


def _rows_int8(m: int, w: np.ndarray) -> bytes:
    """x @ w as the int8-rows recipe writes it (pgexport/quant/rewrite.py)."""
    import tempfile

    from pgexport.quant.apply import quantize_graph
    from pgexport.quant.recipes import RECIPES, Precision

    k, _ = w.shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")
    recipe = replace(RECIPES["int8-rows"], vision_encoder=Precision("int8-rows"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vision_encoder.onnx"
        path.write_bytes(_model(m, k, [node], [numpy_helper.from_array(w, "w")], opset=18))
        quantize_graph("vision_encoder", path, recipe)
        return path.read_bytes()


def graphs(m: int, w: np.ndarray) -> dict[str, bytes]:
    """Kernel name -> a serialized graph computing x [M, K] @ w [K, N] with it."""
    from pgexport.quant.int8 import per_channel_int8

    k, n = w.shape
    q = per_channel_int8(w)
    dynamic = [numpy_helper.from_array(q.quantized, "codes"), numpy_helper.from_array(q.scale, "scale"),
               numpy_helper.from_array(q.zero_point, "zero_point")]
    return {
        "fp32 MatMul": _model(m, k, [helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")]),
        "4-bit b32": _nbits(m, w, 4, 32, 4),
        "4-bit b128": _nbits(m, w, 4, 128, 4),
        "4-bit b128 level 0": _nbits(m, w, 4, 128, 0),
        "8-bit b32": _nbits(m, w, 8, 32, 4),
        "int8 per tensor": _model(m, k, [helper.make_node("DynamicQuantizeMatMul", ["x", "codes", "scale", "zero_point"],
                                                          ["y"], domain="com.microsoft")], dynamic),
        "int8 per row": _rows_int8(m, w),
    }


def probe(threads: int, repeats: int) -> list[list]:
    import onnxruntime as ort
    import torch

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for label, (m, k, n) in SHAPES.items():
        w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        row = [label]
        for name, blob in graphs(m, w).items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            run = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]).run
            seconds = median_seconds(lambda: run(None, {"x": x}), repeats=repeats, warmup=2)
            row.append(round(2 * m * k * n / seconds / 1e9, 1))
        for dtype in (torch.float32, torch.bfloat16):
            lin = torch.nn.Linear(k, n, bias=False).to(dtype)
            xt = torch.from_numpy(x).to(dtype)
            with torch.inference_mode():
                seconds = median_seconds(lambda: lin(xt), repeats=repeats, warmup=2)
            row.append(round(2 * m * k * n / seconds / 1e9, 1))
        rows.append(row)
        print(" | ".join(map(str, row)), flush=True)
    return rows


def main() -> None:
    import onnxruntime as ort
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="ort_kernels")
    parser.add_argument("--out-dir", type=Path, help="default: docs/measurements")
    args = parser.parse_args()
    rows = probe(args.threads, args.repeats)
    threads = args.threads or "one per core (each library's default)"
    notes = [f"GOP/s = 2*M*K*N / median seconds of {args.repeats} runs after 2 warm-ups; onnxruntime "
             f"{ort.__version__} (CPU provider), PyTorch {torch.__version__}, "
             f"threads: {threads}. The 4-bit and 8-bit "
             "columns are MatMulNBits at accuracy_level 4 unless named level 0; int8 columns quantize the "
             "activations as they run, inside the timed graph."]
    path = write_measurement(args.name, "onnxruntime's CPU kernels on PaliGemma-3B's shapes (GOP/s)",
                             "benchmarks/ort_kernels.py", COLUMNS, rows, notes, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
