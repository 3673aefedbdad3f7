"""`build --dry-run` / `--max-memory`: what a build needs, from the geometry and the recipe alone."""

from __future__ import annotations

import re

import pytest

from pgexport.source import sources
from pgexport.estimate import estimate, parameters
from pgexport.quant.recipes import resolve_recipe
from pgexport_runtime.errors import UserError
from test_cli_errors import run_cli


def test_parameters_are_counted_exactly(tiny):
    """The per-component count equals the transformers model's (tied lm_head counted once)."""
    assert sum(parameters(tiny.geometry).values()) == sum(p.numel() for p in tiny.model.parameters())


def test_parameters_of_the_demo_and_a_3b_geometry():
    demo = sources.resolve(str(sources.DEMO_MODEL))
    model = sources.load_model(demo)
    assert sum(parameters(sources.load_geometry(demo)).values()) == sum(p.numel() for p in model.parameters())
    published = {"paligemma-3b-224": 2.92e9, "paligemma2-10b-224": 9.66e9, "paligemma2-28b-224": 27.65e9}
    for name, n in published.items():  # the model cards' sizes
        total = sum(parameters(sources.load_geometry(sources.resolve(name))).values())
        assert abs(total - n) < 0.005 * n, (name, total)


def test_recipes_size_the_bundle():
    g = sources.load_geometry(sources.resolve("paligemma-3b-224"))
    fp32, fp16, int4 = (estimate(g, resolve_recipe(r)) for r in ("fp32", "fp16", "int4-rtn-b32"))
    assert fp32.bundle_bytes == 4 * fp32.total_parameters and fp16.bundle_bytes == fp32.bundle_bytes // 2
    assert 1.9e9 < int4.bundle_bytes < 2.1e9  # measured: 2.0 GB on disk
    assert fp32.peak_rss_bytes == int4.peak_rss_bytes > 15e9  # the float32 model is held either way


def test_a_longer_prefix_adds_the_parity_checks_activations():
    """The parity checks run the decoder at the whole prefix's length: at 896 pixels (4,096 image tokens) their
    attention scores and MLP activations are gigabytes that no weight count shows."""
    g224, g896 = (sources.load_geometry(sources.resolve(f"paligemma-3b-{size}")) for size in (224, 896))
    recipe = resolve_recipe("int4-rtn-b128")
    small, large = (estimate(g, recipe, stream=True, gate_samples=0) for g in (g224, g896))
    assert 4.4e9 < small.peak_rss_bytes < 5.3e9  # measured: 4.4 GB
    assert 7.5e9 < large.peak_rss_bytes < 9.1e9  # measured: 8.1 GB, in the layer parity


def test_dry_run_prints_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "b"
    code, stdout, _ = run_cli(["build", "--model", "paligemma-3b-224", "--quant", "int4", "--out", out, "--dry-run",
                               "--no-stream"], capsys)
    assert code == 0 and not out.exists() and not list(tmp_path.iterdir())
    assert "memory      about 17.6 GB" in stdout and "accuracy gate" in stdout
    assert "mode        whole model" in stdout and "layer parity" not in stdout
    code, stdout, _ = run_cli(["build", "--model", "paligemma-3b-224", "--quant", "int4", "--out", out, "--dry-run",
                               "--stream"], capsys)
    assert code == 0 and not out.exists() and not list(tmp_path.iterdir())
    assert "mode        streamed, one decoder layer at a time" in stdout and "layer parity" in stdout


def test_max_memory_refuses_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "b"
    code, _, stderr = run_cli(["build", "--model", "paligemma-3b-224", "--out", out, "--max-memory", "0.05",
                               "--no-stream"], capsys)
    assert code == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert stderr.startswith("error: this build needs about 17.6 GB of memory (holding the float32 model; --stream "
                             "needs about ") and stderr.count("\n") == 1
    assert "--max-memory 0.05 GB" in stderr
    # without --no-stream the build streams, and a budget below even that is refused the same way
    code, _, stderr = run_cli(["build", "--model", "paligemma-3b-224", "--quant", "int4", "--out", out,
                               "--max-memory", "0.05"], capsys)
    assert code == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert re.match(r"error: this build needs about \d+\.\d GB of memory \(streaming one decoder layer at a time;",
                    stderr) and stderr.count("\n") == 1


