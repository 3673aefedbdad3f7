"""OpenVINO as a peer: the same Gemma decoder through optimum-intel and OpenVINO GenAI, plus PaliGemma's
vision tower and projector as an OpenVINO IR, so that its first token covers the image as the bundle's does.

Benchmark-only, in a virtual environment of its own: optimum-intel's Gemma export wants transformers <= 5.0,
and PyPI's torchvision (pulled in by optimum-intel) is a CUDA build that breaks `import transformers` beside
the CPU torch, so it is removed:

    python3 -m venv venv-ov && venv-ov/bin/pip install torch==2.13.0 'optimum-intel[openvino]==2.2.0' \\
        openvino==2026.4.1 openvino-genai==2026.4.1.0 openvino-tokenizers==2026.4.1.0 nncf 'transformers==4.57.6'
    venv-ov/bin/pip uninstall -y torchvision

Neither optimum-intel nor openvino-genai knows PaliGemma (no export config, no VLMPipeline model type), so:
1. `build` (the project's environment, --ov-python naming the other one): the source's language model as a
   Gemma checkpoint (genai_reference.export_gemma: a random-weight preset is drawn with the bundle's seed, so
   the weights are the bundle's); `optimum-cli export openvino --weight-format int4` on it (NNCF's data-free
   default: 4-bit asymmetric in groups of 128, the tied embedding 8-bit per channel) into decoder/ and
   `vision` below into vision/ of WORK/SOURCE-openvino-int4.
2. `vision` (OpenVINO's environment): SigLIP and the projector, rebuilt from the checkpoint's config and
   loaded with its tensors, converted with `openvino.convert_model` and weight-compressed by NNCF's default
   (8-bit asymmetric per channel, what optimum-intel gives a VLM's vision model beside an int4 decoder).
   Input (1, 3, H, W) pixels, output the image tokens' embeddings: the projector's output over
   sqrt(text hidden), since the Gemma decoder multiplies every input embedding by that (transformers before 5
   scaled PaliGemma's image features so; it is the same model).
3. `time` (OpenVINO's environment, its own process): the vision IR compiled on the CPU and the decoder in
   `openvino_genai.LLMPipeline`, both loaded as an app would hold them. Each run: one vision call on a
   random image, then a greedy generate from as many random token ids as the bundle's prefix (text only,
   causal), EOS ignored and exactly N new tokens. Prefill = the pipeline's TTFT (prefill + first token),
   decode = 1000 / TPOT from its PerfMetrics; medians over runs after a warm-up. Prints one JSON line.

    python benchmarks/openvino_reference.py build --ov-python venv-ov/bin/python --work bench-work/peers
    venv-ov/bin/python benchmarks/openvino_reference.py time bench-work/peers/paligemma-3b-224-openvino-int4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build(source_spec: str, ov_python: Path, work: Path) -> Path:
    """WORK/SOURCE-openvino-int4 holding decoder/ (the optimum-intel int4 export) and vision/ (the vision IR)."""
    import genai_reference

    from pgexport.source import sources

    ckpt = genai_reference.export_gemma(source_spec, work / f"{source_spec}-gemma")  # shared with the other peers
    out = work / f"{source_spec}-openvino-int4"
    if (out / "vision" / "openvino_vision.xml").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([str(ov_python.parent / "optimum-cli"), "export", "openvino", "--model", str(ckpt), "--task",
                    "text-generation-with-past", "--weight-format", "int4", str(tmp / "decoder")], check=True)
    subprocess.run([str(ov_python), __file__, "vision", str(sources.resolve(source_spec).directory),
                    str(tmp / "vision")], check=True)
    tmp.rename(out)
    return out


def export_vision(checkpoint: Path, out: Path) -> Path:
    import nncf
    import openvino as ov
    import torch
    from safetensors import safe_open
    from transformers import PaliGemmaConfig, SiglipVisionModel

    config = PaliGemmaConfig.from_pretrained(checkpoint)
    tower = SiglipVisionModel(config.vision_config).vision_model.eval()
    projector = torch.nn.Linear(config.vision_config.hidden_size, config.vision_config.projection_dim)
    index = checkpoint / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    loaded = {tower: {}, projector: {}}
    for name in files:
        with safe_open(str(checkpoint / name), "pt") as f:
            for key in f.keys():
                # transformers 5 writes model.vision_tower.embeddings..., earlier versions
                # vision_tower.vision_model.embeddings...; the projector is multi_modal_projector.linear.*
                short = key.removeprefix("model.")
                if short.startswith("vision_tower."):
                    loaded[tower][short.removeprefix("vision_tower.").removeprefix("vision_model.")] = f.get_tensor(key).float()
                elif short.startswith("multi_modal_projector.linear."):
                    loaded[projector][short.removeprefix("multi_modal_projector.linear.")] = f.get_tensor(key).float()
    for module, tensors in loaded.items():
        module.load_state_dict(tensors, strict=True)  # every tensor found, or this raises
    scale = config.text_config.hidden_size ** 0.5

    class ImageTokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower, self.projector = tower, projector

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.projector(self.tower(pixel_values).last_hidden_state) / scale

    size = config.vision_config.image_size
    with torch.no_grad():
        model = ov.convert_model(ImageTokens().eval(), example_input=torch.zeros(1, 3, size, size),
                                 input=[(1, 3, size, size)])
    model = nncf.compress_weights(model)  # 8-bit asymmetric, per channel, weight-only
    out.mkdir(parents=True, exist_ok=True)
    xml = out / "openvino_vision.xml"
    ov.save_model(model, str(xml))
    return xml


def time_openvino(folder: Path, prompt_tokens: int, new_tokens: int, repeats: int, threads: int) -> dict:
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    threads = threads or os.cpu_count() or 1
    core = ov.Core()
    vision = core.compile_model(str(folder / "vision" / "openvino_vision.xml"), "CPU",
                                {"INFERENCE_NUM_THREADS": threads})
    request = vision.create_infer_request()
    size = vision.input(0).get_partial_shape()[2].get_length()
    pipe = ov_genai.LLMPipeline(str(folder / "decoder"), "CPU", INFERENCE_NUM_THREADS=threads)
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.ignore_eos, config.do_sample = True, False
    vocab = json.loads((folder / "decoder" / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(repeats + 1):  # the first run is warm-up
        pixels = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        start = time.perf_counter()
        request.infer({0: pixels})
        vision_ms = 1e3 * (time.perf_counter() - start)
        ids = rng.integers(3, min(vocab, 256000), size=(1, prompt_tokens)).astype(np.int64)
        ids[0, 0] = 2  # <bos>
        inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        metrics = pipe.generate(inputs, config).perf_metrics
        if metrics.get_num_generated_tokens() != new_tokens:
            raise SystemExit(f"error: OpenVINO generated {metrics.get_num_generated_tokens()} tokens, not {new_tokens}")
        runs.append((vision_ms, metrics.get_ttft().mean, metrics.get_tpot().mean))
    runs = runs[1:]
    vision_ms, prefill_ms, tpot = (statistics.median(r[i] for r in runs) for i in range(3))
    size_bytes = sum(f.stat().st_size for sub in ("decoder", "vision") for f in (folder / sub).iterdir()
                     if f.suffix in (".xml", ".bin"))
    return {"engine": "OpenVINO GenAI int4", "vision_ms": vision_ms, "prefill_ms": prefill_ms,
            "ttft_ms": vision_ms + prefill_ms, "decode_ms_per_token": tpot, "decode_tokens_per_s": 1e3 / tpot,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "threads": threads,
            "size_bytes": size_bytes, "peak_rss_mb": _peak_rss_mb(), "openvino": ov.get_version(),
            "openvino_genai": ov_genai.__version__,
            "precision": core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()}


def _peak_rss_mb() -> float:
    """VmHWM of this process, in MiB (this file runs in OpenVINO's environment, without pgexport)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("error: no VmHWM in /proc/self/status")


def main() -> None:
    import peer_cli  # beside this file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="export the decoder (optimum-intel int4) and the vision IR")
    b.add_argument("--model", default="paligemma-3b-224")
    b.add_argument("--ov-python", type=Path, required=True, help="python of the OpenVINO environment")
    b.add_argument("--work", type=Path, default=Path("bench-work/peers"))
    v = sub.add_parser("vision", help="SigLIP + projector of a PaliGemma checkpoint as an int8 OpenVINO IR")
    v.add_argument("checkpoint", type=Path)
    v.add_argument("out", type=Path)
    t = sub.add_parser("time", help="time vision, prefill and decode of a built folder (own process)")
    t.add_argument("folder", type=Path)
    peer_cli.add_timing(t)
    args = parser.parse_args()
    if args.cmd == "build":
        print(build(args.model, args.ov_python, args.work))
    elif args.cmd == "vision":
        print(export_vision(args.checkpoint, args.out))
    else:
        print(json.dumps(time_openvino(args.folder, args.prompt_tokens, args.new_tokens, args.repeats, args.threads)))


if __name__ == "__main__":
    main()
