"""PaliGemma prompts: `<image>`×N + `<bos>` + prompt + "\\n", tokenized exactly like PaliGemmaProcessor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from pgexport_runtime import limits
from pgexport_runtime.errors import BundleError, UserError
from pgexport_runtime.geometry import Geometry


class PromptTokenizer:
    def __init__(self, tokenizer_file: Path, geometry: Geometry, image_token: str = "<image>", bos_token: str = "<bos>"):
        try:
            self.tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # noqa: BLE001  the tokenizers library raises a bare Exception on bad JSON
            first = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise BundleError(f"{tokenizer_file}: not a tokenizer the tokenizers library can read ({first})") from None
        if self.tok.token_to_id(image_token) != geometry.image_token_id:
            # a valid tokenizer of another model: every prompt would fail the <image> count below
            raise BundleError(f"{tokenizer_file}: {image_token!r} is not token {geometry.image_token_id} as the "
                              "geometry says; the tokenizer does not belong to this model")
        self.g = geometry
        self.image_token = image_token
        self.bos_token = bos_token
        self.where = tokenizer_file

    def prefix_ids(self, prompt: str) -> list[int]:
        limits.check_prompt(prompt)
        text = self.image_token * self.g.num_image_tokens + self.bos_token + prompt + "\n"
        try:
            ids = self.tok.encode(text, add_special_tokens=False).ids
        except Exception as exc:  # noqa: BLE001  a piece outside the vocabulary of a tokenizer with no unknown token
            first = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise BundleError(f"{self.where}: cannot tokenize the prompt: {first}") from None
        if ids.count(self.g.image_token_id) != self.g.num_image_tokens:
            raise UserError("the prompt must not contain <image> tokens; the runtime adds them")
        return ids

    def batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded input_ids and attention_mask [B, S] (int64), as transformers pads PaliGemma."""
        rows = [self.prefix_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.g.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
        return ids, mask

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)
