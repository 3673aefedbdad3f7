"""How fast this CPU multiplies matrices in PyTorch, fp32 against bf16, on PaliGemma-3B's shapes.

    python benchmarks/gemm_probe.py [--threads N]

The PyTorch bf16 reference is only as fast as torch's bf16 GEMM on this machine (oneDNN brgemm on
AVX512-BF16 without AMX); this prints GFLOP/s per shape and dtype (median of 5 after 2 warm-up calls) so
that a reader can tell a slow reference from a slow bundle. One JSON line.
"""

from __future__ import annotations

import argparse
import json

from pgexport.bench.harness import median_seconds

SHAPES = {  # (rows, in, out): prefill of 256 image + 14 text tokens through the 3B decoder and vision MLPs
    "decoder mlp up (270x2048x16384)": (270, 2048, 16384),
    "decoder mlp down (270x16384x2048)": (270, 16384, 2048),
    "decoder q/o (270x2048x2048)": (270, 2048, 2048),
    "vision mlp (256x1152x4304)": (256, 1152, 4304),
}


def probe(threads: int = 0) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "gflops": {}}
    for name, (m, k, n) in SHAPES.items():
        row = {}
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            lin = torch.nn.Linear(k, n, bias=False).to(dtype)
            x = torch.randn(1, m, k, dtype=dtype)
            with torch.inference_mode():
                seconds = median_seconds(lambda: lin(x), repeats=5, warmup=2)
            row[label] = round(2 * m * k * n / seconds / 1e9, 1)
        out["gflops"][name] = row
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0)
    print(json.dumps(probe(p.parse_args().threads)))
