"""`pgexport build`: checkpoint -> bundle (three ONNX graphs, tokenizer, manifest), verified against PyTorch."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path

from pgexport_runtime.geometry import Geometry
from pgexport_runtime.manifest import GraphEntry, Generation, KvCache, Manifest, MaskCodes, Record
from pgexport_runtime.session import INT8_PREFILL_GRAPH

from pgexport.verify import parity
from pgexport.source import finite, sources
from pgexport.build import torch_steps
from pgexport.build.writer import BundleWriter, check_graph_files
from pgexport.export.graphs import FILES, IO
from pgexport.files import write_errors
from pgexport.build.plan import BUNDLE, BuildOptions, Plan, execute, steps

RECIPE_FILE = "recipe.json"  # `--quant auto`: the recipe it chose, for `pgexport build --quant FILE`

__all__ = ["BuildOptions", "GateError", "ParityError", "build", "planned_steps"]


class ParityError(Exception):
    """The exported graphs do not reproduce PyTorch; the message names the first graph that diverges."""


class GateError(Exception):
    """The quantized bundle agrees with PyTorch less than --min-agreement asks."""


def planned_steps(target: BuildOptions | Plan) -> list[str]:
    """The progress steps `build` will report, for a progress bar's total."""
    return [s.name for s in steps(target if isinstance(target, Plan) else Plan.of(target))]


def build(target: BuildOptions | Plan, progress=None, detail=None) -> Path:
    """Export, check and write a bundle from options (planned here) or a plan already made. `progress(step_name)`
    is called as each step starts, `detail(text)` as a long step moves on (GPTQ and layer parity: "layer 3/42")."""
    out = target.options.out if isinstance(target, Plan) else target.out
    with write_errors(out):  # a full disk or read-only target: one line, and the temp dir is gone
        plan = target if isinstance(target, Plan) else Plan.of(target)
        return _Build(plan, progress or (lambda name: None), detail).run()


