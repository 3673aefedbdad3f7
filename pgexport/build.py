"""`pgexport build`: checkpoint -> bundle (three ONNX graphs, tokenizer, manifest), verified against PyTorch."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from pgexport_runtime import io_names as io
from pgexport_runtime.errors import UserError
from pgexport_runtime.geometry import Geometry

from . import parity, sources, torch_phase
from .bundle import BundleWriter, check_graph_files
from .files import write_errors

VISION_FILE, PROJECTOR_FILE, DECODER_FILE = "vision_encoder.onnx", "projector.onnx", "decoder.onnx"
MASK_DECODER_FILE = "mask_decoder.onnx"  # optional: only when mask-decoder weights are found


class ParityError(Exception):
    """The exported graphs do not reproduce PyTorch; the message names the first graph that diverges."""


class GateError(Exception):
    """The quantized bundle agrees with PyTorch less than --min-agreement asks."""


@dataclass(frozen=True)
class BuildOptions:
    model: str | None = None
    adapter: Path | None = None  # a peft adapter directory, merged into the model before export
    out: Path = Path("bundle")
    force: bool = False
    parity_tokens: int = 16
    tolerance: parity.Tolerance = parity.Tolerance()
    skip_parity: bool = False
    mask_decoder: Path | None = None  # big_vision mask-decoder weights; default: the checkpoint directory's own
    max_new_tokens: int = 64
    quant: str = "fp32"  # recipe name or recipe .json file
    min_agreement: float | None = None  # fail the build if the gate's sequence agreement is lower
    gate_samples: int = 16
    gate_tokens: int = 32
    calibration: Path | None = None  # JSONL of {"image", "prompt"} for GPTQ; default: generated samples


def planned_steps(opts: BuildOptions) -> list[str]:
    """The progress steps `build` will report, for a progress bar's total."""
    from .quant.recipes import resolve_recipe

    recipe = resolve_recipe(opts.quant)
    steps = ["load model"] + ([] if opts.skip_parity else ["PyTorch reference"])
    steps += ["gate reference"] * (not recipe.is_identity and opts.gate_samples > 0)
    steps += ["merge adapter"] * (sources.resolve(opts.model, opts.adapter).adapter is not None)
    steps += ["GPTQ"] * recipe.needs_calibration
    steps += ["export vision encoder", "export projector", "export decoder", "hash files"]
    steps += [] if opts.skip_parity else ["parity check"]
    if not recipe.is_identity:
        steps += ["quantize vision_encoder", "quantize projector", "quantize decoder", "hash files"]
        steps += ["accuracy gate"] * (opts.gate_samples > 0)
    return steps


def build(opts: BuildOptions, progress=None) -> Path:
    """Export, check and write a bundle. `progress(step_name)` is called as each step starts."""
    with write_errors(opts.out):  # a full disk or read-only target: one line, and the temp dir is gone
        return _build(opts, progress or (lambda name: None))


