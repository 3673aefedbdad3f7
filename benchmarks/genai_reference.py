"""onnxruntime-genai as a decode baseline: the same Gemma decoder, built by genai's own model builder.

Benchmark-only (`pip install onnxruntime-genai==0.18.0`, never a runtime dependency). Three steps:

1. `export_gemma`: the language model of a pgexport source (a random-weight preset is drawn with the same
   seed as the bundle, so the weights are the bundle's) saved as a plain GemmaForCausalLM /
   Gemma2ForCausalLM folder: config.json, model.safetensors, the tokenizer files.
2. `build_genai`: `python -m onnxruntime_genai.models.builder -p int4 -e cpu` on that folder with the
   builder's defaults, as a user of genai would run it.
3. `time_genai` (in its own process, `python benchmarks/genai_reference.py time ...`): prefill of a given
   number of tokens (causal: genai has no prefix-LM and no vision), then greedy decode, timed per step.
   Prints one JSON line: prefill ms, decode ms per token (median), tokens/s, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path


def export_gemma(source_spec: str, out: Path) -> Path:
    """The source's language model as a causal-LM checkpoint folder (fp32 safetensors)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from pgexport.source import sources

    if (out / "config.json").exists():
        return out
    source = sources.resolve(source_spec)
    model = sources.load_model(source, torch.float32)
    text_config = model.config.text_config
    arch = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM"}[text_config.model_type]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lm = model.model.language_model
    tensors = {f"model.{k}": v.contiguous() for k, v in lm.state_dict().items()}
    del model
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    config = text_config.to_dict()
    for key in ("use_bidirectional_attention", "num_image_tokens"):  # PaliGemma's prefix-LM settings: a causal LM here
        config.pop(key, None)
    config.update(architectures=[arch], tie_word_embeddings=True, torch_dtype="float32", dtype="float32",
                  bos_token_id=2, eos_token_id=1, pad_token_id=0)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}))
    AutoTokenizer.from_pretrained(source.directory).save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_genai(checkpoint: Path, out: Path, precision: str = "int4") -> Path:
    if (out / "genai_config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cache = out.with_name(out.name + ".cache")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    subprocess.run(cmd, check=True)
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(out)
    return out


def time_genai(model_dir: Path, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    from pgexport.bench.harness import median_seconds, timed
    from pgexport.bench.stats import memory_mb

    model = og.Model(og.Config(str(model_dir)))
    # VmHWM, not getrusage: ru_maxrss survives exec, so a child of a process that just held the 3B
    # checkpoint would report the parent's peak.
    rss_after_load = memory_mb()["peak_rss_mb"]
    rng = np.random.default_rng(0)
    vocab = json.loads((model_dir / "genai_config.json").read_text())["model"]["vocab_size"]

    def run() -> tuple[float, float]:
        """Seconds of the prefill and the median seconds of a decode step, on a new random prompt."""
        ids = rng.integers(3, min(vocab, 256000), size=prompt_tokens).tolist()
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_tokens + new_tokens, do_sample=False, min_length=prompt_tokens + new_tokens)
        gen = og.Generator(model, params)
        (prefill,) = timed(lambda: gen.append_tokens(ids), repeats=1, warmup=0)
        # one step per new token; the first only reads the prefill's logits
        return prefill, median_seconds(gen.generate_next_token, repeats=new_tokens - 1, warmup=1)

    runs = [run() for _ in range(repeats + 1)][1:]  # the first run is warm-up
    prefill, per_token = [1e3 * p for p, _ in runs], [1e3 * d for _, d in runs]
    decode_ms = statistics.median(per_token)
    return {"prefill_ms": statistics.median(prefill), "decode_ms_per_token": decode_ms,
            "decode_tokens_per_s": 1e3 / decode_ms, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "repeats": repeats, "rss_after_load_mb": rss_after_load,
            "peak_rss_mb": memory_mb()["peak_rss_mb"],
            "onnxruntime_genai": og.__version__}


def set_threads(model_dir: Path, threads: int) -> None:
    """intra_op_num_threads in genai_config.json (genai reads session options from there)."""
    path = model_dir / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    path.write_text(json.dumps(config, indent=4))


def main() -> None:
    import peer_cli  # beside this file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="export the Gemma checkpoint and build the genai int4 model")
    b.add_argument("--model", default="paligemma-3b-224")
    b.add_argument("--work", type=Path, default=Path("bench-work/genai"))
    b.add_argument("--precision", default="int4")
    t = sub.add_parser("time", help="time prefill and decode of a built genai model (own process)")
    t.add_argument("model_dir", type=Path)
    peer_cli.add_timing(t, prompt_tokens=270)
    args = parser.parse_args()
    if args.cmd == "build":
        ckpt = export_gemma(args.model, args.work / f"{args.model}-gemma")
        out = build_genai(ckpt, args.work / f"{args.model}-genai-{args.precision}")
        print(out)
    else:
        if args.threads:
            set_threads(args.model_dir, args.threads)
        print(json.dumps(time_genai(args.model_dir, args.prompt_tokens, args.new_tokens, args.repeats)))


if __name__ == "__main__":
    main()
