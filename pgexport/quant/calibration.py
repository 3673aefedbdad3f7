"""Calibration activations for the quantizers that need them (GPTQ, AWQ, the sensitivity report): each sample's
layer-0 inputs through the real prefix-LM, and one decoder layer run on them.

Each image+prompt sample runs through the SigLIP tower and projector, then the decoder wrapper the ONNX graph is
exported from, with the prefix-LM mask (image + prompt bidirectional) and the model's own greedy answer as a
causal suffix, so every layer sees image-conditioned activations.
"""

from __future__ import annotations

import torch

from pgexport_runtime.geometry import Geometry

from pgexport.export import decoder

ANSWER_TOKENS = 32  # greedy answer tokens per calibration sample


def run_layer(dec, layer, i: int, s: dict) -> torch.Tensor:
    """Layer i on one sample's inputs. Its attention bias is made for the call, not kept: [T, T] per sample is
    4.4 GB over 32 samples of 4,100 tokens at 896 pixels, where the hidden states are 1.9 GB at 10B."""
    g = dec.g
    rows = torch.arange(s["token_type"].shape[1]).expand_as(s["token_type"])
    full, sliding = dec._attention_bias(s["keep"].to(torch.int64), s["token_type"], rows)
    bias = sliding if g.sliding_layers[i] else full
    empty = torch.zeros(1, g.num_kv_heads, 0, g.head_dim)
    hidden, _, _ = decoder.run_layer(g, layer, s["hidden"], s["cos"], s["sin"], bias, empty, empty)
    return hidden


def calibration_inputs(model, dec, source_dir, g: Geometry, samples, answer_tokens: int = ANSWER_TOKENS,
                        batch: int | None = None) -> list[dict]:
    """Layer-0 inputs per sample: image+prompt prefix (bidirectional) + the model's greedy answer (causal),
    through its first end of sequence; with them the token ids, the prefix's length and the pixel values. The
    answers are generated `batch` samples at a time, left-padded (default: in as few batches as the gate
    reference's KV budget allows, because a streamed model reads every layer once per token of a batch); each
    sample's inputs are then built without the padding."""
    from pgexport.estimate import gate_batch
    from pgexport.verify.reference import TorchReference

    batch = batch or gate_batch(g, answer_tokens, len(samples))
    ref = TorchReference.for_model(model, source_dir, g)
    states = []
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            inputs = ref.inputs([im for im, _ in chunk], [p for _, p in chunk])
            out = ref.generate(inputs, answer_tokens)
            embeds = ref.image_embeddings(inputs["pixel_values"])
            width = inputs["input_ids"].shape[1]
            for row in range(len(chunk)):
                prefix = inputs["input_ids"][row][inputs["attention_mask"][row].to(torch.bool)]
                answer = _through_eos(out[row, width:].tolist(), g.eos_token_id)
                ids = torch.cat([prefix, torch.tensor(answer, dtype=prefix.dtype)]).unsqueeze(0)
                state = _layer_inputs(dec, ids, prefix.shape[0], embeds[row:row + 1])
                states.append(state | {"pixel_values": inputs["pixel_values"][row:row + 1]})
    return states


def _through_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def _layer_inputs(dec, ids: torch.Tensor, prefix: int, embeds: torch.Tensor) -> dict:
    token_type = torch.zeros_like(ids)
    token_type[:, prefix:] = 1
    hidden = dec._embed(ids, embeds, token_type)
    positions = torch.arange(1, ids.shape[1] + 1).unsqueeze(0)
    cos, sin = dec.rotary(hidden, positions)
    return {"hidden": hidden, "token_type": token_type, "cos": cos, "sin": sin,
            "keep": torch.ones_like(ids, dtype=torch.bool), "ids": ids, "prefix": prefix}