def _build(opts: BuildOptions, step) -> Path:
    from .quant.recipes import resolve_recipe

    source = sources.resolve(opts.model, opts.adapter)
    recipe = resolve_recipe(opts.quant).verify(sources.load_geometry(source).tie_word_embeddings)
    if opts.calibration is not None and not recipe.needs_calibration:
        raise UserError(f"--calibration is only used by recipes that calibrate (int4-gptq); {recipe.name} does not")
    if opts.calibration is not None and not Path(opts.calibration).is_file():
        raise UserError(f"calibration file not found: {opts.calibration}")
    writer = BundleWriter(opts.out, force=opts.force)
    mask = _load_mask_decoder(source, opts)  # bad weights are a user error before the slow steps
    t0 = time.time()
    with writer:
        # the PyTorch phase runs in a child process: its memory is back with the OS before onnxruntime loads
        results = torch_phase.run(torch_phase.TorchJob(
            model=source.spec, adapter=str(source.adapter.directory) if source.adapter else None,
            out_dir=str(writer.tmp), target=str(opts.out), parity_tokens=opts.parity_tokens,
            skip_parity=opts.skip_parity, quant=opts.quant, gate_samples=opts.gate_samples,
            gate_tokens=opts.gate_tokens, calibration=str(opts.calibration) if opts.calibration else None), step)
        geometry = sources.load_geometry(source)
        reference = results.parity
        gate_ref = _gate_reference(source, geometry, results, opts)
        gptq_weights = results.gptq
        mask_entry = _export_mask_decoder(mask, writer) if mask is not None else None
        processor = sources.load_processor(source.directory)
        sources.write_tokenizer(source, writer.path("tokenizer.json"), processor)
        manifest = _manifest(source, geometry, opts, sorted(p.name for p in writer.tmp.iterdir()), processor)
        if mask_entry is not None:  # an optional, appended graph entry (older runtimes ignore it)
            manifest["graphs"]["mask_decoder"] = mask_entry
        step("hash files")
        writer.write_manifest(manifest, final=False)
        if reference is not None:
            step("parity check")
            report = parity.compare(writer.tmp, reference, opts.tolerance, manifest_file=writer.partial_name)
            if mask is not None:
                from . import mask_parity

                entry = mask_parity.check(writer.path(MASK_DECODER_FILE), mask[0], opts.tolerance.relative)
                report = mask_parity.add_to_report(report, entry)
            manifest["parity"] = report
            if not report["ok"]:
                raise ParityError(f"parity check failed: {parity.summarize_failure(report)}")
        if not recipe.is_identity:
            _quantize(writer, manifest, recipe, gptq_weights, gate_ref, opts, step)
        check_graph_files(writer.tmp, manifest)
        manifest["build"]["seconds"] = round(time.time() - t0, 1)
        writer.write_manifest(manifest, final=True)
        return writer.commit()


def _gate_reference(source, g: Geometry, results, opts: BuildOptions):
    """The gate's samples (regenerated: they are deterministic) with the child's reference outputs."""
    if results.gate_greedy is None:
        return None
    from .quant import gate, samples

    return gate.GateReference(samples.gate_samples(source, opts.gate_samples, g.image_size),
                              results.gate_greedy, results.gate_logprobs)


def _quantize(writer: BundleWriter, manifest: dict, recipe, gptq_weights, gate_ref, opts: BuildOptions, step) -> None:
    """Rewrite the (parity-checked) float32 graphs per the recipe, then measure them against PyTorch."""
    from pgexport_runtime import PaliGemma, SessionConfig

    from .quant import gate
    from .quant.apply import quantize_graphs

    files = {name: writer.path(manifest["graphs"][name]["file"]) for name in ("vision_encoder", "projector", "decoder")}
    report = quantize_graphs(files, recipe, gptq_weights, step)
    names = sorted(p.name for p in writer.tmp.iterdir())
    for name, entry in report.items():
        graph = manifest["graphs"][name]
        graph["precision"] = entry["precision"]
        graph["data_files"] = [f for f in names if f.startswith(graph["file"]) and f != graph["file"]]
    manifest["quantization"] = {"recipe": recipe.to_dict(), "summary": recipe.summary(), "graphs": report,
                                "accuracy": None}
    step("hash files")
    writer.write_manifest(manifest, final=False)
    if gate_ref is None:
        return
    step("accuracy gate")
    # Measured as it will run: with prepacking, the runtime default. Unpacked MatMulNBits weights take a far
    # slower kernel path (the 3B int4 gate took most of a 46-minute build that way). Float graphs stay
    # unpacked, as in the parity check, so that a 3B fp16/fp32 decoder is not held twice.
    quantized = any(recipe.precision_for(c, None).kind not in ("fp32", "fp16") for c in ("decoder_linear", "lm_head"))
    pg = PaliGemma(writer.tmp, SessionConfig(prepack=quantized), verify=False, manifest_file=writer.partial_name)
    accuracy = gate.evaluate(pg, gate_ref, opts.gate_tokens)
    del pg
    manifest["quantization"]["accuracy"] = accuracy
    if opts.min_agreement is not None and accuracy["sequence_agreement"] < opts.min_agreement:
        raise GateError(f"accuracy gate failed: sequence agreement {accuracy['sequence_agreement']:.3f} < "
                        f"--min-agreement {opts.min_agreement} over {accuracy['samples']} held-out samples "
                        f"(token agreement {accuracy['token_agreement']:.3f}, mean KL {accuracy['mean_kl']:.2e})")


