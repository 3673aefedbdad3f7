"""The accuracy gate: a quantized bundle against the float32 PyTorch model on held-out samples.

Reference (PyTorch, before export): each sample's greedy continuation, and the next-token log-probs
teacher-forced along it (prefix bidirectional, continuation causal, in one forward pass).
Candidate (the bundle, through pgexport_runtime): greedy generation, and the same teacher-forced pass
through the decoder graph. Reported: sequence agreement (whole continuations equal), token agreement
(pooled over the longer of the two sequences), top-1 agreement and mean KL(reference || bundle) of the
teacher-forced next-token distributions.
"""

from __future__ import annotations

import json
import sys

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pgexport_runtime import decoder
from pgexport_runtime.geometry import Geometry

from pgexport.verify import agreement
from pgexport.verify.agreement import until_eos


@dataclass
class GateReference:
    samples: list[tuple[Image.Image, str]]
    greedy: list[list[int]]
    logprobs: Sequence[np.ndarray]  # [T_i, V] float32: log p(next token) at the positions predicting greedy[i]


class OnDisk(Sequence):
    """Arrays read from .npy files when indexed (the gate's [T, V] log-probabilities: 0.5 GB for 16 samples
    at PaliGemma's vocabulary, held one at a time)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.load(self.paths[i], allow_pickle=False)


def torch_reference(model, source_dir, g: Geometry, samples, max_new_tokens: int, progress=None,
                    batch: int = 1, out_dir: Path | None = None) -> GateReference:
    """The PyTorch reference's greedy tokens and log-probabilities per sample (TorchReference.greedy_scored).
    batch > 1: samples generated together (a model that streams its layers, streamed.py).
    out_dir: each sample's log-probabilities are written there (lp{i}.npy) as they are made, not held."""
    from pgexport.verify.reference import TorchReference

    ref = TorchReference.for_model(model, source_dir, g)
    logprobs, greedy = _Store(out_dir), []
    for tokens, lp in ref.greedy_scored(list(samples), max_new_tokens, batch, progress):
        greedy.append(tokens)
        logprobs.append(lp)
    return GateReference(list(samples), greedy, logprobs.done())


class _Store:
    """The reference's log-probabilities, in a list or written to a directory as they come."""

    def __init__(self, out_dir: Path | None):
        self.out_dir, self.items = out_dir, []

    def append(self, lp: np.ndarray) -> None:
        if self.out_dir is None:
            self.items.append(lp)
            return
        self.items.append(self.out_dir / f"lp{len(self.items)}.npy")
        np.save(self.items[-1], lp, allow_pickle=False)

    def done(self) -> Sequence[np.ndarray]:
        return self.items if self.out_dir is None else OnDisk(self.items)


def bundle_reference(pg, samples, max_new_tokens: int) -> GateReference:
    """A loaded bundle as the reference (a packaged variant against the bundle it came from): its greedy
    tokens, and its log-probabilities scored on them."""
    eos = pg.geometry.eos_token_id
    greedy, logprobs = [], []
    for image, prompt in samples:
        tokens = until_eos(pg(image, prompt, max_new_tokens=max_new_tokens).tokens, eos)
        prefix = np.array([pg.tokenizer.prefix_ids(prompt)], dtype=np.int64)
        greedy.append(tokens)
        logprobs.append(decoder.score(pg.graphs, pg.geometry, prefix, pg.image_embeddings([image]), tokens))
    return GateReference(list(samples), greedy, logprobs)