class _Build:
    """The bundle process: the torch steps run in a child (torch_steps), then the "bundle" steps of
    plan.STEPS run here on the graphs it exported, in the bundle's temporary directory."""

    def __init__(self, plan: Plan, progress, detail=None):
        self.plan, self.opts, self.progress, self.detail = plan, plan.options, progress, detail
        self.source, self.geometry, self.recipe = plan.source, plan.geometry, plan.recipe
        self.mask = _load_mask_decoder(plan.mask_weights)  # bad weights: a user error before the slow steps
        finite.check_source(plan.source)  # NaN or infinity in the checkpoint or the adapter: the same
        self.writer = BundleWriter(self.opts.out, force=self.opts.force)
        self.manifest: Manifest | None = None
        self.quantized: dict = {}  # graph name -> its quantization report
        self.results = None

    def run(self) -> Path:
        t0 = time.time()
        with self.writer:
            # the PyTorch phase runs in a child process (with this plan): its memory is back with the OS before
            # onnxruntime loads
            self.results = torch_steps.run(self.plan, self.writer.tmp, self.progress, self.detail)
            self.quantized.update(self.results.quantized or {})  # a streamed build's decoder
            if self.results.auto:  # `--quant auto`: quantize with the recipe the torch phase chose
                from pgexport.quant.recipes import recipe_from_dict

                self.recipe = recipe_from_dict(self.results.auto["recipe"], "auto")
            execute(self.plan, BUNDLE, self.work(), self.progress)
            torch_steps.cleanup(self.writer.tmp)
            record = self.manifest.record
            self._update(record=replace(record, build=record.build | {"seconds": round(time.time() - t0, 1)}))
            check_graph_files(self.writer.tmp, self.manifest.to_dict())
            self.writer.write_manifest(self.manifest.to_dict(), final=True)
            return self.writer.commit()

    def work(self) -> dict:
        return {"export mask decoder": self.export_mask_decoder, "write manifest": self.write_manifest,
                "parity check": self.parity_check,
                "quantize vision encoder": lambda: self.quantize("vision_encoder"),
                "quantize projector": lambda: self.quantize("projector"),
                "quantize decoder": lambda: self.quantize("decoder"),
                "rewrite manifest": self.rewrite_manifest, "int8 prefill graph": self.int8_prefill_graph,
                "fix shapes": self.fix_shapes,
                "accuracy gate": self.accuracy_gate}

    def export_mask_decoder(self) -> None:
        from pgexport.export.graphs import export_mask_decoder

        export_mask_decoder(self.mask[0], self.writer.tmp)

    def write_manifest(self) -> None:
        """Tokenizer and manifest (with every file's sha256) as the float32 bundle."""
        processor = sources.load_processor(self.source.directory)
        sources.write_tokenizer(self.source, self.writer.path("tokenizer.json"), processor)
        files = sorted(p.name for p in self.writer.tmp.iterdir())
        self.manifest = _manifest(self.source, self.geometry, self.opts, files, processor, self.plan.kv)
        if self.mask is not None:  # an optional, appended graph entry (older runtimes ignore it)
            from pgexport.export import mask_decoder

            module, weights = self.mask
            entry = _graph_entry(files, "mask_decoder", self.geometry, codes=MaskCodes(**mask_decoder.codes(module)),
                                 weights=Path(weights).name)
            self._update(graphs=self.manifest.graphs | {"mask_decoder": entry})
        self.writer.write_manifest(self.manifest.to_dict(), final=False)

    def _update(self, **sections) -> None:
        self.manifest = replace(self.manifest, **sections)

    def parity_check(self) -> None:
        report = parity.compare(self.writer.tmp, torch_steps.load_parity(self.results.parity), self.opts.tolerance,
                                manifest_file=self.writer.partial_name, layers=self.results.layers)
        if self.mask is not None:
            from pgexport.verify import mask_parity

            entry = mask_parity.check(self.writer.path(FILES["mask_decoder"]), self.mask[0],
                                      self.opts.tolerance.relative)
            report = mask_parity.add_to_report(report, entry)
        self._update(record=replace(self.manifest.record, parity=report))
        if not report["ok"]:
            raise ParityError(f"parity check failed: {parity.summarize_failure(report)}")

    def quantize(self, name: str) -> None:
        """Rewrite one (parity-checked) float32 graph per the recipe."""
        from pgexport.quant.apply import quantize_graph

        self.quantized[name] = quantize_graph(name, self.writer.path(FILES[name]), self.recipe, self.results.gptq)

    def rewrite_manifest(self) -> None:
        """The quantized graphs' precisions, files and report (sha256s rehashed as the manifest is written)."""
        reports = {name: self.quantized[name] for name in FILES if name in self.quantized}  # in graph order
        quantization = {"recipe": self.recipe.to_dict(), "summary": self.recipe.summary(), "graphs": reports,
                        "accuracy": None}
        if self.results.awq:  # how far AWQ moved each group's channels apart (1 = plain RTN)
            quantization["awq_scale_spread"] = self.results.awq
        if self.results.auto:  # what `auto` measured, and the recipe it chose as a file for --quant FILE
            quantization["auto"] = self.results.auto["report"]
            self.writer.path(RECIPE_FILE).write_text(json.dumps(self.recipe.to_dict(), indent=2) + "\n")
        names = sorted(p.name for p in self.writer.tmp.iterdir())
        graphs = dict(self.manifest.graphs)
        for name, report in reports.items():
            file = graphs[name].file
            graphs[name] = replace(graphs[name], precision=report["precision"],
                                   data_files=tuple(f for f in names if f.startswith(file) and f != file))
        self._update(graphs=graphs, record=replace(self.manifest.record, quantization=quantization))
        self.writer.write_manifest(self.manifest.to_dict(), final=False)

    def int8_prefill_graph(self) -> None:
        """--int8-prefill: decoder_int8, the quantized decoder with int8 products, for prefills on CPUs with int8
        matrix units (quant/int8_prefill.py); an optional graph entry with the decoder's inputs and outputs."""
        from pgexport.quant.int8_prefill import PRECISION, write_prefill_graph

        out = self.writer.path(f"{INT8_PREFILL_GRAPH}.onnx")
        products = write_prefill_graph(self.writer.path(FILES["decoder"]), out)
        if not products:  # Plan.of refuses recipes without block-quantized decoder linears
            raise AssertionError("the quantized decoder has no 4- or 8-bit products for --int8-prefill")
        names = sorted(p.name for p in self.writer.tmp.iterdir())
        decoder = self.manifest.graphs["decoder"]
        entry = replace(decoder, file=out.name, precision=PRECISION,
                        data_files=tuple(f for f in names if f.startswith(out.name) and f != out.name))
        record = self.manifest.record
        quantization = record.quantization | {INT8_PREFILL_GRAPH: {"products": products, "precision": PRECISION}}
        self._update(graphs=self.manifest.graphs | {INT8_PREFILL_GRAPH: entry},
                     record=replace(record, quantization=quantization))
        self.writer.write_manifest(self.manifest.to_dict(), final=False)

    def fix_shapes(self) -> None:
        """--kv-cache static: every graph's dimensions fixed, a prefill graph per prefix length. The graphs were
        parity-checked and quantized with symbolic dimensions; the fixed ones must then give their greedy tokens
        on the parity prompts (not checked in a streamed build, where the decoder is not loaded whole: there
        the accuracy gate, which runs after this step, measures the graphs as they ship)."""
        from pgexport.export.static_shapes import fix_bundle

        check = self.plan.parity and not self.plan.stream
        before = self._parity_greedy() if check else None
        graphs = fix_bundle(self.writer.tmp, self.manifest.graphs, self.geometry, self.manifest.kv_cache)
        self._update(graphs=graphs)
        self.writer.write_manifest(self.manifest.to_dict(), final=False)
        if not check:
            return
        after = self._parity_greedy()
        entry = {"tokens": [len(t) for t in before], "match": after == before, "ok": after == before}
        parity_report = self.manifest.record.parity
        checks = parity_report["checks"] | {"static_shapes": entry}
        self._update(record=replace(self.manifest.record, parity=parity_report | {"checks": checks}))
        self.writer.write_manifest(self.manifest.to_dict(), final=False)
        if after != before:
            raise ParityError(f"parity check failed: the fixed-shape graphs give other greedy tokens than the same "
                              f"graphs before their shapes were fixed ({after} != {before})")

    def _parity_greedy(self) -> list[list[int]]:
        from pgexport_runtime import PaliGemma, SessionConfig

        pg = PaliGemma(self.writer.tmp, SessionConfig(prepack=False), verify=False,
                       manifest_file=self.writer.partial_name)
        image = parity.parity_image(self.geometry.image_size)
        return [r.tokens for r in pg.generate([image] * len(parity.PROMPTS), list(parity.PROMPTS),
                                              max_new_tokens=self.opts.parity_tokens)]

    def accuracy_gate(self) -> None:
        """The quantized bundle against the PyTorch reference's greedy tokens and log-probabilities.

        Measured as it will run: with prepacking, the runtime default. Unpacked MatMulNBits weights take a far
        slower kernel path (the 3B int4 gate took most of a 46-minute build that way). Float graphs stay
        unpacked, as in the parity check, so that a 3B fp16/fp32 decoder is not held twice. It runs in a child
        process that imports only the runtime, the vision encoder first and freed before the decoder loads
        (gate.evaluate_apart, gate.evaluate_bundle)."""
        from pgexport.verify import gate, samples

        ref = gate.GateReference(samples.gate_samples(self.source, self.opts.gate_samples, self.geometry.image_size),
                                 self.results.gate_greedy, self.results.gate_logprobs)
        quantized = any(self.recipe.precision_for(c, None).kind not in ("fp32", "fp16")
                        for c in ("decoder_linear", "lm_head"))
        def measure(prefill: str) -> dict:
            return gate.evaluate_apart(self.writer.tmp, ref, self.opts.gate_tokens, quantized,
                                       self.writer.tmp / torch_steps.WORK, self.writer.partial_name, prefill)

        accuracy = measure("decoder")
        paths = {"decoder": accuracy}
        if INT8_PREFILL_GRAPH in self.manifest.graphs:  # the bundle as it runs where the runtime picks that graph
            paths[INT8_PREFILL_GRAPH] = accuracy[INT8_PREFILL_GRAPH] = measure("int8")
        record = self.manifest.record
        self._update(record=replace(record, quantization=record.quantization | {"accuracy": accuracy}))
        for path, acc in paths.items():
            if self.opts.min_agreement is not None and acc["sequence_agreement"] < self.opts.min_agreement:
                via = "" if path == "decoder" else f" with prefills on {path}"
                raise GateError(f"accuracy gate failed{via}: sequence agreement {acc['sequence_agreement']:.3f} < "
                                f"--min-agreement {self.opts.min_agreement} over {acc['samples']} held-out "
                                f"samples (token agreement {acc['token_agreement']:.3f}, mean KL "
                                f"{acc['mean_kl']:.2e})")


