"""Tiny tokenizers of every model type the tokenizers library has (WordLevel, BPE, Unigram, WordPiece), with and without
byte fallback, built with the tokenizers library itself, and prompts with words outside their vocabularies.

Both runtimes must give the same ids for every prompt, unknown pieces included: tests/test_tokenizer.py checks the
Python runtime against transformers, and tests/web/vectors.py writes the Python runtime's ids for the JavaScript
runtime's test (runtimes/web/test/tokens.test.js).
"""

from __future__ import annotations

from types import SimpleNamespace

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
IMAGE_TOKEN_ID = SPECIAL.index("<image>")
WORDS = ["caption", "en", "answer", "what", "colour", "is", "the", "shape", "detect", "cat", "dog", ";", "?", "ocr"]
NUM_IMAGE_TOKENS = 3

# each has words (or characters, or bytes) outside every vocabulary above: the unknown-token paths
PROMPTS = ["caption en", "caption zebra en", "detect cat ; xylophone", "answer en what colour is the qqq shape?",
           "ocr ☕ café", "detect cats", "caption supercalifragilistic", "detect 🦓 ; dog", "answer en ¿qué?"]


def geometry() -> SimpleNamespace:
    """What PromptTokenizer reads of a model's geometry."""
    return SimpleNamespace(image_token_id=IMAGE_TOKEN_ID, num_image_tokens=NUM_IMAGE_TOKENS, pad_token_id=0)


def build() -> dict:
    """name -> tokenizers.Tokenizer; each has the special tokens SPECIAL at ids 0..4."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    def special(tok):
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
        return tok

    def wordlevel():
        tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL + WORDS)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return special(tok)

    def bpe(**kw):
        vocab = {t: i for i, t in enumerate(SPECIAL + sorted(set("".join(WORDS))) + ["\n", "▁"])}
        merges = []
        for w in ("caption", "answer", "detect"):
            for k in range(2, len(w) + 1):
                merges.append((w[:k - 1], w[k - 1]))
                vocab.setdefault(w[:k], len(vocab))
        if kw.get("byte_fallback"):
            vocab |= {f"<0x{b:02X}>": len(vocab) + b for b in range(256)}
        tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", **kw))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        return special(tok)

    def unigram(byte_fallback=False):
        pieces = [(t, 0.0) for t in SPECIAL] + [("▁" + w, -2.0) for w in WORDS]
        pieces += [(c, -5.0) for c in sorted(set("".join(WORDS)))] + [("▁", -3.0), ("\n", -3.0)]
        if byte_fallback:
            pieces += [(f"<0x{b:02X}>", -10.0) for b in range(256)]
        tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIAL.index("<unk>"), byte_fallback=byte_fallback))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return special(tok)

    def wordpiece():
        vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + ["##s", "##ing", "c", "##a", "##t"])}
        tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=12))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return special(tok)

    return {"wordlevel": wordlevel(), "bpe": bpe(), "bpe-unfused": bpe(fuse_unk=False),
            "bpe-byte-fallback": bpe(byte_fallback=True, fuse_unk=True), "unigram": unigram(),
            "unigram-byte-fallback": unigram(byte_fallback=True), "wordpiece": wordpiece()}