def export_graphs(model, g: Geometry, out_dir: Path, step) -> None:
    """The three float32 graphs into out_dir (called in the PyTorch child process)."""
    from .export import decoder, projector, vision
    from .export.onnx_export import export_graph, param_bytes

    step("export vision encoder")
    m = vision.VisionEncoder(model)
    export_graph(m, vision.sample_inputs(g), out_dir / VISION_FILE, vision.INPUT_NAMES, vision.OUTPUT_NAMES,
                 vision.DYNAMIC_SHAPES, param_bytes(m))
    step("export projector")
    m = projector.Projector(model)
    export_graph(m, projector.sample_inputs(g), out_dir / PROJECTOR_FILE, projector.INPUT_NAMES,
                 projector.OUTPUT_NAMES, projector.DYNAMIC_SHAPES, param_bytes(m))
    step("export decoder")
    m = decoder.DecoderWithPast(model, g)
    export_graph(m, decoder.sample_inputs(g), out_dir / DECODER_FILE, decoder.input_names(g),
                 decoder.output_names(g), decoder.dynamic_shapes(g), param_bytes(m))


def _load_mask_decoder(source: sources.Source, opts: BuildOptions):
    """(torch module, weights path) from --mask-decoder or the checkpoint directory's own, else None."""
    from .export import mask_decoder

    weights = mask_decoder.find_weights(source.directory if source.kind != "preset" else None, opts.mask_decoder)
    return None if weights is None else (mask_decoder.load(weights), weights)


def _export_mask_decoder(mask, writer: BundleWriter) -> dict:
    """Export the VQ-VAE mask decoder graph; -> its manifest entry."""
    from .export import mask_decoder
    from .export.onnx_export import export_graph, param_bytes

    m, weights = mask
    export_graph(m, mask_decoder.sample_inputs(m._vq_vae._embedding.shape[0]), writer.path(MASK_DECODER_FILE),
                 mask_decoder.INPUT_NAMES, mask_decoder.OUTPUT_NAMES, mask_decoder.DYNAMIC_SHAPES, param_bytes(m))
    entry = _graph_entry([], MASK_DECODER_FILE, mask_decoder.INPUT_NAMES, mask_decoder.OUTPUT_NAMES)
    return entry | mask_decoder.manifest_fields(m, weights)


def _graph_entry(files: list[str], file: str, inputs, outputs) -> dict:
    data = [f for f in files if f.startswith(file) and f != file]  # external data: decoder.onnx.data
    return {"file": file, "data_files": data, "precision": "fp32", "inputs": list(inputs), "outputs": list(outputs)}


def _manifest(source: sources.Source, g: Geometry, opts: BuildOptions, files: list[str], processor) -> dict:
    import importlib.metadata as md

    from .export import decoder, projector, vision

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    from .export.onnx_export import OPSET

    tok = sources.load_tokenizer_info(source, g, processor)
    pre = sources.load_preprocessing(source, g, processor)
    graphs = {
        "vision_encoder": _graph_entry(files, VISION_FILE, vision.INPUT_NAMES, vision.OUTPUT_NAMES),
        "projector": _graph_entry(files, PROJECTOR_FILE, projector.INPUT_NAMES, projector.OUTPUT_NAMES),
        "decoder": _graph_entry(files, DECODER_FILE, decoder.input_names(g), decoder.output_names(g)),
    }
    return {
        "source": source.describe(),
        "geometry": g.to_dict(),
        "graphs": graphs,
        # "concat": present = past + new, in separate buffers. A later "shared" layout (fused attention
        # writing into one max-length buffer) is a new value here, not a change of the graph names.
        "kv_cache": {"layout": "concat", "dtype": "float32", "past": [io.PAST_KEY, io.PAST_VALUE],
                     "present": [io.PRESENT_KEY, io.PRESENT_VALUE]},
        "tokenizer": tok,
        "preprocessing": pre,
        "generation": {"max_new_tokens": opts.max_new_tokens, "eos_token_ids": [g.eos_token_id]},
        "tools": {name: version(name) for name in ("pgexport", "torch", "transformers", "onnx", "onnxscript", "onnxruntime")}
        | {"opset": OPSET, "python": platform.python_version()},
        "build": {"created_unix": int(time.time())},
        "parity": None,
    }