def _load_mask_decoder(weights: Path | None):
    """(torch module, weights path), or None without mask-decoder weights."""
    from pgexport.export import mask_decoder

    return None if weights is None else (mask_decoder.load(weights), weights)


def _graph_entry(files: list[str], name: str, g: Geometry, **extra) -> GraphEntry:
    file = FILES[name]
    inputs, outputs = IO[name](g)
    data = tuple(f for f in files if f.startswith(file) and f != file)  # external data: decoder.onnx.data
    return GraphEntry(file, data, "fp32", tuple(inputs), tuple(outputs), **extra)


def _manifest(source: sources.Source, g: Geometry, opts: BuildOptions, files: list[str], processor,
              kv: KvCache) -> Manifest:
    import importlib.metadata as md

    from pgexport.export.onnx_export import OPSET

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    tools = {name: version(name) for name in ("pgexport", "torch", "transformers", "onnx", "onnxscript", "onnxruntime")}
    return Manifest(
        geometry=g,
        graphs={name: _graph_entry(files, name, g) for name in ("vision_encoder", "projector", "decoder")},
        kv_cache=kv,
        tokenizer=sources.load_tokenizer_info(source, g, processor),
        preprocessing=sources.load_preprocessing(source, g, processor),
        generation=Generation(max_new_tokens=opts.max_new_tokens),
        record=Record(source=source.describe(), tools=tools | {"opset": OPSET, "python": platform.python_version()},
                      build={"created_unix": int(time.time())}),
    )
