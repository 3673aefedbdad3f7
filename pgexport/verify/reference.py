"""The PyTorch reference: transformers' PaliGemma, run the one way every check in pgexport runs it.

Parity, the accuracy gate, `pgexport bench`, `pgexport demo` and GPTQ's calibration answers all compare with or
learn from this class; none drives transformers itself. It turns images and prompts into transformers' inputs
(the processor padding on the left, as the runtime does) and offers the model's stages as a bundle has them:
vision tower, projector, then the language model with a DynamicCache. Positions are 1-based and the prefix
attends bidirectionally (token_type_ids 0), as in the runtime.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pgexport_runtime.decoder import log_softmax
from pgexport_runtime.geometry import Geometry

from pgexport.verify.agreement import until_eos

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class TorchReference:
    kind = "reference"

    def __init__(self, model, processor, g: Geometry):
        self.model, self.processor, self.geometry = model, processor, g
        self.dtype = next(model.parameters()).dtype
        self.eos_ids = {g.eos_token_id}
        self.image_token_id = g.image_token_id
        self.threads = torch.get_num_threads()
        self._past = self._mask = None

    @classmethod
    def for_model(cls, model, source_dir, g: Geometry) -> TorchReference:
        """A loaded model, with its checkpoint directory's processor."""
        from transformers.utils import logging as hf_logging

        from pgexport.source.sources import load_processor

        hf_logging.set_verbosity_error()
        return cls(model, load_processor(source_dir), g)

    @classmethod
    def load(cls, source_spec: str, dtype: str = "fp32", threads: int = 0, exact_weights: bool = True) -> TorchReference:
        """A source (`--model` spec) loaded in bf16 or fp32. exact_weights: a preset in bf16 is its fp32 model
        rounded, not a bf16 draw of its seed."""
        from pgexport.source import sources

        if threads:
            torch.set_num_threads(threads)
        source = sources.resolve(source_spec)
        torch_dtype = DTYPES[dtype]
        if source.kind == "preset" and exact_weights and torch_dtype != torch.float32:
            # seeded random init drawn in bf16 is not the fp32 model rounded: cast the fp32 model instead
            model = sources.load_model(source, torch.float32).to(torch_dtype)
        else:
            model = sources.load_model(source, torch_dtype)
        return cls.for_model(model, source.directory, sources.load_geometry(source))

    # -- whole requests -------------------------------------------------------------------------------------

    def inputs(self, images, prompts, tensors: str = "pt") -> dict:
        """transformers' inputs for images[i] + prompts[i], left-padded to the longest row."""
        inputs = self.processor(images=list(images), text=["<image>" + p for p in prompts], return_tensors=tensors,
                                padding="longest")
        inputs.pop("labels", None)
        return inputs

    @torch.no_grad()
    def generate(self, inputs: dict, max_new_tokens: int, **kwargs):
        """transformers' greedy generation on `inputs` (the raw output: sequences, or a dict with kwargs)."""
        return self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)

    def greedy(self, inputs: dict, max_new_tokens: int, **kwargs) -> list[list[int]]:
        """Each row's greedy continuation, through its first end of sequence."""
        out = self.generate(inputs, max_new_tokens, **kwargs)
        width = inputs["input_ids"].shape[1]
        return [until_eos(row[width:].tolist(), self.geometry.eos_token_id) for row in out]

    @torch.no_grad()
    def logits(self, inputs: dict, last: int = 0) -> torch.Tensor:
        """[B, S, V] prefill logits, token_type_ids as the processor made them; with `last`, only the last
        `last` positions' ([B, last, V]): at 896 pixels all 4,099+ positions of a 257,152-token vocabulary are
        4.2 GB of float32 a row."""
        return self.model(**inputs, logits_to_keep=last).logits

    @torch.no_grad()
    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the language model receives for the image tokens (transformers' get_image_features)."""
        return self.model.model.get_image_features(pixel_values).pooler_output

    @torch.no_grad()
    def scored(self, inputs: dict, tokens: list[int]) -> np.ndarray:
        """[T, V] log-probabilities at the positions predicting `tokens` after one image+prompt row of `inputs`,
        teacher-forced in one forward pass (prefix bidirectional, continuation causal)."""
        ids = torch.cat([inputs["input_ids"], torch.tensor([tokens], dtype=torch.long)], dim=1)
        seq = inputs["input_ids"].shape[1]
        tt = torch.cat([torch.zeros_like(inputs["input_ids"]), torch.ones(1, len(tokens), dtype=torch.long)], 1)
        embeds = self._embed(ids, seq, self.image_embeddings(inputs["pixel_values"]))
        logits = self.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), token_type_ids=tt).logits[0]
        return log_softmax(logits[seq - 1:seq - 1 + len(tokens)].float().numpy())

    def _embed(self, ids: torch.Tensor, prefix: int, image: torch.Tensor) -> torch.Tensor:
        """Input embeddings of one row `ids` [1, S] whose first `prefix` tokens are image + prompt: the image
        embeddings ([1, N, D]) on the prefix's <image> placeholders only. A continuation may itself hold the
        <image> id (a random-weight model emits anything); given whole to transformers, it would count more
        placeholders than image features. So it keeps its own embedding, as in the ONNX decoder."""
        slots = torch.nonzero(ids[0, :prefix] == self.image_token_id).flatten()
        lookup = ids.clone()
        lookup[0, slots] = 0  # overwritten below; the <image> id may lie outside the embedding table
        embeds = self.model.get_input_embeddings()(lookup)
        embeds[0, slots] = image[0].to(embeds.dtype)
        return embeds

    def greedy_scored(self, samples, max_new_tokens: int, batch: int = 1,
                      progress=None) -> Iterator[tuple[list[int], np.ndarray]]:
        """(greedy tokens, their [T, V] log-probabilities) per (image, prompt) sample, in order.

        batch 1: generated, then scored teacher-forced. batch > 1: generated together, left-padded, each row's
        log-probs taken from the generation's own logits (a model that streams its layers reads every layer on
        every forward pass, so one pass per batch, not two per sample)."""
        for start in range(0, len(samples), batch):
            if progress:
                progress(start, len(samples))
            chunk = samples[start:start + batch]
            inputs = self.inputs([im for im, _ in chunk], [p for _, p in chunk])
            if batch == 1:
                tokens = self.greedy(inputs, max_new_tokens)[0]
                yield tokens, self.scored(inputs, tokens)
                continue
            out = self.generate(inputs, max_new_tokens, output_logits=True, return_dict_in_generate=True)
            out.past_key_values = None  # the batch's KV cache (3.3 GB for 16 samples at 10B) is not needed here
            width = inputs["input_ids"].shape[1]
            for row in range(len(chunk)):  # a row's [T, V] at a time: no [B, T, V] copy of the logits
                tokens = until_eos(out.sequences[row, width:].tolist(), self.geometry.eos_token_id)
                rows = torch.stack([step[row] for step in out.logits[:len(tokens)]]) if tokens else out.logits[0][:0]
                yield tokens, log_softmax(rows.float().numpy())
            del out

    # -- stage by stage, as bench drives a bundle -----------------------------------------------------------

    def preprocess(self, image, prompt: str):
        inputs = self.processor(images=[image], text=["<image>" + prompt], return_tensors="pt")
        return inputs["pixel_values"].numpy(), inputs["input_ids"].numpy()

    @torch.inference_mode()
    def vision(self, pixel_values):
        pixel_values = torch.as_tensor(pixel_values)
        return self.model.model.vision_tower(pixel_values.to(self.dtype)).last_hidden_state

    @torch.inference_mode()
    def project(self, features):
        return self.model.model.multi_modal_projector(features)

    def _encoder_outputs(self, embeds) -> dict:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"image": BaseModelOutputWithPooling(pooler_output=embeds)}

    @torch.inference_mode()
    def prefill(self, ids: np.ndarray, embeds, max_len: int) -> np.ndarray:
        """The image embeddings computed in the projector stage are handed to the prefill through
        `mm_encoder_outputs`, so the vision tower does not run twice."""
        seq = ids.shape[1]
        self._mask = torch.ones((1, seq), dtype=torch.long)
        out = self.model(input_ids=torch.from_numpy(ids), attention_mask=self._mask,
                         position_ids=torch.arange(1, seq + 1)[None], token_type_ids=torch.zeros((1, seq), dtype=torch.long),
                         mm_encoder_outputs=self._encoder_outputs(embeds), use_cache=True, logits_to_keep=1)
        self._past = out.past_key_values
        return out.logits[0, -1].float().numpy()

    @torch.inference_mode()
    def decode(self, token: int) -> np.ndarray:
        self._mask = torch.cat([self._mask, torch.ones((1, 1), dtype=torch.long)], dim=1)
        out = self.model(input_ids=torch.tensor([[token]]), attention_mask=self._mask,
                         position_ids=self._mask.sum(1, keepdim=True), past_key_values=self._past, use_cache=True,
                         logits_to_keep=1)
        self._past = out.past_key_values
        return out.logits[0, -1].float().numpy()

    @torch.inference_mode()
    def teacher_forced(self, ids: np.ndarray, embeds, suffix: list[int]) -> np.ndarray:
        """Log-probabilities [L, V] at the L suffix positions: prefix + suffix[:-1] in one forward pass,
        token_type_ids 1 (causal) on the suffix."""
        seq, n = ids.shape[1], len(suffix)
        full = torch.cat([torch.from_numpy(ids), torch.tensor([suffix[:-1]], dtype=torch.long)], dim=1)
        types = torch.cat([torch.zeros((1, seq), dtype=torch.long), torch.ones((1, n - 1), dtype=torch.long)], dim=1)
        out = self.model(inputs_embeds=self._embed(full, seq, embeds), attention_mask=torch.ones_like(full),
                         position_ids=torch.arange(1, full.shape[1] + 1)[None], token_type_ids=types,
                         use_cache=False, logits_to_keep=n)
        return torch.log_softmax(out.logits[0].float(), dim=-1).numpy()
