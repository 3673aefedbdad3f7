"""The accuracy gate: a quantized bundle against the float32 PyTorch model on held-out samples.

Reference (PyTorch, before export): each sample's greedy continuation, and the next-token log-probs
teacher-forced along it (prefix bidirectional, continuation causal, in one forward pass).
Candidate (the bundle, through pgexport_runtime): greedy generation, and the same teacher-forced pass
through the decoder graph. Reported: sequence agreement (whole continuations equal), token agreement
(pooled over the longer of the two sequences), top-1 agreement and mean KL(reference || bundle) of the
teacher-forced next-token distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pgexport_runtime import decoder
from pgexport_runtime.decoder import log_softmax
from pgexport_runtime.geometry import Geometry

from .. import agreement
from ..agreement import until_eos


@dataclass
class GateReference:
    samples: list[tuple[Image.Image, str]]
    greedy: list[list[int]]
    logprobs: Sequence[np.ndarray]  # [T_i, V] float32: log p(next token) at the positions predicting greedy[i]


def torch_reference(model, source_dir, g: Geometry, samples, max_new_tokens: int, progress=None,
                    batch: int = 1) -> GateReference:
    """batch > 1: samples generated together, left-padded, each row's log-probs taken from the generation's own
    logits. For a model that streams its layers (streamed.py), where every forward pass reads every layer."""
    import torch
    from pgexport.sources import load_processor

    processor = load_processor(source_dir)
    if batch > 1:
        return _batched_reference(model, processor, g, samples, max_new_tokens, batch, progress)
    greedy, logprobs = [], []
    for i, (image, prompt) in enumerate(samples):
        if progress:
            progress(i, len(samples))
        inputs = processor(images=[image], text=["<image>" + prompt], return_tensors="pt")
        inputs.pop("labels", None)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            tokens = until_eos(out[0, inputs["input_ids"].shape[1]:].tolist(), g.eos_token_id)
            ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
            tt = torch.cat([torch.zeros_like(inputs["input_ids"]), torch.ones(1, len(tokens), dtype=torch.long)], 1)
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids),
                           token_type_ids=tt).logits[0]
        start = inputs["input_ids"].shape[1] - 1
        greedy.append(tokens)
        logprobs.append(log_softmax(logits[start:start + len(tokens)].numpy()))
    return GateReference(samples, greedy, logprobs)


def _batched_reference(model, processor, g: Geometry, samples, max_new_tokens: int, batch: int,
                       progress) -> GateReference:
    import torch

    greedy, logprobs = [], []
    for start in range(0, len(samples), batch):
        if progress:
            progress(start, len(samples))
        chunk = samples[start:start + batch]
        inputs = processor(images=[im for im, _ in chunk], text=["<image>" + p for _, p in chunk],
                           return_tensors="pt", padding="longest")
        inputs.pop("labels", None)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        steps = torch.stack(out.logits, dim=1)  # [B, T, V]
        for row in range(len(chunk)):
            tokens = until_eos(out.sequences[row, inputs["input_ids"].shape[1]:].tolist(), g.eos_token_id)
            greedy.append(tokens)
            logprobs.append(log_softmax(steps[row, :len(tokens)].float().numpy()))
    return GateReference(list(samples), greedy, logprobs)


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


def evaluate(pg, ref: GateReference, max_new_tokens: int) -> dict:
    """Compare a loaded bundle (pgexport_runtime.PaliGemma) with the reference (pgexport/agreement.py's measures)."""
    eos = pg.geometry.eos_token_id
    got = [until_eos(pg(image, prompt, max_new_tokens=max_new_tokens).tokens, eos) for image, prompt in ref.samples]

    def scored():  # one [T, V] array at a time, each compared and dropped (ref.logprobs may be read lazily too)
        for (image, prompt), want in zip(ref.samples, ref.greedy):
            prefix = np.array([pg.tokenizer.prefix_ids(prompt)], dtype=np.int64)
            yield decoder.score(pg.graphs, pg.geometry, prefix, pg.image_embeddings([image]), want)

    seq, dist = agreement.sequences(ref.greedy, got), agreement.distributions(ref.logprobs, scored())
    return {
        "samples": len(ref.samples),
        "sequence_agreement": seq["sequence_agreement"],
        "token_agreement": seq["token_agreement"],
        "top1_agreement": dist["top1_agreement"],
        "mean_kl": dist["mean_kl"],
        "max_new_tokens": max_new_tokens,
    }