def test_the_default_budget_is_the_machines_memory(monkeypatch):
    from pgexport.build import plan
    from pgexport.build.plan import BuildOptions, Plan

    monkeypatch.setattr(plan, "machine_memory", lambda: 24e9)
    assert Plan.of(BuildOptions(model="paligemma-3b-224")).estimate.peak_rss_bytes < 24e9  # 3B fits in 24 GB
    with pytest.raises(UserError, match=r"56.7 GB of memory .* more than this machine's 24.0 GB"):
        Plan.of(BuildOptions(model="paligemma2-10b-224", quant="int4", stream=False))
    assert Plan.of(BuildOptions(model="paligemma2-10b-224", quant="int4")).stream  # it streams instead
    assert not Plan.of(BuildOptions(model="paligemma2-10b-224", quant="int4", max_memory=60)).stream
    assert Plan.of(BuildOptions(model="paligemma2-10b-224"), check_memory=False).estimate.total_parameters > 9.6e9


def test_streamed_estimate_holds_the_table_as_stored(tiny, tmp_path):
    """A streamed build keeps the embedding table as the checkpoint stores it; the estimate reads that dtype
    from the safetensors header: a bf16 checkpoint's table counts half its float32 size."""
    import copy

    import torch

    from pgexport.estimate import STREAM_RSS_PER_RESIDENT_BYTE
    from pgexport.build.plan import BuildOptions, Plan

    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        directory = tmp_path / str(dtype).rpartition(".")[2]
        copy.deepcopy(tiny.model).to(dtype).save_pretrained(directory)
        tiny.processor.save_pretrained(directory)
        plan = Plan.of(BuildOptions(model=str(directory), stream=True), check_memory=False)  # fp32: no gate
        peaks[dtype] = plan.estimate.peak_rss_bytes
    saved = STREAM_RSS_PER_RESIDENT_BYTE * 2 * parameters(tiny.geometry)["embedding"]
    assert abs(peaks[torch.float32] - peaks[torch.bfloat16] - saved) <= 2


def test_the_streamed_gate_reference_batches_within_its_kv_budget(tiny):
    """As few batches as the KV budget allows, of even sizes: 3B's 16 samples in one batch, 10B's in two of 8
    (16 at once held 3.5 GB of KV cache and took the 10B PyTorch phase over 8.9 GB); the KV cache is the one
    transformers holds (a tiny model's, measured)."""
    import torch

    from pgexport.estimate import GATE_KV_BUDGET, gate_batch, kv_bytes

    g = tiny.geometry
    cache = tiny.model.model.language_model(inputs_embeds=torch.zeros(1, g.num_image_tokens + 32 + 32, g.text_hidden),
                                      use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == kv_bytes(g, 32)
    for preset, want in (("paligemma-3b-224", 16), ("paligemma2-10b-224", 8), ("paligemma2-28b-224", 8)):
        big = sources.load_geometry(sources.resolve(preset))
        assert gate_batch(big, 32, 16) == want and want * kv_bytes(big, 32) <= GATE_KV_BUDGET
    ten = sources.load_geometry(sources.resolve("paligemma2-10b-224"))
    assert [gate_batch(ten, 32, n) for n in (1, 9, 10, 20)] == [1, 9, 5, 7]  # 9 fit: 10 -> 5 + 5; 20 -> 7 + 7 + 6


def test_the_gptq_estimate_counts_the_layers_own_linears_and_hessians(tiny):
    """GPTQ's memory term is built from each decoder linear's (N, K): they are the model's, and a Hessian per
    linear of the layer is what gptq.quantize_decoder holds while a layer calibrates."""
    from torch import nn

    from pgexport.estimate import _linears, gptq_bytes

    layer = tiny.model.model.language_model.layers[0]
    shapes = [tuple(m.weight.shape) for m in layer.modules() if isinstance(m, nn.Linear)]
    assert sorted(shapes) == sorted(_linears(tiny.geometry))
    hessians = 4 * sum(k * k for _, k in shapes)
    assert gptq_bytes(tiny.geometry, 0) >= hessians
    streamed = {q: estimate(tiny.geometry, resolve_recipe(q), stream=True) for q in ("int4-rtn-b32", "int4-gptq")}
    assert streamed["int4-gptq"].seconds > streamed["int4-rtn-b32"].seconds


def test_autos_figures_are_the_ones_it_runs_with():
    """The estimate keeps `auto`'s constants without importing torch; they must be the ones auto uses."""
    from pgexport import estimate
    from pgexport.quant import auto, layerwise

    assert estimate.AUTO_SENSITIVITY_SAMPLES == auto.SENSITIVITY_SAMPLES
    assert (estimate.AUTO_TABLE_ROWS, estimate.AUTO_POSITIONS) == (layerwise.ROWS, layerwise.POSITIONS)
