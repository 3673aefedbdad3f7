"""The PyTorch reference, driven stage by stage like a bundle (same stages, same inputs).

transformers' PaliGemmaForConditionalGeneration in bf16 or fp32: vision tower, projector, then the
language model with a DynamicCache. The image embeddings computed in the projector stage are handed to
the prefill through `mm_encoder_outputs`, so the vision tower does not run twice. Positions are 1-based
and the prefix attends bidirectionally (token_type_ids 0), as in the runtime.
"""

from __future__ import annotations

import numpy as np
import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class TorchEngine:
    kind = "reference"

    def __init__(self, source_spec: str, dtype: str, threads: int, exact_weights: bool):
        from pgexport.sources import load_processor
        from transformers.utils import logging as hf_logging

        from pgexport import sources

        hf_logging.set_verbosity_error()
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        source = sources.resolve(source_spec)
        self.dtype = DTYPES[dtype]
        if source.kind == "preset" and exact_weights and self.dtype != torch.float32:
            # seeded random init drawn in bf16 is not the fp32 model rounded: cast the fp32 model instead
            self.model = sources.load_model(source, torch.float32).to(self.dtype)
        else:
            self.model = sources.load_model(source, self.dtype)
        self.processor = load_processor(source.directory)
        g = sources.load_geometry(source)
        self.eos_ids = {g.eos_token_id}
        self.image_token_id = g.image_token_id
        self._past = self._mask = None

    def preprocess(self, image, prompt: str):
        inputs = self.processor(images=[image], text=["<image>" + prompt], return_tensors="pt")
        return inputs["pixel_values"].numpy(), inputs["input_ids"].numpy()

    @torch.inference_mode()
    def vision(self, pixel_values: np.ndarray):
        return self.model.model.vision_tower(torch.from_numpy(pixel_values).to(self.dtype)).last_hidden_state

    @torch.inference_mode()
    def project(self, features):
        return self.model.model.multi_modal_projector(features)

    def _encoder_outputs(self, embeds) -> dict:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"image": BaseModelOutputWithPooling(pooler_output=embeds)}

    @torch.inference_mode()
    def prefill(self, ids: np.ndarray, embeds, max_len: int) -> np.ndarray:
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
        # The reference sequence may itself contain the <image> id (random-weight models emit anything);
        # transformers would then count more placeholders than image features. Embed the tokens ourselves
        # and place the image embeddings on the prefix's placeholders only, as the ONNX decoder does.
        slots = torch.nonzero(full[0, :seq] == self.image_token_id).flatten()
        lookup = full.clone()
        lookup[0, slots] = 0  # overwritten below; the <image> id may lie outside the embedding table
        inputs_embeds = self.model.get_input_embeddings()(lookup)
        inputs_embeds[0, slots] = embeds[0].to(inputs_embeds.dtype)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=torch.ones_like(full),
                         position_ids=torch.arange(1, full.shape[1] + 1)[None], token_type_ids=types,
                         use_cache=False, logits_to_keep=n)
        return torch.log_softmax(out.logits[0].float(), dim=-1).numpy()
