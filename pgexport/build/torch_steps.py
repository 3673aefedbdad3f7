"""The PyTorch half of a build, run in a child process (pgexport.child): load the model, compute the
references, run GPTQ, export the graphs: the "torch" steps of plan.STEPS.

Why a child process: the float32 model is as large as the graphs (11.7 GB for a 3B model), and
onnxscript 0.7's rewrite rules keep a reference to the last graph they optimised (SimplePatternMatcher
stores it and never lets go), which pins every exported weight after export returns. When the child
exits, all of it goes back to the OS before onnxruntime loads a single graph. Results come back as files
in the build's temporary directory: .npz arrays (read with allow_pickle=False) and JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgexport import child
from pgexport.verify import parity
from pgexport.files import write_errors
from pgexport.build.plan import TORCH, Plan, execute

WORK = ".torch"


@dataclass
class TorchResults:
    parity: Path | None  # the PyTorch reference for the parity check, read by load_parity when it runs
    gate_greedy: list[list[int]] | None
    gate_logprobs: Sequence[np.ndarray] | None  # gate.OnDisk
    gptq: dict | None  # module name -> nbits.Packed
    layers: dict | None = None  # a streamed build's per-layer parity report (layer_parity.py)
    quantized: dict | None = None  # graph name -> quantization report, for graphs quantized as exported
    awq: dict | None = None  # AWQ: each scaled group's spread of scales (max / min)
    auto: dict | None = None  # `--quant auto`: {"recipe": the recipe it chose, "report": how it chose}


def run(plan: Plan, out_dir: Path, progress, detail=None) -> TorchResults:
    """Run the plan's torch steps in a child Python, exporting into out_dir; relay its progress
    (progress(step name); detail(text) within a long step, e.g. "layer 3/42"); load what it wrote (the gate's
    log-probabilities stay on disk until read; `cleanup` removes them)."""
    work = out_dir / WORK
    work.mkdir(parents=True, exist_ok=True)
    job = {"plan": plan.to_json(), "out_dir": str(out_dir)}

    step = ["starting"]

    def relay(event: str, text: str) -> None:
        if event == "step":
            step[0] = text
            progress(text)
        elif event == "detail" and detail is not None:
            detail(text)

    try:
        child.run("pgexport.build.torch_steps", job, work / "job.json", relay)
    except child.ChildOutOfMemory as exc:
        from pgexport_runtime.out_of_memory import out_of_memory

        hint = "nothing was written; free memory, or use a machine with more" + (
            "" if plan.stream else " (--stream holds one decoder layer at a time)")
        raise out_of_memory(f"building (the PyTorch phase, step {step[0]!r})", exc.words,
                            plan.estimate and plan.estimate.peak_rss_bytes, hint) from None
    except child.ChildFailed as exc:
        from pgexport_runtime.out_of_memory import address_space_limit, out_of_memory

        if "killed by" in exc.how and address_space_limit() is not None:
            # under an address-space limit, native code whose allocation failed may crash instead of reporting it
            raise out_of_memory(f"building (the PyTorch phase, step {step[0]!r})", f"the child was {exc.how}",
                                plan.estimate and plan.estimate.peak_rss_bytes,
                                "nothing was written; free memory, or use a machine with more") from None
        raise RuntimeError(f"the PyTorch phase failed ({exc.how}):\n" + "\n".join(exc.tail or ["(no output)"])) from None
    return _load(work)


def cleanup(out_dir: Path) -> None:
    """Remove what the torch steps left for the bundle steps (before the bundle is committed)."""
    shutil.rmtree(out_dir / WORK, ignore_errors=True)


def _child(job: dict, job_file: Path) -> None:
    plan = Plan.from_json(job["plan"])
    with write_errors(plan.options.out):
        phase = _Phase(plan, Path(job["out_dir"]), job_file.parent)
        execute(plan, TORCH, phase.work(), lambda name: child.emit("step", name))


class _Phase:
    """What the torch steps share: the source, the model (peft-attached until merged), the results written."""

    def __init__(self, plan: Plan, out_dir: Path, work: Path):
        self.opts, self.stream, self.out_dir, self.work_dir = plan.options, plan.stream, out_dir, work
        self.source, self.geometry, self.recipe = plan.source, plan.geometry, plan.recipe
        self.kv_layout = plan.kv.layout
        self.model = self.integers = None
        self.weights = None  # streamed: the checkpoint the decoder layers are read from, one at a time
        self.gptq_files = None  # streamed: GPTQ's packed weights, on disk until the decoder is exported
        self.packed = None  # GPTQ's packed weights, for `--quant auto` to measure the 4-bit forms with
        self.checkpoint = self.names = None  # streamed with an adapter: what merge_adapter merges it into

    def work(self) -> dict:
        from pgexport.export import graphs

        g, out = self.geometry, self.out_dir
        return {"load model": self.load_model, "PyTorch reference": self.parity_reference,
                "gate reference": self.gate_reference, "merge adapter": self.merge_adapter,
                "AWQ": self.awq, "GPTQ": self.gptq, "choose precision": self.choose_precision,
                "export vision encoder": self.export_vision_encoder,
                "export projector": lambda: graphs.export_projector(self.model, g, out),
                "export decoder": self.export_decoder, "layer parity": self.layer_parity}

    @property
    def reference(self):
        """What the bundle is compared with: with an adapter, the peft model, attached and unmerged (what the
        user trained, computed by peft); the graphs are exported from peft's merge of it."""
        return self.model.get_base_model() if self.source.adapter is not None else self.model

    def load_model(self) -> None:
        import torch

        from pgexport.source import sources

        if self.stream:
            from pgexport.source import presets, streamed
            from pgexport.source.weights import CheckpointWeights, meta_model

            config = sources.load_config(self.source)
            directory = presets.ensure(self.source, config) if self.source.kind == "preset" else self.source.directory
            checkpoint = CheckpointWeights(directory, meta_model(config))
            self.model = streamed.streamed_model(config, checkpoint)
            self.weights = streamed.ResidentFirst(self.model, checkpoint)
            if self.source.adapter is not None:  # merged into what is read, after the references (merge_adapter)
                from pgexport.source import adapters
                from pgexport.source.weights import parameter_names

                self.checkpoint, self.names = checkpoint, parameter_names(self.model)
                self.model = adapters.attach(self.model, self.source.adapter, streamed=True)
            return
        self.model, self.integers = sources.load_model_and_integers(self.source, torch.float32, merge_adapter=False)

    def parity_reference(self) -> None:
        ref = parity.torch_reference(self.reference, self.source.directory, self.geometry, self.opts.parity_tokens)
        np.savez(self.work_dir / "parity.npz", pixel_values=ref.pixel_values, vision_features=ref.vision_features,
                 image_embeds=ref.image_embeds, input_ids=ref.input_ids, attention_mask=ref.attention_mask,
                 logits=ref.logits)
        (self.work_dir / "parity.json").write_text(json.dumps({"greedy": ref.greedy}))

    def gate_reference(self) -> None:
        from pgexport.estimate import gate_batch
        from pgexport.verify import gate, samples

        gate_set = samples.gate_samples(self.source, self.opts.gate_samples, self.geometry.image_size)
        (self.work_dir / "gate").mkdir(exist_ok=True)  # one file each, written as made: read one at a time
        # streamed, every forward pass reads every layer: samples go through together, as many as the KV fits
        batch = gate_batch(self.geometry, self.opts.gate_tokens, len(gate_set)) if self.stream else 1
        gref = gate.torch_reference(self.reference, self.source.directory, self.geometry, gate_set,
                                    self.opts.gate_tokens, batch=batch, out_dir=self.work_dir / "gate")
        (self.work_dir / "gate.json").write_text(json.dumps({"greedy": gref.greedy}))

    def export_vision_encoder(self) -> None:
        from contextlib import nullcontext

        from pgexport.export import graphs
        from pgexport.source.weights import materialized, parameter_names

        if self.stream:  # the references are done: the table is read again, a tensor at a time, when exported
            from pgexport.source.streamed import drop_table

            drop_table(self.model)
        tower = self.model.model.vision_tower
        # streamed, the tower holds its weights only inside its forward: for the export, throughout
        with materialized(tower, parameter_names(self.model), self.weights) if self.stream else nullcontext():
            graphs.export_vision_encoder(self.model, self.geometry, self.out_dir)

    def export_decoder(self) -> None:
        """Streamed and quantized, the decoder is quantized as it is written: it is never on disk in float32."""
        from pgexport.export import graphs
        from pgexport.quant.apply import quantize_model
        from pgexport.source.weights import ModuleWeights

        weights = self.weights if self.stream else ModuleWeights(self.model)
        if not self.stream or self.recipe.is_identity:
            graphs.export_decoder(self.model.config, weights, self.geometry, self.out_dir, self.kv_layout)
            return
        report = {}

        def quantize(graph, path) -> None:
            report.update(quantize_model("decoder", graph, path, self.recipe, self.gptq_files))

        graphs.export_decoder(self.model.config, weights, self.geometry, self.out_dir, self.kv_layout, quantize)
        (self.work_dir / "quantized.json").write_text(json.dumps({"decoder": report}))

    def layer_parity(self) -> None:
        from pgexport.verify import layer_parity

        with np.load(self.work_dir / "parity.npz", allow_pickle=False) as z:
            ids, embeds, mask = z["input_ids"], z["image_embeds"], z["attention_mask"]
        types = parity.token_type_ids(self.source.directory, self.geometry)
        report = layer_parity.check_layers(self.model.config, self.geometry, self.weights,
                                           layer_parity.Prefill(ids, embeds, mask, types),
                                           self.opts.tolerance.relative, progress=_layer_detail,
                                           kv_layout=self.kv_layout)
        (self.work_dir / "layers.json").write_text(json.dumps(report))

    def merge_adapter(self) -> None:
        """Streamed, the adapter is merged into each module's weights as they are read (adapter_merge.py)."""
        if self.stream:
            from pgexport.source import adapter_merge, streamed

            self.model, weights = adapter_merge.unload(self.model, self.names, self.checkpoint)
            streamed.read_from(self.model, weights)
            self.weights = streamed.ResidentFirst(self.model, weights)
            return
        from pgexport.source import adapters

        self.model = adapters.merge(self.model)

    def awq(self) -> None:
        """AWQ scales folded into the float32 decoder (streamed: into what its layers read): the graphs are
        exported from the scaled model, and GPTQ, when the recipe has it, calibrates on it."""
        from pgexport.quant import awq
        from pgexport.verify import samples

        calib = samples.calibration_samples(self.source, self.recipe.calibration_samples, self.geometry.image_size,
                                            self.opts.calibration)
        spread = awq.apply_awq(self.model, self.source.directory, self.geometry, self.recipe, calib,
                               progress=_layer_detail)
        if self.stream:  # the layers now read scaled weights; so does the export
            from pgexport.source import streamed

            self.weights = streamed.ResidentFirst(self.model, streamed.source_of(self.model))
        (self.work_dir / "awq.json").write_text(json.dumps(spread))

    def gptq(self) -> None:
        """Streamed, each layer's packed weights go to disk as they are made and the decoder export reads them
        back; otherwise they are handed to the bundle process, which quantizes the float32 decoder file."""
        if self.integers is not None:  # a GPTQ checkpoint: its own integers, not a new calibration
            packed = self.integers
        else:
            from pgexport.quant import gptq
            from pgexport.verify import samples
            from pgexport.quant.packed_store import PackedFiles

            calib = samples.calibration_samples(self.source, self.recipe.calibration_samples,
                                                self.geometry.image_size, self.opts.calibration)
            into = PackedFiles(self.work_dir / "gptq") if self.stream else None
            packed = gptq.quantize_decoder(self.model, self.source.directory, self.geometry, self.recipe, calib,
                                           progress=_layer_detail, into=into)
            if self.stream:
                self.gptq_files = packed
                return
        self.packed = packed
        arrays = {}
        for name, p in packed.items():
            arrays[f"{name}|data"], arrays[f"{name}|scales"] = p.data, p.scales
            if p.zero_points is not None:
                arrays[f"{name}|zero_points"] = p.zero_points
            if p.input_perm is not None:
                arrays[f"{name}|input_perm"] = p.input_perm
        np.savez(self.work_dir / "gptq.npz", **arrays)
        (self.work_dir / "gptq.json").write_text(json.dumps({n: [p.bits, p.block_size, p.k, p.n]
                                                             for n, p in packed.items()}))


    def choose_precision(self) -> None:
        """`--quant auto`: which units go to 8 bits (quant/auto.py); the bundle process quantizes with the
        recipe chosen here, and the float32 graphs are exported from the unchanged weights."""
        from pgexport.quant import auto
        from pgexport.verify import samples

        calib = samples.calibration_samples(self.source, self.recipe.calibration_samples, self.geometry.image_size,
                                            self.opts.calibration)
        packed = self.gptq_files if self.stream else self.packed
        chosen, report = auto.choose(self.model, self.source.directory, self.geometry, self.recipe, calib,
                                     self.opts.gate_tokens, packed, progress=lambda text: child.emit("detail", text))
        self.recipe = chosen
        (self.work_dir / "auto.json").write_text(json.dumps({"recipe": chosen.to_dict(), "report": report}))


