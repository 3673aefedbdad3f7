"""Benchmarking bundles against their PyTorch reference: latency per stage, memory, size, accuracy.

- `run`: BenchOptions and run_bench() (the library API behind `pgexport bench`), worker orchestration
- `worker`: one bundle or reference per process; `onnx_engine` and the PyTorch reference (pgexport.verify.reference) run stage by stage
- `evalset`: the demo held-out set, JSONL sets and generated inputs, materialised once for every run
- `accuracy`, `tasks`: agreement with the reference, task metrics against ground truth
- `report`, `plots`, `schema` (+ schema.json): bench.json, bench.md and PNG plots
"""

from pgexport.bench.run import BenchOptions, run_bench

__all__ = ["BenchOptions", "run_bench"]
