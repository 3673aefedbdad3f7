"""The onnxruntime-genai decode baseline of benchmarks/perf_targets.py measures the same decoder.

genai builds its model from a causal-LM folder that benchmarks/genai_reference.py exports from a pgexport
source. If that export dropped a weight, kept PaliGemma's bidirectional prefix attention, or drew other
random weights, the decode ratio would compare two different models. fp32 genai greedy tokens must equal
transformers' on the exported checkpoint, and those weights must be the preset's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import genai_reference  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return genai_reference.export_gemma("tiny-pg1", tmp_path_factory.mktemp("genai") / "tiny-gemma")


def test_export_carries_the_preset_weights(exported):
    import torch
    from safetensors.torch import load_file

    from pgexport.source import sources

    lm = sources.load_model(sources.resolve("tiny-pg1")).model.language_model.state_dict()
    saved = load_file(str(exported / "model.safetensors"))
    assert set(saved) == {f"model.{k}" for k in lm}
    assert all(torch.equal(saved[f"model.{k}"], v) for k, v in lm.items())
    assert "use_bidirectional_attention" not in json.loads((exported / "config.json").read_text())


def test_genai_fp32_greedy_equals_transformers(exported, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = genai_reference.build_genai(exported, tmp_path / "fp32", "fp32")
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 1000, size=20)]
    model = og.Model(og.Config(str(model_dir)))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=32, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    ours = [int(t) for t in gen.get_sequence(0)[20:]]
    hf = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, 20:].tolist()
    assert ours == theirs
    assert len(set(ours)) > 3  # diverse, not one repeated token


def test_int4_build_and_timing(exported, tmp_path):
    model_dir = genai_reference.build_genai(exported, tmp_path / "int4", "int4")
    cmd = [sys.executable, str(BENCH / "genai_reference.py"), "time", str(model_dir), "--prompt-tokens", "30",
           "--new-tokens", "6", "--repeats", "2", "--threads", "1"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    assert out["decode_tokens_per_s"] > 0 and out["prefill_ms"] > 0 and out["peak_rss_mb"] > 0
    cfg = json.loads((model_dir / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
