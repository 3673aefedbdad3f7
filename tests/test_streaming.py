"""The pieces of a build that streams: weights read one tensor at a time from a checkpoint, a
decoder graph exported from the architecture alone with its weights bound lazily, and parity checked one
decoder layer at a time.

The checkpoints are written by transformers' own save_pretrained (tests/checkpoints.py); the oracle for the
graph is the exporter's own optimize=True export of the loaded model, which is how every build exported the
decoder before.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from checkpoints import save_checkpoint

from pgexport.verify import layer_parity, parity
from pgexport.source import sources
from pgexport.export import decoder, graphs
from pgexport.export.onnx_export import export_graph, param_bytes
from pgexport_runtime.errors import UserError
from pgexport.source.weights import CheckpointWeights, meta_model


@pytest.fixture(scope="module", params=["tiny-pg1", "tiny-pg2"])
def ckpt(request, tmp_path_factory):
    directory = save_checkpoint(request.param, tmp_path_factory.mktemp(request.param) / "ckpt")
    source = sources.resolve(str(directory))
    return directory, sources.load_config(source), sources.load_geometry(source), sources.load_model(source)


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_decoder_bound_from_checkpoint_is_the_exporters_graph(ckpt, tmp_path):
    directory, config, g, model = ckpt
    (tmp_path / "whole").mkdir()
    (tmp_path / "bound").mkdir()
    m = decoder.DecoderWithPast(model, g)
    export_graph(m, decoder.sample_inputs(g), tmp_path / "whole" / "decoder.onnx", decoder.input_names(g),
                 decoder.output_names(g), decoder.dynamic_shapes(g), param_bytes(m))
    graphs.export_decoder(config, CheckpointWeights(directory, meta_model(config)), g, tmp_path / "bound")

    whole, bound = (ir.load(tmp_path / d / "decoder.onnx") for d in ("whole", "bound"))
    assert Counter(n.op_type for n in bound.graph) == Counter(n.op_type for n in whole.graph)

    def values(model):
        return sorted((tuple(v.shape), v.const_value.numpy().tobytes()) for v in model.graph.initializers.values())

    assert values(bound) == values(whole)  # the same folded weights, bit for bit
    args = decoder.sample_inputs(g)
    feeds = {n: t.numpy() for n, t in zip(decoder.input_names(g), [*args[:6], *args[6]])}
    for a, b in zip(_run(tmp_path / "bound" / "decoder.onnx", feeds), _run(tmp_path / "whole" / "decoder.onnx", feeds)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_weights_refuse_a_missing_tensor(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    directory, config, _, _ = ckpt
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for f in directory.iterdir():
        if f.suffix != ".safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(directory / "model.safetensors")
    dropped = next(k for k in tensors if "layers.1.mlp.down_proj" in k)
    del tensors[dropped]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"1 missing: model\.language_model\.layers\.1\.mlp\.down_proj\.weight"):
        CheckpointWeights(broken, meta_model(config))


class _SwappedLayer:
    """A weight source with one binding bug: layer 1's up_proj reads layer 2's."""

    def __init__(self, inner):
        self.inner = inner

    def shapes(self):
        return self.inner.shapes()

    def get(self, name):
        return self.inner.get(name.replace("layers.1.mlp.up_proj", "layers.2.mlp.up_proj"))


def test_layer_parity_names_the_broken_layer(ckpt):
    directory, config, g, model = ckpt
    ref = parity.torch_reference(model, directory, g, 1)
    inputs = sources.load_processor(directory)(images=[parity.parity_image(g.image_size)] * len(parity.PROMPTS),
                                               text=["<image>" + p for p in parity.PROMPTS], return_tensors="np",
                                               padding="longest")
    batch = layer_parity.Prefill(ref.input_ids, ref.image_embeds, ref.attention_mask, inputs["token_type_ids"])
    weights = CheckpointWeights(directory, meta_model(config))
    report = layer_parity.check_layers(config, g, weights, batch, 1e-4, onnx_source=_SwappedLayer(weights))
    rel = [e["relative"] for e in report["layers"]]
    assert len(rel) == g.text_layers >= 3
    assert not report["ok"] and report["first_failure"] == 1
    assert rel[1] > 1e-2  # the swapped weight, not rounding
    assert all(r < 1e-5 for i, r in enumerate(rel) if i != 1)  # every other layer, bound the same way, agrees
    assert layer_parity.summarize_failure(report).startswith("decoder layer 1 differs from PyTorch")


@pytest.mark.parametrize("name", ["tiny-pg1", "tiny-pg2"])
def test_streamed_build_writes_the_whole_builds_graphs(name, bundles, tmp_path):
    """The whole-model build (the `bundles` fixture) and a streamed build of the same preset write the same
    graph files, byte for byte; the streamed build checked its decoder layer by layer."""
    import json

    from conftest import PROGRESS

    from pgexport.build.bundle_steps import BuildOptions, build

    progress: list[str] = []
    out = build(BuildOptions(model=name, out=tmp_path / "b", stream=True), progress.append)
    assert "layer parity" in progress and "layer parity" not in PROGRESS[name]
    whole, streamed = (json.loads((d / "manifest.json").read_text()) for d in (bundles[name], out))
    assert whole["files"] == streamed["files"]  # sha256 of every graph, data file and the tokenizer
    checks = streamed["parity"]["checks"]
    assert streamed["parity"]["ok"] and "decoder_prefill" not in checks
    assert checks["decoder_layers"]["layers"] == sources.load_geometry(sources.resolve(name)).text_layers
    assert checks["decoder_layers"]["relative"] < 1e-5


def test_stream_is_chosen_when_the_whole_model_does_not_fit(monkeypatch):
    from pgexport.build import plan
    from pgexport.build.plan import BuildOptions, Plan, steps

    monkeypatch.setattr(plan, "machine_memory", lambda: 16e9)  # a 16 GB laptop
    p = Plan.of(BuildOptions(model="paligemma-3b-224", quant="int4"))
    assert p.stream and p.estimate.peak_rss_bytes < 16e9
    assert "layer parity" in [s.name for s in steps(p)]
    assert not Plan.of(BuildOptions(model="paligemma-3b-224", quant="int4", max_memory=20)).stream
    assert Plan.of(BuildOptions(model="tiny-pg1", stream=True)).stream  # asked for, though it fits


def test_stream_refuses_what_it_does_not_do_yet(tmp_path):
    """An adapter that trains whole modules (modules_to_save) or adapts the embedding table: one line, nothing
    left. (A GPTQ checkpoint: tests/test_gptq_import.py.)"""
    import json

    from checkpoints import save_lora_adapter

    from pgexport.build.bundle_steps import BuildOptions, build
    from pgexport.build.plan import Plan

    base = save_checkpoint("tiny-pg1", tmp_path / "base")
    saved = save_lora_adapter(base, tmp_path / "saved", ["q_proj"], seed=0)
    config = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["multi_modal_projector"]}))
    with pytest.raises(UserError, match=r"^--stream does not yet support an adapter with modules_to_save"):
        Plan.of(BuildOptions(model=str(base), adapter=saved, stream=True))
    with pytest.raises(UserError, match=r"^the whole model does not fit in memory, so the build must stream, but "
                                        r"does not yet support an adapter with modules_to_save"):
        Plan.of(BuildOptions(model=str(base), adapter=saved, max_memory=0.01))
    table = save_lora_adapter(base, tmp_path / "table", ["q_proj", "embed_tokens"], seed=0)
    with pytest.raises(UserError, match=r"--stream does not yet support an adapter on embed_tokens"):
        build(BuildOptions(model=str(base), adapter=table, out=tmp_path / "out", stream=True, parity_tokens=4))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("name, quant, tuner", [("tiny-pg1", "int4-gptq", "lora"), ("tiny-pg2", "fp32", "dora")])
def test_streamed_adapter_build_writes_the_whole_builds_graphs(name, quant, tuner, tmp_path):
    """--adapter under --stream: the reference is peft's model over the streamed base, unmerged; each adapted
    module is merged by peft as its weights are read. The graphs are the whole-model build's (peft's
    merge_and_unload) byte for byte, with adapted linears in the vision tower, the projector (held) and the
    decoder layers (streamed); parity against the unmerged peft model holds."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PaliGemmaForConditionalGeneration

    from pgexport.build.bundle_steps import BuildOptions, build

    base = save_checkpoint(name, tmp_path / "base")
    model = PaliGemmaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, use_dora=tuner == "dora",
                                                  target_modules=["q_proj", "v_proj", "down_proj", "linear"]))
    with torch.no_grad():  # as after training: B is not zero
        for key, p in peft_model.named_parameters():
            if "lora_" in key:
                p.normal_(0.0, 3.0 / p.shape[-1] ** 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    seen: dict[bool, list[str]] = {True: [], False: []}
    out = {stream: build(BuildOptions(model=str(base), adapter=tmp_path / "adapter", out=tmp_path / str(stream),
                                      quant=quant, gate_samples=4, gate_tokens=8, parity_tokens=4, stream=stream),
                         seen[stream].append) for stream in (False, True)}
    assert "merge adapter" in seen[True] and "layer parity" in seen[True]
    whole, streamed = (json.loads((out[s] / "manifest.json").read_text()) for s in (False, True))
    assert whole["files"] == streamed["files"]
    assert streamed["parity"]["ok"] and streamed["source"]["adapter"]["peft_type"] == "LORA"
    adapted = {k for k, _ in peft_model.named_parameters() if "lora_A" in k}
    assert any("vision_tower" in k for k in adapted) and any("multi_modal_projector" in k for k in adapted)
    assert any("language_model" in k for k in adapted)


@pytest.mark.parametrize("name", ["tiny-pg1", "tiny-pg2"])
def test_streamed_gptq_build_writes_the_whole_builds_graphs(name, tmp_path):
    """GPTQ under --stream: calibrated on the streamed model one layer at a time, its packed weights kept on disk
    until the decoder is exported, and never a float32 decoder file. The graphs are the whole-model GPTQ
    build's, byte for byte, and its 4-bit weights are not round-to-nearest's."""
    import json

    from pgexport.build.bundle_steps import BuildOptions, build
    from pgexport.nbits import Packed, pack_rtn, unpack_ints

    seen: dict[bool, list[str]] = {True: [], False: []}
    details: dict[bool, list[str]] = {True: [], False: []}
    out = {stream: build(BuildOptions(model=name, out=tmp_path / str(stream), quant="int4-gptq", gate_samples=4,
                                      gate_tokens=8, parity_tokens=4, stream=stream), seen[stream].append,
                         details[stream].append)
           for stream in (False, True)}
    assert "quantize decoder" in seen[False] and "quantize decoder" not in seen[True]
    assert "GPTQ" in seen[True] and "layer parity" in seen[True]
    n = sources.load_geometry(sources.resolve(name)).text_layers  # a line per layer: GPTQ, then layer parity
    assert details[True] == [f"layer {i}/{n}" for i in range(1, n + 1)] * 2
    assert details[False] == [f"layer {i}/{n}" for i in range(1, n + 1)]
    whole, streamed = (json.loads((out[s] / "manifest.json").read_text()) for s in (False, True))
    assert whole["files"] == streamed["files"]
    assert streamed["parity"]["ok"] and streamed["quantization"]["graphs"] == whole["quantization"]["graphs"]
    assert set(streamed["quantization"]["graphs"]["decoder"]["weights"].values()) == {"int4-gptq/b32"}

    init = ir.load(out[True] / "decoder.onnx").graph.initializers
    float_model = sources.load_model(sources.resolve(name))
    differ = 0
    for i, layer in enumerate(float_model.model.language_model.layers):
        w = layer.mlp.down_proj.weight.detach().numpy()  # [N, K]
        base = f"layers.{i}.mlp.down_proj"
        got = Packed(init[f"{base}.q4"].const_value.numpy(), init[f"{base}.scales"].const_value.numpy(), None, 4,
                     32, w.shape[1], w.shape[0])
        differ += int((unpack_ints(got) != unpack_ints(pack_rtn(w.T.copy(), 4, 32))).sum())
    assert differ > 0  # GPTQ moved some codes off round-to-nearest
    table = float_model.model.language_model.embed_tokens.weight.detach().numpy()  # [V, H]: N = V rows
    got = Packed(init["embed_tokens.q4"].const_value.numpy(), init["embed_tokens.scales"].const_value.numpy(), None,
                 4, 32, table.shape[1], table.shape[0])
    assert (unpack_ints(got) != unpack_ints(pack_rtn(table.T.copy(), 4, 32))).any()  # the tied table too
    assert not (tmp_path / "True" / ".torch").exists()


@pytest.mark.parametrize("name", ["tiny-pg1", "tiny-pg2"])
def test_streamed_model_keeps_a_bf16_table_and_computes_as_transformers(name, tmp_path):
    """From a bfloat16 checkpoint the streamed reference keeps the table in bfloat16 (half its float32 memory)
    and computes in float32: the loaded float32 model's logits and greedy tokens."""
    import torch

    from pgexport.source.streamed import streamed_model

    directory = save_checkpoint(name, tmp_path / "ckpt", dtype=torch.bfloat16)
    source = sources.resolve(str(directory))
    config, g = sources.load_config(source), sources.load_geometry(source)
    model = streamed_model(config, CheckpointWeights(directory, meta_model(config)))
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    got = parity.torch_reference(model, directory, g, 12)
    want = parity.torch_reference(sources.load_model(source), directory, g, 12)
    real = want.logits_real
    assert got.logits.shape == want.logits.shape == (2, want.input_ids.shape[1] - g.num_image_tokens, g.vocab_size)
    diff = np.abs(got.logits[real] - want.logits[real]).max() / np.abs(want.logits[real]).max()
    assert diff < 1e-5, diff
    assert got.greedy == want.greedy and any(len(set(row)) >= 4 for row in want.greedy), want.greedy


def test_decoder_quantized_as_exported_is_the_quantized_float_export(ckpt, tmp_path):
    """A streamed build packs the decoder's weights as the graph is written (no float32 file): the files are
    those of exporting in float32 and quantizing the file afterwards, byte for byte."""
    from pgexport.quant.apply import quantize_graph, quantize_model
    from pgexport.quant.recipes import resolve_recipe

    directory, config, g, _ = ckpt
    recipe = resolve_recipe("int4-rtn-b32")
    (tmp_path / "after").mkdir()
    (tmp_path / "during").mkdir()
    weights = CheckpointWeights(directory, meta_model(config))
    graphs.export_decoder(config, weights, g, tmp_path / "after")
    want = quantize_graph("decoder", tmp_path / "after" / "decoder.onnx", recipe)
    got = {}
    graphs.export_decoder(config, weights, g, tmp_path / "during",
                          write=lambda graph, path: got.update(quantize_model("decoder", graph, path, recipe)))
    assert got == want and set(want["weights"].values()) == {"int4/b32"}
    files = sorted(p.name for p in (tmp_path / "during").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "after").iterdir())
    for f in files:
        assert (tmp_path / "during" / f).read_bytes() == (tmp_path / "after" / f).read_bytes(), f
    assert Counter(n.op_type for n in ir.load(tmp_path / "during" / "decoder.onnx").graph)["MatMulNBits"] > 0


