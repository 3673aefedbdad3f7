"""PaliGemma on a bundle: load, preprocess, tokenize, generate. The public API of the runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .generate import Graphs, encode_image, generate
from .manifest import load_manifest
from .mapped import release_mapped_pages
from .masks import MaskDecoder
from .preprocess import load_image, preprocess
from .prompt import PromptTokenizer
from .sampling import Sampling
from .session import SessionConfig, create_session
from .structured import Answer, to_answer


@dataclass
class Result:
    prompt: str
    text: str
    tokens: list[int] = field(default_factory=list)


class PaliGemma:
    """A loaded bundle. `PaliGemma("bundle/").generate([image], ["caption en"])`."""

    def __init__(self, bundle: str | Path, session: SessionConfig | None = None, verify: bool = True,
                 manifest_file: str = "manifest.json"):
        self.manifest = load_manifest(bundle, verify=verify, manifest_file=manifest_file)
        self.geometry = self.manifest.geometry
        self.session_config = session or SessionConfig()
        m, cfg = self.manifest, self.session_config
        self.graphs = Graphs(
            vision=self._session("vision_encoder"),
            projector=self._session("projector"),
            decoder=self._session("decoder"),
            device=cfg.ort_device,
            device_id=cfg.device_id,
        )
        tok = m.raw["tokenizer"]
        self.tokenizer = PromptTokenizer(m.tokenizer_file, self.geometry, tok["image_token"], tok["bos_token"])
        self.eos_ids = set(m.generation["eos_token_ids"])
        # optional graph (segment): 16 <seg> codes -> a 64x64 mask; None in bundles built without one
        entry = m.graphs.get("mask_decoder")
        self.mask_decoder = MaskDecoder(m.path(entry.file), cfg) if entry else None

    def _session(self, graph: str):
        entry, cfg = self.manifest.graphs[graph], self.session_config
        session = create_session(self.manifest.path(entry.file), cfg)
        if cfg.release_mapped_weights and cfg.prepack and entry.data_files:
            # one graph at a time, so that the next graph loads with this one's copies already given back
            release_mapped_pages(self.manifest.path(f) for f in entry.data_files)
        return session

    def pixel_values(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray:
        pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        return preprocess(pil, self.manifest.preprocessing)

    def image_embeddings(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray:
        return encode_image(self.graphs, self.pixel_values(images))

    def generate(
        self,
        images: Sequence[Image.Image | str | Path],
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
        stop_strings: Sequence[str] = (),
        on_token: Callable[[int, int, str], None] | None = None,
        image_embeds: np.ndarray | None = None,
    ) -> list[Result]:
        """Answer one prompt per image. on_token(row, token_id, new_text) streams as tokens arrive."""
        if len(images) != len(prompts) and image_embeds is None:
            raise UserError(f"{len(images)} images for {len(prompts)} prompts: give one image per prompt")
        max_new_tokens = max_new_tokens or self.manifest.generation["max_new_tokens"]
        if max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1")
        ids, mask = self.tokenizer.batch(list(prompts))
        embeds = self.image_embeddings(images) if image_embeds is None else image_embeds
        texts = [""] * len(prompts)

        def stream(row: int, token: int) -> None:
            if on_token is None:
                return
            new = self.tokenizer.decode(streamed[row] + [token])
            streamed[row].append(token)
            on_token(row, token, new[len(texts[row]):])
            texts[row] = new

        def should_stop(row: int, tokens: list[int]) -> bool:
            return bool(stop_strings) and any(s in self.tokenizer.decode(tokens) for s in stop_strings)

        streamed: list[list[int]] = [[] for _ in prompts]
        rows = generate(self.graphs, self.geometry, embeds, ids, mask, max_new_tokens, sampling or Sampling(),
                        self.eos_ids, should_stop if stop_strings else None, stream)
        results = []
        for prompt, tokens in zip(prompts, rows):
            text = self.tokenizer.decode(tokens)
            for s in stop_strings:
                if s in text:
                    text = text[: text.index(s)]
            results.append(Result(prompt=prompt, text=text, tokens=tokens))
        return results

    def __call__(self, image, prompt: str, **kwargs) -> Result:
        return self.generate([image], [prompt], **kwargs)[0]

    def answers(self, images: Sequence[Image.Image | str | Path], prompts: Sequence[str], **kwargs) -> list[Answer]:
        """`generate`, then each text parsed into detections / segments in pixels of the original image."""
        pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        results = self.generate(pil, prompts, **kwargs)
        return [to_answer(r, im.width, im.height, self.mask_decoder) for r, im in zip(results, pil)]

    def answer(self, image, prompt: str, **kwargs) -> Answer:
        """One image and prompt -> Answer(text, tokens, detections, segments, warnings)."""
        return self.answers([image], [prompt], **kwargs)[0]
