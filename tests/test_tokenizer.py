"""The built tokenizer: PaliGemma's layout, single-token loc/seg, the same ids in transformers and the runtime."""

from __future__ import annotations

import pytest

from pgexport.source.tokenizer import LOC_TOKENS, SEG_TOKENS, TokenLayout
from pgexport_runtime.prompt import PromptTokenizer


def test_full_size_layout_matches_paligemma():
    layout = TokenLayout.full_size()
    assert (layout.loc_base, layout.seg_base, layout.image_token_id, layout.vocab_size) == (256000, 257024, 257152, 257216)


def test_loc_and_seg_tokens_are_single_and_round_trip(tiny):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny.source.directory / "tokenizer.json"))
    hf = tiny.processor.tokenizer
    text = "".join(LOC_TOKENS[::97] + SEG_TOKENS[::13]) + " cat ; <loc1023><seg127> dog"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids == hf(text, add_special_tokens=False)["input_ids"]
    for t in LOC_TOKENS[::97] + SEG_TOKENS[::13]:
        assert len(tok.encode(t, add_special_tokens=False).ids) == 1
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert hf.decode(ids) == text


@pytest.mark.parametrize("prompt", ["caption en", "answer en  two  spaces?", "ocr", "détecte ünïcode ✓", "detect cat ; dog"])
def test_prompt_ids_match_processor(tiny, images, prompt):
    runtime_tok = PromptTokenizer(tiny.source.directory / "tokenizer.json", tiny.geometry)
    ids = runtime_tok.prefix_ids(prompt)
    expected = tiny.hf_inputs(images[:1], [prompt])["input_ids"][0].tolist()
    assert ids == expected
    assert ids.count(tiny.geometry.image_token_id) == tiny.geometry.num_image_tokens


@pytest.mark.parametrize("name", ["wordlevel", "bpe", "bpe-unfused", "bpe-byte-fallback", "unigram",
                                  "unigram-byte-fallback", "wordpiece"])
def test_words_outside_the_vocabulary_match_transformers(name, tmp_path):
    """Every tokenizer model type, words outside the vocabulary included: the runtime's ids are transformers'
    (the JavaScript runtime is held to these same ids: tests/web/vectors.py, runtimes/web/test/tokens.test.js)."""
    import tiny_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "tokenizer.json"
    tiny_tokenizers.build()[name].save(str(path))
    runtime = PromptTokenizer(path, tiny_tokenizers.geometry())
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    unknown = 0
    for prompt in tiny_tokenizers.PROMPTS:
        text = "<image>" * tiny_tokenizers.NUM_IMAGE_TOKENS + "<bos>" + prompt + "\n"
        ids = runtime.prefix_ids(prompt)
        assert ids == hf(text, add_special_tokens=False)["input_ids"], prompt
        unknown += ids.count(tiny_tokenizers.SPECIAL.index("<unk>"))
    assert unknown > 0 or "byte-fallback" in name  # the prompts reach the unknown-token path
