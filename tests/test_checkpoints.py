"""Real checkpoints in: what transformers' and peft's save_pretrained write builds, and is the same model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from checkpoints import hf_greedy, save_checkpoint, save_lora_adapter
from conftest import PROMPTS
from pgexport.build.bundle_steps import BuildOptions, build
from pgexport_runtime import PaliGemma

N = 16
PRESETS = {"pg1": "tiny-pg1", "pg2": "tiny-pg2"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


_SAVED: dict = {}


def saved(root, family: str, padding_side: str | None) -> tuple:
    """(checkpoint dir, bundle dir) for a tiny model saved by transformers, built once per module."""
    key = (family, padding_side)
    if key not in _SAVED:
        ckpt = save_checkpoint(PRESETS[family], root / f"{family}-{padding_side}", padding_side=padding_side)
        _SAVED[key] = (ckpt, build(BuildOptions(model=str(ckpt), out=root / f"{family}-{padding_side}-bundle")))
    return _SAVED[key]


def _hf_model(directory):
    from transformers import PaliGemmaForConditionalGeneration

    return PaliGemmaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["pg1", "pg2"])
@pytest.mark.parametrize("padding_side", ["right", None])
def test_transformers_saved_checkpoint_builds_and_matches_generate(root, images, family, padding_side):
    ckpt, bundle = saved(root, family, padding_side)
    written = sorted(p.name for p in ckpt.iterdir())
    assert "processor_config.json" in written and "preprocessor_config.json" not in written  # transformers 5.x
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg.get("padding_side") == padding_side

    model = _hf_model(ckpt)
    expected = hf_greedy(model, ckpt, images, PROMPTS, N)
    for row in expected:  # a fixture that repeats one token would prove nothing
        assert len(row) == N and len(set(row)) >= 6, row
    pg = PaliGemma(bundle)
    assert [r.tokens for r in pg.generate(images, PROMPTS, max_new_tokens=N)] == expected
    for image, prompt, exp in zip(images, PROMPTS, expected):
        assert pg(image, prompt, max_new_tokens=N).tokens == hf_greedy(model, ckpt, [image], [prompt], N)[0]

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parity"]["ok"]
    source = manifest["source"]
    assert source["kind"] == "local" and source["name"] == ckpt.name and len(source["sha256"]) == 64
    assert str(root) not in json.dumps(source)  # no path of the builder's machine


def test_sharded_bf16_checkpoint_gives_the_fp32_tokens(root, images):
    ckpt, bundle = saved(root, "pg2", None)
    sharded = save_checkpoint(PRESETS["pg2"], root / "pg2-bf16-sharded", padding_side=None, dtype=torch.bfloat16,
                              max_shard_size="200KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    from safetensors import safe_open

    with safe_open(str(sharded / shards[0]), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    out = build(BuildOptions(model=str(sharded), out=root / "pg2-bf16-bundle"))
    got = [r.tokens for r in PaliGemma(out).generate(images, PROMPTS, max_new_tokens=N)]
    assert got == [r.tokens for r in PaliGemma(bundle).generate(images, PROMPTS, max_new_tokens=N)]


def _tamper(root, name: str, change) -> str:
    """A copy of the pg1 checkpoint with its weights changed by `change(state_dict)`."""
    from safetensors.torch import load_file, save_file

    ckpt, _ = saved(root, "pg1", "right")
    bad = root / name
    shutil.copytree(ckpt, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    return str(bad)


def _q_proj(tensors) -> str:
    return next(k for k in tensors if "layers.0.self_attn.q_proj.weight" in k and "vision" not in k)


@pytest.mark.parametrize("case, change, words", [
    ("missing", lambda t: t.pop(_q_proj(t)), "1 missing: model.language_model.layers.0.self_attn.q_proj.weight"),
    ("extra", lambda t: t.update({"language_model.model.layers.0.self_attn.extra.weight": torch.zeros(2)}),
     "1 unexpected"),
    ("shape", lambda t: t.update({_q_proj(t): torch.zeros(t[_q_proj(t)].shape[0] + 1, t[_q_proj(t)].shape[1])}),
     "1 wrong shape: model.language_model.layers.0.self_attn.q_proj.weight"),
])
def test_checkpoint_that_does_not_match_its_architecture_is_refused_in_one_line(root, capsys, case, change, words):
    from test_cli_errors import run_cli

    bad = _tamper(root, f"bad-{case}", change)
    out = root / f"bad-{case}-bundle"
    code, _, err = run_cli(["build", "--model", bad, "--out", out], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last
    assert not out.exists() and not list(root.glob(f".pgexport-tmp-{out.name}-*"))


# ---- peft LoRA adapters -------------------------------------------------------------------------------------

ADAPTERS = {
    # the Hugging Face fine-tuning recipe's choice (attention projections of the language model) plus the
    # vision tower's own attention: one adapter reaching both towers
    "pg1": (r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj)|vision_tower.*\.(q_proj|out_proj))", 11),
    # every linear of the language model and the projector
    "pg2": (r".*(language_model.*_proj|multi_modal_projector\.linear)", 12),
}


@pytest.mark.parametrize("family", ["pg1", "pg2"])
def test_lora_adapter_builds_and_matches_the_peft_model(root, images, family):
    from peft import PeftModel

    ckpt, base_bundle = saved(root, family, "right")
    targets, seed = ADAPTERS[family]
    adapter = save_lora_adapter(ckpt, root / f"{family}-lora", targets, seed)
    peft_model = PeftModel.from_pretrained(_hf_model(ckpt), adapter).eval()
    touched = {n.split(".lora_")[0] for n, _ in peft_model.named_parameters() if "lora_" in n}
    if family == "pg1":
        assert any("vision_tower" in n for n in touched) and any("language_model" in n for n in touched)
    else:
        assert any("multi_modal_projector" in n for n in touched)

    expected = hf_greedy(peft_model, ckpt, images, PROMPTS, N)
    base = [r.tokens for r in PaliGemma(base_bundle).generate(images, PROMPTS, max_new_tokens=N)]
    assert all(e != b for e, b in zip(expected, base))  # the adapter really changes the answers
    # pg2 takes the adapter directory as --model: its config names the base
    opts = BuildOptions(model=str(adapter), out=root / f"{family}-lora-bundle") if family == "pg2" else \
        BuildOptions(model=str(ckpt), adapter=adapter, out=root / f"{family}-lora-bundle")
    bundle = build(opts)
    assert [r.tokens for r in PaliGemma(bundle).generate(images, PROMPTS, max_new_tokens=N)] == expected

    recorded = json.loads((bundle / "manifest.json").read_text())["source"]["adapter"]
    assert recorded["name"] == adapter.name and recorded["rank"] == 4 and recorded["peft_type"] == "LORA"
    from pgexport_runtime.manifest import sha256_file

    assert recorded["sha256"] == sha256_file(adapter / "adapter_model.safetensors")


def test_int4_build_of_base_plus_adapter_is_gated_against_the_peft_model(root):
    """The gate's reference is the peft model: the agreement a build records is what the bundle reaches
    against peft's greedy answers, not against the base model's. On the trained demo model (int4 of the tiny
    random presets agrees on almost nothing), with an adapter that changes half of its answers and keeps it
    confident (a larger random LoRA, scale 1.0, turns the model to noise: int4 then agrees on nothing)."""
    from peft import PeftModel

    from pgexport.source import sources
    from pgexport.verify import samples

    base = sources.DEMO_MODEL
    adapter = save_lora_adapter(base, root / "demo-lora", r".*language_model.*\.(q_proj|v_proj)", 11, scale=0.5)
    n_samples, n_tokens = 8, 12
    out = build(BuildOptions(model=str(base), adapter=adapter, out=root / "demo-lora-int4", quant="int4",
                             gate_samples=n_samples, gate_tokens=n_tokens, parity_tokens=4, min_agreement=MIN))
    acc = json.loads((out / "manifest.json").read_text())["quantization"]["accuracy"]

    source = sources.resolve(str(base), adapter)
    gate_set = samples.gate_samples(source, n_samples, sources.load_geometry(source).image_size)
    pg = PaliGemma(out)
    got = [pg(im, p, max_new_tokens=n_tokens).tokens for im, p in gate_set]
    peft_model = PeftModel.from_pretrained(_hf_model(base), adapter).eval()
    vs_peft = [hf_greedy(peft_model, base, [im], [p], n_tokens)[0] for im, p in gate_set]
    vs_base = [hf_greedy(_hf_model(base), base, [im], [p], n_tokens)[0] for im, p in gate_set]
    assert sum(a != b for a, b in zip(vs_peft, vs_base)) >= n_samples // 2  # the adapter matters here
    agree = lambda ref: sum(a == b for a, b in zip(got, ref)) / len(ref)  # noqa: E731

    assert acc["sequence_agreement"] == pytest.approx(agree(vs_peft))
    assert agree(vs_peft) >= MIN > agree(vs_base)


MIN = 0.75  # measured: 0.875 against peft, 0.5 against the base (AMD EPYC, AVX2; one sample of margin each way)


# ---- non-finite weights -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, bad", [
    *((d, b) for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e5m2)
      for b in (float("nan"), float("inf"), float("-inf"))),
    (torch.float8_e4m3fn, float("nan")),  # e4m3fn has no infinity
])
def test_non_finite_weights_are_found_in_every_float_format(tmp_path, monkeypatch, dtype, bad):
    """Bits tested as stored, a chunk at a time (chunks of 8 bytes here, so the bad value is in a later one);
    integers whose bits look like a float's NaN are integers, and finite extremes are finite."""
    from safetensors.torch import save_file

    from pgexport.source import finite
    from pgexport_runtime.errors import UserError

    monkeypatch.setattr(finite, "CHUNK_BYTES", 8)
    top = torch.finfo(dtype).max
    clean = {"a": torch.tensor([0.0, -top, top, 1e-3] * 5, dtype=torch.float64).to(dtype), "ints": torch.full((9,), -1, dtype=torch.int32)}
    save_file(clean, str(tmp_path / "clean.safetensors"))
    finite.check_file(tmp_path / "clean.safetensors", "--model x")
    poisoned = dict(clean, b=torch.zeros(23).to(dtype))
    poisoned["b"][19] = bad
    save_file(poisoned, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match=r"^--model x: bad.safetensors holds NaN or infinite values \(tensor 'b'\)"):
        finite.check_file(tmp_path / "bad.safetensors", "--model x")


def test_lora_adapter_with_nan_weights_is_refused_before_the_build_naming_it(root, capsys):
    """A diverged fine-tune: the build stops before the PyTorch phase, naming the adapter's file and tensor
    (it used to fail at the parity check as "vision_encoder differs from PyTorch: max |diff| nan")."""
    from safetensors.torch import load_file, save_file

    from test_cli_errors import run_cli

    ckpt, _ = saved(root, "pg1", "right")
    adapter = save_lora_adapter(ckpt, root / "nan-lora", ADAPTERS["pg1"][0], 5)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    name = sorted(k for k in tensors if "vision_tower" in k)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    out = root / "nan-lora-bundle"
    capsys.readouterr()  # what saving the adapter printed
    code, _, err = run_cli(["build", "--model", ckpt, "--adapter", adapter, "--out", out], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0] == (f"error: --adapter {adapter}: adapter_model.safetensors holds NaN or infinite values (tensor "
                        f"{name!r}); a model with them answers nothing but NaN")
    assert not out.exists() and not list(root.glob(".pgexport-*nan-lora-bundle*"))
