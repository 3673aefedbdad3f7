"""PaliGemma on a bundle: load, preprocess, tokenize, generate. The public API of the runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pgexport_runtime import heap, io_names, limits
from pgexport_runtime.errors import BundleError, UserError
from pgexport_runtime.generate import Graphs, encode_image, generate
from pgexport_runtime.image_cache import DEFAULT_MAX_BYTES, ImageCache
from pgexport_runtime.images import as_image
from pgexport_runtime.manifest import MANIFEST, load_manifest
from pgexport_runtime.mapped import released_while
from pgexport_runtime.masks import MaskDecoder
from pgexport_runtime.preprocess import preprocess
from pgexport_runtime.prompt import PromptTokenizer
from pgexport_runtime.sampling import Sampling
from pgexport_runtime.session import (INT8_PREFILL_GRAPH, SessionConfig, check_io, check_kv_layout, check_static,
                                      create_session)
from pgexport_runtime.typed_answers import Answer, to_answer

ImageLike = Image.Image | str | Path | np.ndarray  # a path, a PIL image, or uint8 HxW / HxWx3 / HxWx4
# PaliGemma's `load`: which graphs a loaded bundle holds in memory
LOADS = {"all": ("vision_encoder", "projector", "decoder"), "vision": ("vision_encoder", "projector"),
         "decoder": ("decoder",)}


@dataclass
class Result:
    prompt: str
    text: str
    tokens: list[int] = field(default_factory=list)


class PaliGemma:
    """A loaded bundle. `PaliGemma("bundle/").generate([image], ["caption en"])`.

    max_image_pixels bounds every image before it is decoded (limits.py); raise it for trusted large images.
    image_cache_bytes bounds the image-feature cache (image_cache.py; 0 turns it off): several prompts about
    one image, in one call or in several, pay for the vision encoder once.
    One object may serve several threads at once: a generation keeps its state (KV cache, IO binding) local.
    load="vision" holds only the vision encoder and projector (image_embeddings); load="decoder" only the
    decoder, which then generates from image_embeds computed elsewhere: two steps that never hold the whole
    bundle at once (the build's accuracy gate runs a 10B bundle that way).
    """

    def __init__(self, bundle: str | Path, session: SessionConfig | None = None, verify: bool = True,
                 manifest_file: str = "manifest.json", max_image_pixels: int = limits.DEFAULT_MAX_IMAGE_PIXELS,
                 image_cache_bytes: int = DEFAULT_MAX_BYTES, load: str = "all"):
        if load not in LOADS:
            raise UserError(f"unknown load {load!r} (use one of {', '.join(LOADS)})")
        self.load = load
        self.max_image_pixels = limits.check_max_image_pixels(max_image_pixels)
        if not isinstance(image_cache_bytes, int) or isinstance(image_cache_bytes, bool) or image_cache_bytes < 0:
            raise UserError(f"image_cache_bytes must be a non-negative integer, got {image_cache_bytes!r}")
        self.image_cache = ImageCache(image_cache_bytes) if image_cache_bytes else None
        self.session_config = cfg = session or SessionConfig()
        # the int8 prefill graph is read (hashed, loaded) only where this CPU and config will run it
        int8_wanted = "decoder" in LOADS[load] and cfg.int8_prefill(True)
        self.manifest = load_manifest(bundle, verify=verify, manifest_file=manifest_file,
                                      unused_graphs=() if int8_wanted else (INT8_PREFILL_GRAPH,))
        self.geometry = self.manifest.geometry
        m = self.manifest
        tok = m.tokenizer  # before the graphs: a broken tokenizer is found without loading them
        self.tokenizer = PromptTokenizer(m.tokenizer_file, self.geometry, tok.image_token, tok.bos_token)
        self.eos_ids = {self.geometry.eos_token_id}
        wanted = LOADS[load]
        kv = m.kv_cache
        if cfg.device == "cuda" and kv.layout.in_place and "decoder" in wanted:
            # onnxruntime's CUDA GroupQueryAttention refuses an attention_bias input, which carries the prefix-LM
            # mask in these graphs: it would fail at the first decoder run, not here
            raise UserError(f"a bundle with KV-cache layout {kv.layout.name!r} runs on the CPU only (onnxruntime's CUDA "
                            "GroupQueryAttention takes no attention bias); for CUDA build with --kv-cache concat")
        if cfg.mmap_threshold:  # before any graph loads: its staging buffers are what the threshold is for
            heap.map_blocks_from(cfg.mmap_threshold)
        int8_prefill = "decoder" in wanted and cfg.int8_prefill(INT8_PREFILL_GRAPH in m.graphs)
        if int8_prefill and kv.layout.fixed_shape:  # the build refuses this pair; a manifest could still say it
            raise BundleError(f"{INT8_PREFILL_GRAPH} takes any length, but the manifest says KV-cache layout "
                              f"{kv.layout.name!r}, whose prefills have their own fixed-shape graphs")
        # the largest decoder first: its load, where prepacking holds mapped weight pages beside the packed copies
        # until they are given back, then peaks with nothing else loaded
        int8_session = self._session(INT8_PREFILL_GRAPH) if int8_prefill else None
        decoder = self._session("decoder") if "decoder" in wanted else None
        self.graphs = Graphs(
            vision=self._session("vision_encoder") if "vision_encoder" in wanted else None,
            projector=self._session("projector") if "projector" in wanted else None,
            decoder=decoder,
            device=cfg.ort_device,
            device_id=cfg.device_id,
            kv_layout=kv.layout,
            max_len=kv.max_len or 0,
            prefill_lengths=kv.prefill_lengths,
            prefill={n: self._session(name) for n, name in kv.prefill_graphs.items()
                     if name in m.graphs and "decoder" in wanted},
            trim_heap=cfg.trim_heap and cfg.device == "cpu",
            int8_prefill=int8_session,
        )
        if self.graphs.decoder is not None:
            paths = {"decoder": m.path(m.graphs["decoder"].file)}
            paths |= {f"prefill:{n}": m.path(m.graphs[name].file) for n, name in kv.prefill_graphs.items()
                      if name in m.graphs}
            check_static(self.graphs, paths, kv.layout, building=manifest_file != MANIFEST)
        # optional graph (segment): 16 <seg> codes -> a 64x64 mask; None in bundles built without one
        entry = m.graphs.get("mask_decoder") if "decoder" in wanted else None
        self.mask_decoder = MaskDecoder(m.path(entry.file), entry.codes, cfg, kv.layout.fixed_shape) if entry else None
        if self.mask_decoder is not None:
            check_io(self.mask_decoder.session, m.path(entry.file), self._expected_io("mask_decoder"), entry)

    def _expected_io(self, graph: str) -> dict:
        return io_names.expected(graph, self.geometry, self.manifest.preprocessing.size)

    def _session(self, graph: str):
        entry, cfg = self.manifest.graphs[graph], self.session_config
        # while it loads and once it has: the next graph loads with this one's copies already given back
        release = cfg.release_mapped_weights and cfg.prepack and entry.data_files
        with released_while([self.manifest.path(f) for f in entry.data_files]) if release else nullcontext():
            session = create_session(self.manifest.path(entry.file), cfg)
        check_io(session, self.manifest.path(entry.file), self._expected_io(graph), entry)
        if graph in ("decoder", INT8_PREFILL_GRAPH) or graph in self.manifest.kv_cache.prefill_graphs.values():
            check_kv_layout(session, self.manifest.path(entry.file), self.manifest.kv_cache.layout,
                            io_names.past_key(0), io_names.present_key(0))
        return session

    def images(self, images: Sequence[ImageLike]) -> list[Image.Image]:
        """Paths, PIL images or uint8 arrays -> upright PIL images within max_image_pixels (images.py)."""
        return [as_image(im, self.max_image_pixels) for im in images]

    def pixel_values(self, images: Sequence[ImageLike]) -> np.ndarray:
        return preprocess(self.images(images), self.manifest.preprocessing)

    def image_embeddings(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Image embeddings [B, N, D]; with the image cache on, each distinct image is encoded once."""
        if self.graphs.vision is None:
            raise UserError(f"this PaliGemma was loaded with load={self.load!r}, without the vision encoder: "
                            "give generate() image_embeds")
        pixels = self.pixel_values(images)
        if self.image_cache is None:
            return encode_image(self.graphs, pixels)
        return self.image_cache.embeddings(pixels, lambda p: encode_image(self.graphs, p))

    def generate(
        self,
        images: Sequence[ImageLike],
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
        stop_strings: Sequence[str] = (),
        on_token: Callable[[int, int, str], None] | None = None,
        image_embeds: np.ndarray | None = None,
    ) -> list[Result]:
        """Answer one prompt per image. on_token(row, token_id, new_text) streams as tokens arrive.

        Every bound (limits.py) is checked before any image is decoded or graph is run; no prompts, no
        results: `generate([], [])` is `[]`.
        """
        if self.graphs.decoder is None:
            raise UserError(f"this PaliGemma was loaded with load={self.load!r}, without the decoder: it computes "
                            "image_embeddings only")
        if isinstance(prompts, str) or isinstance(images, (str, Path, Image.Image, np.ndarray)):
            raise UserError("generate takes lists: generate([image], [prompt]); for one pair use pg(image, prompt)")
        sampling = Sampling() if sampling is None else sampling
        if not isinstance(sampling, Sampling):
            raise UserError(f"sampling must be a Sampling, not {type(sampling).__name__}")
        limits.check_request(prompts, max_new_tokens, stop_strings)
        limits.check_top_k(sampling.top_k, self.geometry.vocab_size)
        if image_embeds is None and len(images) != len(prompts):
            raise UserError(f"{len(images)} images for {len(prompts)} prompts: give one image per prompt")
        if not prompts:
            return []
        max_new_tokens = self.manifest.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
        ids, mask = self.tokenizer.batch(list(prompts))
        limits.check_positions(ids.shape[1], max_new_tokens, self.geometry)
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
        rows = generate(self.graphs, self.geometry, embeds, ids, mask, max_new_tokens, sampling,
                        self.eos_ids, should_stop if stop_strings else None, stream)
        results = []
        for prompt, tokens in zip(prompts, rows):
            text = self.tokenizer.decode(tokens)
            for s in stop_strings:
                if s in text:
                    text = text[: text.index(s)]
            results.append(Result(prompt=prompt, text=text, tokens=tokens))
        return results

    def __call__(self, image: ImageLike, prompt: str, **kwargs) -> Result:
        return self.generate([image], [prompt], **kwargs)[0]

    def answers(self, images: Sequence[ImageLike], prompts: Sequence[str], **kwargs) -> list[Answer]:
        """`generate`, then each text parsed into detections / segments in pixels of the original (upright) image."""
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            raise UserError("answers takes lists: answers([image], [prompt]); for one pair use answer(image, prompt)")
        pil = self.images(images)
        results = self.generate(pil, prompts, **kwargs)
        return [to_answer(r, im.width, im.height, self.mask_decoder) for r, im in zip(results, pil)]

    def answer(self, image: ImageLike, prompt: str, **kwargs) -> Answer:
        """One image and prompt -> Answer(text, tokens, detections, segments, warnings)."""
        return self.answers([image], [prompt], **kwargs)[0]