def _layer_detail(i: int, n: int) -> None:
    child.emit("detail", f"layer {i + 1}/{n}")


def load_parity(path: Path) -> parity.Reference:
    """The parity check's reference, read when the check runs and dropped after it: its [B, S, V] prefill
    logits are 0.57 GB at 10B, which the bundle process held through the accuracy gate before."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return parity.Reference(greedy=json.loads(path.with_suffix(".json").read_text())["greedy"], **arrays)


def _load(work: Path) -> TorchResults:
    from pgexport.nbits import Packed
    from pgexport.verify.gate import OnDisk

    ref = work / "parity.npz" if (work / "parity.npz").is_file() else None
    greedy = logprobs = None
    if (work / "gate.json").is_file():
        greedy = json.loads((work / "gate.json").read_text())["greedy"]
        logprobs = OnDisk([work / "gate" / f"lp{i}.npy" for i in range(len(greedy))])
    gptq = None
    if (work / "gptq.npz").is_file():
        meta = json.loads((work / "gptq.json").read_text())
        with np.load(work / "gptq.npz", allow_pickle=False) as z:
            def opt(key):
                return z[key] if key in z.files else None

            gptq = {n: Packed(z[f"{n}|data"], z[f"{n}|scales"], opt(f"{n}|zero_points"), bits, block, k, n_out,
                              opt(f"{n}|input_perm")) for n, (bits, block, k, n_out) in meta.items()}
    def read(name):
        return json.loads((work / name).read_text()) if (work / name).is_file() else None

    return TorchResults(ref, greedy, logprobs, gptq, read("layers.json"), read("quantized.json"), read("awq.json"),
                        read("auto.json"))


if __name__ == "__main__":
    sys.exit(child.main(_child))
