"""Memory and time of exporting the decoder: the exporter's own path against weights bound lazily.

    python benchmarks/decoder_export_memory.py --model paligemma-3b-224 --how whole --out /tmp/dec-whole
    python benchmarks/decoder_export_memory.py --model paligemma-3b-224 --how bound --out /tmp/dec-bound

One process per run (VmHWM only grows). The model is loaded first (a preset's random weights, or a checkpoint),
then the decoder is exported:
- whole: `torch.onnx.export(optimize=True)` of the loaded module, a whole-model export;
- bound: the architecture exported on the meta device and the weights bound one tensor at a time
  (pgexport.export.bind), what builds do now.
Prints RSS after loading, the peak during the export above it, and the export's seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pgexport.bench.harness import memory_mb
from pgexport.source import sources
from pgexport.export import decoder, graphs
from pgexport.export.onnx_export import export_graph, param_bytes
from pgexport.source.weights import ModuleWeights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--how", choices=("whole", "bound"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    source = sources.resolve(args.model)
    g = sources.load_geometry(source)
    t = time.time()
    model = sources.load_model(source)
    loaded, load_s = memory_mb()["rss_mb"] / 1e3, time.time() - t
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    if args.how == "whole":
        m = decoder.DecoderWithPast(model, g)
        export_graph(m, decoder.sample_inputs(g), args.out / "decoder.onnx", decoder.input_names(g),
                     decoder.output_names(g), decoder.dynamic_shapes(g), param_bytes(m))
    else:
        graphs.export_decoder(model.config, ModuleWeights(model), g, args.out)
    seconds = time.time() - t
    peak = memory_mb()["peak_rss_mb"] / 1e3
    print(f"{args.model} {args.how}: loaded {loaded:.2f} GB in {load_s:.0f} s; export peak {peak:.2f} GB "
          f"(+{peak - loaded:.2f} GB over the loaded model), {seconds:.0f} s")


if __name__ == "__main__":
    main()