def evaluate_apart(bundle, ref: GateReference, max_new_tokens: int, prepack: bool, work: Path,
                   manifest_file: str, prefill: str = "decoder") -> dict:
    """`evaluate_bundle` in a child Python that imports only the runtime (pgexport.child): the process that
    holds the bundle holds nothing of the build's (torch, transformers, the quantizer's freed heap). The
    samples go to it as PNG files (lossless), the reference's log-probabilities as the .npy files they are.
    `prefill`: the graph the prefills run on (SessionConfig.prefill), named, not left to this CPU."""
    from pgexport import child

    work.mkdir(parents=True, exist_ok=True)
    images, made = [], []
    for i, (image, _) in enumerate(ref.samples):
        images.append(work / f"gate_image{i}.png")
        image.save(images[-1])
    paths = ref.logprobs.paths if isinstance(ref.logprobs, OnDisk) else None
    if paths is None:
        paths = made = [work / f"gate_lp{i}.npy" for i in range(len(ref.logprobs))]
        for path, lp in zip(paths, ref.logprobs):
            np.save(path, lp, allow_pickle=False)
    job = {"bundle": str(bundle), "manifest_file": manifest_file, "images": [str(p) for p in images],
           "prompts": [prompt for _, prompt in ref.samples], "greedy": ref.greedy,
           "logprobs": [str(p) for p in paths], "max_new_tokens": max_new_tokens, "prepack": prepack,
           "prefill": prefill}
    result = work / "gate_result.json"
    try:
        child.run("pgexport.verify.gate", job, work / "gate_job.json", lambda event, text: None)
        return json.loads(result.read_text())
    except child.ChildOutOfMemory as exc:
        from pgexport_runtime.out_of_memory import out_of_memory

        raise out_of_memory("running the accuracy gate on the bundle", exc.words) from None
    except child.ChildFailed as exc:
        raise RuntimeError(f"the accuracy gate failed ({exc.how}):\n" + "\n".join(exc.tail or ["(no output)"])) from None
    finally:
        for p in (*images, *made, result):
            p.unlink(missing_ok=True)


def _child(job: dict, job_file: Path) -> None:
    from pgexport_runtime import SessionConfig

    samples = []
    for path, prompt in zip(job["images"], job["prompts"]):
        with Image.open(path) as image:
            samples.append((image.copy(), prompt))
    ref = GateReference(samples, job["greedy"], OnDisk([Path(p) for p in job["logprobs"]]))
    result = evaluate_bundle(Path(job["bundle"]), ref, job["max_new_tokens"], SessionConfig(prepack=job["prepack"], prefill=job["prefill"]),
                             job_file.parent, job["manifest_file"])
    (job_file.parent / "gate_result.json").write_text(json.dumps(result))


def evaluate_bundle(bundle, ref: GateReference, max_new_tokens: int, session, work, manifest_file: str) -> dict:
    """`evaluate` on a bundle directory, never holding the whole bundle: the vision encoder and projector
    first, alone, for every sample's image embeddings (kept in `work` as .npy files); they are freed before
    the decoder loads. The same graphs and inputs as one PaliGemma holding all three, so the same numbers;
    the peak is the decoder's alone (its prepacked weights are most of a 10B bundle's memory)."""
    from pgexport_runtime import PaliGemma

    from pgexport.memory import trim

    opts = dict(verify=False, manifest_file=manifest_file, image_cache_bytes=0)
    paths = [work / f"image_embeds{i}.npy" for i in range(len(ref.samples))]
    try:
        vision = PaliGemma(bundle, session, load="vision", **opts)
        for path, (image, _) in zip(paths, ref.samples):
            np.save(path, vision.image_embeddings([image]))
        del vision
        trim()
        return evaluate(PaliGemma(bundle, session, load="decoder", **opts), ref, max_new_tokens, OnDisk(paths))
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def evaluate(pg, ref: GateReference, max_new_tokens: int, image_embeds: Sequence[np.ndarray] | None = None) -> dict:
    """Compare a loaded bundle (pgexport_runtime.PaliGemma) with the reference (pgexport/verify/agreement.py's measures).
    Each sample's image is encoded once, for its generation and its scoring (or taken from image_embeds)."""
    eos = pg.geometry.eos_token_id
    if image_embeds is None:
        image_embeds = [pg.image_embeddings([image]) for image, _ in ref.samples]
    got = [until_eos(pg.generate([], [prompt], max_new_tokens=max_new_tokens, image_embeds=image_embeds[i])[0].tokens,
                     eos) for i, (_, prompt) in enumerate(ref.samples)]

    def scored():  # one [T, V] array at a time, each compared and dropped (ref.logprobs may be read lazily too)
        for i, ((_, prompt), want) in enumerate(zip(ref.samples, ref.greedy)):
            prefix = np.array([pg.tokenizer.prefix_ids(prompt)], dtype=np.int64)
            yield decoder.score(pg.graphs, pg.geometry, prefix, image_embeds[i], want)

    seq, dist = agreement.sequences(ref.greedy, got), agreement.distributions(ref.logprobs, scored())
    return {
        "samples": len(ref.samples),
        "sequence_agreement": seq["sequence_agreement"],
        "token_agreement": seq["token_agreement"],
        "top1_agreement": dist["top1_agreement"],
        "mean_kl": dist["mean_kl"],
        "max_new_tokens": max_new_tokens,
    }


if __name__ == "__main__":
    from pgexport import child

    sys.exit(child.main(_child))
