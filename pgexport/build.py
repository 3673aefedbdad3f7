"""`pgexport build`: checkpoint -> bundle (three ONNX graphs, tokenizer, manifest), verified against PyTorch."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from pgexport_runtime import io_names as io
from pgexport_runtime.geometry import Geometry

from . import parity, sources, torch_phase
from .bundle import BundleWriter, check_graph_files
from .export.graphs import FILES, IO
from .files import write_errors
from .plan import BUNDLE, BuildOptions, Plan, execute, steps

__all__ = ["BuildOptions", "GateError", "ParityError", "build", "planned_steps"]


class ParityError(Exception):
    """The exported graphs do not reproduce PyTorch; the message names the first graph that diverges."""


class GateError(Exception):
    """The quantized bundle agrees with PyTorch less than --min-agreement asks."""


def planned_steps(opts: BuildOptions) -> list[str]:
    """The progress steps `build` will report, for a progress bar's total."""
    return [s.name for s in steps(Plan.of(opts))]


def build(opts: BuildOptions, progress=None) -> Path:
    """Export, check and write a bundle. `progress(step_name)` is called as each step starts."""
    with write_errors(opts.out):  # a full disk or read-only target: one line, and the temp dir is gone
        return _Build(Plan.of(opts), progress or (lambda name: None)).run()


