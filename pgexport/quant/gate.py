"""The accuracy gate: a quantized bundle against the float32 PyTorch model on held-out samples.

Reference (PyTorch, before export): each sample's greedy continuation, and the next-token log-probs
teacher-forced along it (prefix bidirectional, continuation causal, in one forward pass).
Candidate (the bundle, through pgexport_runtime): greedy generation, and the same teacher-forced pass
through the decoder graph. Reported: sequence agreement (whole continuations equal), token agreement
(positions equal up to the reference length), top-1 agreement and mean KL(reference || bundle) of the
teacher-forced next-token distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pgexport_runtime.geometry import Geometry


@dataclass
class GateReference:
    samples: list[tuple[Image.Image, str]]
    greedy: list[list[int]]
    logprobs: list[np.ndarray]  # [T_i, V] float32: log p(next token) at the positions predicting greedy[i]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def torch_reference(model, source_dir, g: Geometry, samples, max_new_tokens: int, progress=None) -> GateReference:
    import torch
    from pgexport.sources import load_processor

    processor = load_processor(source_dir)
    greedy, logprobs = [], []
    for i, (image, prompt) in enumerate(samples):
        if progress:
            progress(i, len(samples))
        inputs = processor(images=[image], text=["<image>" + prompt], return_tensors="pt")
        inputs.pop("labels", None)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            tokens = _until_eos(out[0, inputs["input_ids"].shape[1]:].tolist(), g.eos_token_id)
            ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
            tt = torch.cat([torch.zeros_like(inputs["input_ids"]), torch.ones(1, len(tokens), dtype=torch.long)], 1)
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids),
                           token_type_ids=tt).logits[0]
        start = inputs["input_ids"].shape[1] - 1
        greedy.append(tokens)
        logprobs.append(_log_softmax(logits[start:start + len(tokens)].numpy()))
    return GateReference(samples, greedy, logprobs)


def evaluate(pg, ref: GateReference, max_new_tokens: int) -> dict:
    """Compare a loaded bundle (pgexport_runtime.PaliGemma) with the reference."""
    from pgexport_runtime.generate import decoder_step
    from pgexport_runtime.kv_cache import KVCache

    g = pg.geometry
    seq_equal, tok_equal, tok_total, top1, kls = 0, 0, 0, 0, []
    for (image, prompt), want, ref_lp in zip(ref.samples, ref.greedy, ref.logprobs):
        got = _until_eos(pg(image, prompt, max_new_tokens=max_new_tokens).tokens, g.eos_token_id)
        seq_equal += got == want
        tok_equal += sum(a == b for a, b in zip(got, want))
        tok_total += len(want)
        prefix = np.array([pg.tokenizer.prefix_ids(prompt)], dtype=np.int64)
        ids = np.concatenate([prefix, np.array([want], dtype=np.int64)], axis=1)
        tt = np.concatenate([np.zeros_like(prefix), np.ones((1, len(want)), dtype=np.int64)], axis=1)
        start = prefix.shape[1] - 1
        keep = np.arange(start, start + len(want), dtype=np.int64)[None]
        logits = decoder_step(pg.graphs, g, KVCache(g, 1, ids.shape[1]), ids, pg.image_embeddings([image]),
                              np.ones_like(ids), np.arange(1, ids.shape[1] + 1, dtype=np.int64)[None], tt, keep)[0]
        lp = _log_softmax(logits)
        p_ref = np.exp(ref_lp.astype(np.float64))
        kls.append(float((p_ref * (ref_lp - lp)).sum(-1).mean()))
        top1 += int((lp.argmax(-1) == ref_lp.argmax(-1)).sum())
    n = len(ref.samples)
    return {
        "samples": n,
        "sequence_agreement": seq_equal / n,
        "token_agreement": tok_equal / max(tok_total, 1),
        "top1_agreement": top1 / max(tok_total, 1),
        "mean_kl": float(np.mean(kls)),
        "max_new_tokens": max_new_tokens,
    }