def test_batched_gate_reference_on_disk_is_the_loaded_models(ckpt, tmp_path):
    """The streamed build's gate reference (samples as one left-padded batch, each sample's log-probabilities
    written to disk as made, the KV cache dropped first) is the loaded model's on the same batch, and one
    sample at a time gives the same tokens (left padding moves log-probabilities by <= 1e-5 of their scale
    in transformers itself: 9e-6 measured on tiny-pg2)."""
    from pgexport.verify import gate, samples
    from pgexport.source.streamed import streamed_model

    directory, config, g, _ = ckpt
    source = sources.resolve(str(directory))
    cards = samples.gate_samples(source, 5, g.image_size)
    model = streamed_model(config, CheckpointWeights(directory, meta_model(config)))
    got = gate.torch_reference(model, directory, g, cards, 10, batch=3, out_dir=tmp_path)
    assert isinstance(got.logprobs, gate.OnDisk) and sorted(p.name for p in tmp_path.iterdir()) == [
        f"lp{i}.npy" for i in range(5)]
    loaded = sources.load_model(source)
    for batch, tolerance in ((3, 1e-6), (1, 2e-5)):
        want = gate.torch_reference(loaded, directory, g, cards, 10, batch=batch)
        assert got.greedy == want.greedy and len({tuple(t) for t in want.greedy}) > 1, want.greedy
        scale = max(float(np.abs(b).max()) for b in want.logprobs)
        for a, b in zip(got.logprobs, want.logprobs):
            assert a.shape == b.shape and np.abs(a - b).max() <= tolerance * scale, (batch, np.abs(a - b).max())