class _Build:
    """The bundle process: the torch steps run in a child (torch_phase), then the "bundle" steps of
    plan.STEPS run here on the graphs it exported, in the bundle's temporary directory."""

    def __init__(self, plan: Plan, progress):
        from .quant.recipes import resolve_recipe

        self.plan, self.opts, self.progress = plan, plan.options, progress
        self.source = sources.resolve(self.opts.model, self.opts.adapter)
        self.geometry = sources.load_geometry(self.source)
        self.recipe = resolve_recipe(self.opts.quant)
        self.mask = _load_mask_decoder(plan.mask_weights)  # bad weights: a user error before the slow steps
        self.writer = BundleWriter(self.opts.out, force=self.opts.force)
        self.manifest: dict = {}
        self.quantized: dict = {}  # graph name -> its quantization report
        self.results = None

    def run(self) -> Path:
        t0 = time.time()
        with self.writer:
            # the PyTorch phase runs in a child process: its memory is back with the OS before onnxruntime loads
            self.results = torch_phase.run(self.opts, self.writer.tmp, self.progress)
            execute(self.plan, BUNDLE, self.work(), self.progress)
            check_graph_files(self.writer.tmp, self.manifest)
            self.manifest["build"]["seconds"] = round(time.time() - t0, 1)
            self.writer.write_manifest(self.manifest, final=True)
            return self.writer.commit()

    def work(self) -> dict:
        return {"export mask decoder": self.export_mask_decoder, "write manifest": self.write_manifest,
                "parity check": self.parity_check,
                "quantize vision encoder": lambda: self.quantize("vision_encoder"),
                "quantize projector": lambda: self.quantize("projector"),
                "quantize decoder": lambda: self.quantize("decoder"),
                "rewrite manifest": self.rewrite_manifest, "accuracy gate": self.accuracy_gate}

    def export_mask_decoder(self) -> None:
        from .export.graphs import export_mask_decoder

        export_mask_decoder(self.mask[0], self.writer.tmp)

    def write_manifest(self) -> None:
        """Tokenizer and manifest (with every file's sha256) as the float32 bundle."""
        processor = sources.load_processor(self.source.directory)
        sources.write_tokenizer(self.source, self.writer.path("tokenizer.json"), processor)
        files = sorted(p.name for p in self.writer.tmp.iterdir())
        self.manifest = _manifest(self.source, self.geometry, self.opts, files, processor)
        if self.mask is not None:  # an optional, appended graph entry (older runtimes ignore it)
            from .export import mask_decoder

            self.manifest["graphs"]["mask_decoder"] = (_graph_entry(files, "mask_decoder", self.geometry)
                                                       | mask_decoder.manifest_fields(*self.mask))
        self.writer.write_manifest(self.manifest, final=False)

    def parity_check(self) -> None:
        report = parity.compare(self.writer.tmp, self.results.parity, self.opts.tolerance,
                                manifest_file=self.writer.partial_name)
        if self.mask is not None:
            from . import mask_parity

            entry = mask_parity.check(self.writer.path(FILES["mask_decoder"]), self.mask[0],
                                      self.opts.tolerance.relative)
            report = mask_parity.add_to_report(report, entry)
        self.manifest["parity"] = report
        if not report["ok"]:
            raise ParityError(f"parity check failed: {parity.summarize_failure(report)}")

    def quantize(self, name: str) -> None:
        """Rewrite one (parity-checked) float32 graph per the recipe."""
        from .quant.apply import quantize_graph

        self.quantized[name] = quantize_graph(name, self.writer.path(FILES[name]), self.recipe, self.results.gptq)

    def rewrite_manifest(self) -> None:
        """The quantized graphs' precisions, files and report (sha256s rehashed as the manifest is written)."""
        self.manifest["quantization"] = {"recipe": self.recipe.to_dict(), "summary": self.recipe.summary(),
                                         "graphs": self.quantized, "accuracy": None}
        names = sorted(p.name for p in self.writer.tmp.iterdir())
        for name, entry in self.quantized.items():
            graph = self.manifest["graphs"][name]
            graph["precision"] = entry["precision"]
            graph["data_files"] = [f for f in names if f.startswith(graph["file"]) and f != graph["file"]]
        self.writer.write_manifest(self.manifest, final=False)

    def accuracy_gate(self) -> None:
        """The quantized bundle against the PyTorch reference's greedy tokens and log-probabilities.

        Measured as it will run: with prepacking, the runtime default. Unpacked MatMulNBits weights take a far
        slower kernel path (the 3B int4 gate took most of a 46-minute build that way). Float graphs stay
        unpacked, as in the parity check, so that a 3B fp16/fp32 decoder is not held twice."""
        from pgexport_runtime import PaliGemma, SessionConfig

        from .quant import gate, samples

        ref = gate.GateReference(samples.gate_samples(self.source, self.opts.gate_samples, self.geometry.image_size),
                                 self.results.gate_greedy, self.results.gate_logprobs)
        quantized = any(self.recipe.precision_for(c, None).kind not in ("fp32", "fp16")
                        for c in ("decoder_linear", "lm_head"))
        pg = PaliGemma(self.writer.tmp, SessionConfig(prepack=quantized), verify=False,
                       manifest_file=self.writer.partial_name)
        accuracy = gate.evaluate(pg, ref, self.opts.gate_tokens)
        del pg
        self.manifest["quantization"]["accuracy"] = accuracy
        if self.opts.min_agreement is not None and accuracy["sequence_agreement"] < self.opts.min_agreement:
            raise GateError(f"accuracy gate failed: sequence agreement {accuracy['sequence_agreement']:.3f} < "
                            f"--min-agreement {self.opts.min_agreement} over {accuracy['samples']} held-out "
                            f"samples (token agreement {accuracy['token_agreement']:.3f}, mean KL "
                            f"{accuracy['mean_kl']:.2e})")


def _load_mask_decoder(weights: Path | None):
    """(torch module, weights path), or None without mask-decoder weights."""
    from .export import mask_decoder

    return None if weights is None else (mask_decoder.load(weights), weights)


def _graph_entry(files: list[str], name: str, g: Geometry) -> dict:
    file = FILES[name]
    inputs, outputs = IO[name](g)
    data = [f for f in files if f.startswith(file) and f != file]  # external data: decoder.onnx.data
    return {"file": file, "data_files": data, "precision": "fp32", "inputs": list(inputs), "outputs": list(outputs)}


def _manifest(source: sources.Source, g: Geometry, opts: BuildOptions, files: list[str], processor) -> dict:
    import importlib.metadata as md

    from .export.onnx_export import OPSET

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    tok = sources.load_tokenizer_info(source, g, processor)
    pre = sources.load_preprocessing(source, g, processor)
    graphs = {name: _graph_entry(files, name, g) for name in ("vision_encoder", "projector", "decoder")}
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
