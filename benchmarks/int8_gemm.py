"""A copy of a bundle whose decoder multiplies in int8: what the matrix units of a CPU that has them would give.

    python benchmarks/int8_gemm.py SRC DST
    python benchmarks/int8_gemm.py SRC DST --beside   # decoder_int8 beside the decoder, as --int8-prefill builds
    python benchmarks/profile_ops.py DST            # or perf_targets.py SRC DST, pgexport bench SRC DST

onnxruntime's 4-bit MatMulNBits computes int8 dot products on VNNI; only its int8 GEMM (MatMulInteger,
MatMulIntegerToFloat, DynamicQuantizeMatMul) runs on Intel's AMX tiles, at several times the rate on the
decoder's prefill shapes (`ort_kernels.py`). Here each decoder MatMulNBits becomes that GEMM as the `int8-rows`
recipe writes it (pgexport/quant/rewrite.py): its weight, as the 4-bit kernel sees it
(pgexport.nbits.dequantize), requantized to int8 per output column, its input quantized to int8 per row. What
the recipe builds from the float weights, this builds from a 4-bit bundle's: the speed of the same GEMMs,
without a build.

The lm_head (a MatMulNBits whose output is the graph's) and any weight a second node reads (a table tied to the
embedding) stay as they are: the head runs on the rows `logits_index` picks, and a copy of a shared table would
only add memory. So do the products of a float16 bundle: these nodes compute in float32.

The copy computes differently (int8 weights from the 4-bit ones, per-row rather than per-block activation steps):
its answers are compared with the source's, not assumed equal. Its decoder is twice the source's on disk and in
memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx_ir as ir

from pgexport.build.writer import derive_bundle
from pgexport.quant.int8_prefill import PRECISION, to_int8, write_prefill_graph
from pgexport_runtime.session import INT8_PREFILL_GRAPH
from pgexport.quant.rewrite import save_graph


def derive(src: Path, dst: Path, beside: bool = False) -> int:
    """DST: the bundle SRC with its decoder's 4-bit products as per-row int8 GEMMs (DST replaced if it exists), or
    (beside) with the decoder kept and those GEMMs in decoder_int8, the graph `pgexport build --int8-prefill`
    adds; -> the products rewritten."""

    def write(writer, manifest: dict) -> dict:
        decoder = manifest["graphs"]["decoder"]
        if beside:
            name = f"{INT8_PREFILL_GRAPH}.onnx"
            count = write_prefill_graph(src / decoder["file"], writer.path(name))
            data = sorted(p.name for p in writer.tmp.iterdir() if p.name.startswith(name) and p.name != name)
            manifest["graphs"][INT8_PREFILL_GRAPH] = decoder | {"file": name, "data_files": data,
                                                               "precision": PRECISION}
            return {"int8_gemm": {"products": count, "beside": True}}
        model = ir.load(src / decoder["file"])
        count = to_int8(model.graph)
        save_graph(model, writer.path(decoder["file"]))
        return {"int8_gemm": {"products": count}}

    return derive_bundle(src, dst, write, force=True)["int8_gemm"]["products"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--beside", action="store_true",
                        help="keep the decoder and add decoder_int8 for prefills (what --int8-prefill builds)")
    args = parser.parse_args()
    n = derive(args.src, args.dst, args.beside)
    print(f"wrote {args.dst}: {n} decoder products in int8" + (" (decoder_int8)" if args.beside else ""))


if __name__ == "__main__":
    main()
