"""The PyTorch half of a build, run in a child process: load the model, compute the references, run GPTQ,
export the graphs.

Why a child process: the float32 model is as large as the graphs (11.7 GB for a 3B model), and
onnxscript 0.7's rewrite rules keep a reference to the last graph they optimised (SimplePatternMatcher
stores it and never lets go), which pins every exported weight after export returns. When the child
exits, all of it goes back to the OS before onnxruntime loads a single graph. Results come back as files
in the build's temporary directory: .npz arrays (read with allow_pickle=False) and JSON.

Child protocol on stdout: `@@step NAME` per progress step, `@@error MESSAGE` for a user error (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pgexport_runtime.errors import UserError

from . import parity
from .files import write_errors

WORK = ".torch"
PARENT_ENV = "PGEXPORT_BUILD_PID"  # the build process the child belongs to
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TorchJob:
    model: str
    adapter: str | None  # peft adapter directory: references from the peft model, export of the merged one
    out_dir: str  # the build's temporary bundle directory
    target: str  # the bundle directory the user asked for (named in messages)
    parity_tokens: int
    skip_parity: bool
    quant: str
    gate_samples: int
    gate_tokens: int
    calibration: str | None


@dataclass
class TorchResults:
    parity: parity.Reference | None
    gate_greedy: list[list[int]] | None
    gate_logprobs: list[np.ndarray] | None
    gptq: dict | None  # module name -> blockwise.Packed


def run(job: TorchJob, progress) -> TorchResults:
    """Run the job in a child Python; relay its progress; load what it wrote."""
    work = Path(job.out_dir) / WORK
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(json.dumps(asdict(job)))
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    with open(work / "stderr.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pgexport.torch_phase", str(work / "job.json")],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            user_error = None
            for line in proc.stdout:
                if line.startswith("@@step "):
                    progress(line[7:].rstrip("\n"))
                elif line.startswith("@@error "):
                    user_error = line[8:].rstrip("\n")
            code = proc.wait()
        finally:  # interrupted (SIGINT, SIGTERM) or failed here: the child must not outlive the build
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if user_error is not None:
        raise UserError(user_error)
    if code != 0:
        tail = (work / "stderr.log").read_text().strip().splitlines()[-12:]
        raise RuntimeError(f"the PyTorch phase failed (exit {code}):\n" + "\n".join(tail))
    results = _load(work)
    shutil.rmtree(work, ignore_errors=True)
    return results


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this process when the build that started it dies, even by SIGKILL;
    otherwise the child would keep exporting into a temp directory nobody will rename or remove."""
    import ctypes
    import signal

    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def _main(job_path: str) -> int:
    _die_with_parent()
    job = TorchJob(**json.loads(Path(job_path).read_text()))
    work = Path(job_path).parent

    def step(name: str) -> None:
        print(f"@@step {name}", flush=True)

    try:
        with write_errors(Path(job.target)):
            _child(job, work, step)
    except UserError as exc:
        print(f"@@error {exc}", flush=True)
        return 2
    return 0


def _child(job: TorchJob, work: Path, step) -> None:
    import torch

    from . import build, sources
    from .quant.recipes import resolve_recipe

    source = sources.resolve(job.model, job.adapter)
    geometry = sources.load_geometry(source)
    recipe = resolve_recipe(job.quant)
    step("load model")
    settings = sources.gptq_settings(source) if source.kind != "preset" else None
    imported = None
    if settings is not None:  # a GPTQ checkpoint: dequantized model + its own integers for the graphs
        from .quant.gptq_import import load_checkpoint

        model, imported = load_checkpoint(source.directory, settings)
    else:
        model = sources.load_model(source, torch.float32, merge_adapter=False)
    # With an adapter, `model` is now the peft model, adapter attached and unmerged: the references below are
    # what the user trained, computed by peft; the graphs are exported from peft's merge of it (further down).
    reference = model.get_base_model() if source.adapter is not None else model
    if not job.skip_parity:
        step("PyTorch reference")
        ref = parity.torch_reference(reference, source.directory, geometry, job.parity_tokens)
        np.savez(work / "parity.npz", pixel_values=ref.pixel_values, vision_features=ref.vision_features,
                 image_embeds=ref.image_embeds, input_ids=ref.input_ids, attention_mask=ref.attention_mask,
                 logits=ref.logits)
        (work / "parity.json").write_text(json.dumps({"greedy": ref.greedy}))
        del ref
    if not recipe.is_identity and job.gate_samples > 0:
        from .quant import gate, samples

        step("gate reference")
        gate_set = samples.gate_samples(source, job.gate_samples, geometry.image_size)
        gref = gate.torch_reference(reference, source.directory, geometry, gate_set, job.gate_tokens)
        np.savez(work / "gate.npz", **{f"lp{i}": lp for i, lp in enumerate(gref.logprobs)})
        (work / "gate.json").write_text(json.dumps({"greedy": gref.greedy}))
    del reference
    if source.adapter is not None:
        from . import adapters

        step("merge adapter")
        model = adapters.merge(model)
    if not recipe.is_identity:
        from .quant import samples

        if recipe.needs_calibration:
            step("GPTQ")
            if imported is not None:  # the checkpoint's own integers, not a new calibration
                packed = imported
            else:
                from .quant import gptq

                calib = samples.calibration_samples(source, recipe.calibration_samples, geometry.image_size,
                                                    Path(job.calibration) if job.calibration else None)
                packed = gptq.quantize_decoder(model, source.directory, geometry, recipe, calib)
            arrays = {}
            for name, p in packed.items():
                arrays[f"{name}|data"], arrays[f"{name}|scales"] = p.data, p.scales
                if p.zero_points is not None:
                    arrays[f"{name}|zero_points"] = p.zero_points
                if p.input_perm is not None:
                    arrays[f"{name}|input_perm"] = p.input_perm
            np.savez(work / "gptq.npz", **arrays)
            (work / "gptq.json").write_text(json.dumps({n: [p.bits, p.block_size, p.k, p.n] for n, p in packed.items()}))
    build.export_graphs(model, geometry, Path(job.out_dir), step)


def _load(work: Path) -> TorchResults:
    from .quant.blockwise import Packed

    ref = None
    if (work / "parity.npz").is_file():
        with np.load(work / "parity.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        ref = parity.Reference(greedy=json.loads((work / "parity.json").read_text())["greedy"], **arrays)
    greedy = logprobs = None
    if (work / "gate.npz").is_file():
        greedy = json.loads((work / "gate.json").read_text())["greedy"]
        with np.load(work / "gate.npz", allow_pickle=False) as z:
            logprobs = [z[f"lp{i}"] for i in range(len(greedy))]
    gptq = None
    if (work / "gptq.npz").is_file():
        meta = json.loads((work / "gptq.json").read_text())
        with np.load(work / "gptq.npz", allow_pickle=False) as z:
            def opt(key):
                return z[key] if key in z.files else None

            gptq = {n: Packed(z[f"{n}|data"], z[f"{n}|scales"], opt(f"{n}|zero_points"), bits, block, k, n_out,
                              opt(f"{n}|input_perm")) for n, (bits, block, k, n_out) in meta.items()}
    return TorchResults(ref, greedy, logprobs, gptq)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