def test_streamed_awq_build_writes_the_whole_builds_graphs(tmp_path):
    """AWQ, then GPTQ, under --stream: the scales are searched one layer at a time and folded into what the layers
    read (awq.ScaledWeights), so the bundle is the whole-model build's, byte for byte (Gemma 2: its MLP norm is
    pre_feedforward_layernorm)."""
    import json

    from pgexport.build.bundle_steps import BuildOptions, build

    seen: dict[bool, list[str]] = {True: [], False: []}
    out = {stream: build(BuildOptions(model="tiny-pg2", out=tmp_path / str(stream), quant="int4",
                                      gate_samples=4, gate_tokens=8, parity_tokens=4, stream=stream),
                         seen[stream].append)
           for stream in (False, True)}
    assert seen[True].index("AWQ") < seen[True].index("GPTQ") < seen[True].index("export decoder")
    whole, streamed = (json.loads((out[s] / "manifest.json").read_text()) for s in (False, True))
    assert whole["files"] == streamed["files"] and streamed["parity"]["ok"]
    spread = streamed["quantization"]["awq_scale_spread"]
    assert spread == whole["quantization"]["awq_scale_spread"] and len(spread) == 3 * 4  # three groups, 4 layers
    assert any("pre_feedforward_layernorm" in k for k in spread) and max(spread.values()) > 1.0


