"""Build a Gemma-style tokenizer with PaliGemma's special-token layout.

Real PaliGemma checkpoints carry Gemma's 256k SentencePiece vocabulary. The presets and the demo model
need a tokenizer too, so this module builds one with the `tokenizers` library that has the same *shape*:

- ids 0..4: <pad>, <eos>, <bos>, <unk>, <mask> (Gemma's order)
- a BPE vocabulary with byte fallback (<0x00>..<0xFF>) trained on a small corpus, with "\\n" a single token
- <loc0000>..<loc1023>, <seg000>..<seg127>, <image> at the ids the checkpoint's config expects
  (256000, 257024, 257152 for full-size PaliGemma), filler <unusedN> tokens up to vocab_size.

The pipeline (normalizer, pre-tokenizer, decoder) mirrors transformers' GemmaTokenizer exactly, because
transformers 5.x rebuilds the pipeline from the class and only takes vocab and merges from
tokenizer.json: any other pipeline would tokenize differently in transformers and in the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class TokenLayout:
    """Where the PaliGemma-specific tokens sit in the vocabulary."""

    vocab_size: int
    loc_base: int  # id of <loc0000>; segs follow the 1024 locs, then <image>

    @property
    def seg_base(self) -> int:
        return self.loc_base + len(LOC_TOKENS)

    @property
    def image_token_id(self) -> int:
        return self.seg_base + len(SEG_TOKENS)

    @classmethod
    def full_size(cls) -> "TokenLayout":
        """The layout of Google's PaliGemma / PaliGemma 2 checkpoints."""
        return cls(vocab_size=257216, loc_base=256000)

    @classmethod
    def compact(cls, text_vocab_size: int) -> "TokenLayout":
        """Text vocab, then locs, segs, <image>; vocab rounded up to a multiple of 64."""
        end = text_vocab_size + len(LOC_TOKENS) + len(SEG_TOKENS) + 1
        return cls(vocab_size=-(-end // 64) * 64, loc_base=text_vocab_size)


def _gemma_pipeline(tok: Tokenizer) -> None:
    # The same pipeline as transformers' GemmaTokenizer: spaces become "▁", no prefix space,
    # byte fallback for characters outside the vocabulary.
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])


def build_tokenizer(corpus: Iterable[str], layout: TokenLayout) -> Tokenizer:
    """Train a byte-fallback BPE on `corpus` and place PaliGemma's tokens per `layout`."""
    text_budget = layout.loc_base
    trainer = trainers.BpeTrainer(
        vocab_size=text_budget,
        special_tokens=SPECIALS + BYTE_TOKENS,
        initial_alphabet=list("\n▁") + [chr(c) for c in range(33, 127)],
        show_progress=False,
    )
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    _gemma_pipeline(tok)
    tok.train_from_iterator(corpus, trainer=trainer)

    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    if len(vocab) > text_budget:
        raise ValueError(f"trained vocab {len(vocab)} exceeds the text budget {text_budget}")
    if "\n" not in vocab:
        raise ValueError("the corpus must contain '\\n' so that it is a single token, as in Gemma")
    tail = LOC_TOKENS + SEG_TOKENS + [IMAGE_TOKEN]
    filler = 0
    for i in range(len(vocab), layout.vocab_size):
        if layout.loc_base <= i < layout.loc_base + len(tail):
            vocab[tail[i - layout.loc_base]] = i
        else:
            vocab[f"<unused{filler}>"] = i
            filler += 1
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = []
    tok = Tokenizer.from_str(json.dumps(spec))
    # Special tokens are matched before BPE and never split; loc/seg tokens too, so that "<loc0123>"
    # is always one token (a classic pitfall: without this they are split into characters).
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS + [IMAGE_TOKEN]])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in LOC_TOKENS + SEG_TOKENS])
    return tok


def write_hf_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Write tokenizer.json plus the config files transformers' GemmaTokenizer reads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": "left",
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")}
    specials["additional_special_tokens"] = [IMAGE_TOKEN]
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def write_processor_files(out_dir: Path, image_size: int, image_seq_length: int) -> None:
    """preprocessor_config.json / processor_config.json as in Google's PaliGemma repos."""
    pre = {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "PaliGemmaProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "image_seq_length": image_seq_length,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out_dir / "processor_config.json").write_text(json.dumps({"processor_class": "PaliGemmaProcessor"}, indent=2))


BASIC_CORPUS = [
    "caption en", "answer en what colour is the circle?", "ocr", "detect cat ; dog", "segment person",
    "a red circle and a blue square on a white background.", "the quick brown fox jumps over the lazy dog",
    "how many shapes are there? 0 1 2 3 4 5 6 7 8 9 yes no left right top bottom",
    "where is the triangle? describe the image. question: what is in the picture?\n",
]