def test_auto_measures_a_streamed_model_as_the_loaded_one(ckpt):
    """`--quant auto`'s measurements (quant/layerwise.py) on a model that streams its layers: each unit's KL alone
    and the agreement with every unit in a form are the loaded model's."""
    import torch

    from pgexport.export.decoder import DecoderWithPast
    from pgexport.quant import auto
    from pgexport.quant.calibration import calibration_inputs
    from pgexport.quant.layerwise import Layerwise
    from pgexport.quant.recipes import RECIPES
    from pgexport.source.streamed import streamed_model
    from pgexport.verify import samples
    from pgexport.verify.reference import TorchReference

    directory, config, g, loaded = ckpt
    cards = samples.calibration_samples(sources.resolve(str(directory)), 4, g.image_size)
    measured = []
    for model in (loaded, streamed_model(config, CheckpointWeights(directory, meta_model(config)))):
        dec = DecoderWithPast(model, g)
        with torch.no_grad():
            states = calibration_inputs(model, dec, directory, g, cards)
            all_units = auto.units(model, dec, RECIPES["auto"])
            form = auto.Former(all_units, None)
            ref = TorchReference.for_model(model, directory, g)
            run = Layerwise(model, dec, states, form, auto.TABLE_UNIT, auto.TABLE_UNIT, auto.VISION,
                            auto.vision_embeddings(ref, model.model.vision_tower, states, form))
            kl = run.alone([u.name for u in all_units], range(len(states)))
            measured.append((kl, [run.score({u.name: b for u in all_units})[1] for b in (4, 8)]))
    (kl_loaded, same_loaded), (kl_streamed, same_streamed) = measured
    assert same_streamed == same_loaded
    assert kl_streamed.keys() == kl_loaded.keys() and len(kl_loaded) == 7 * g.text_layers + 2
    for unit, want in kl_loaded.items():
        assert want > 0 and abs(kl_streamed[unit] - want) <= 1e-4 * want, (unit, kl_streamed[unit], want)
