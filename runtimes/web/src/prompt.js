// PaliGemma prompts: <image> x N + <bos> + prompt + "\n", tokenized like PaliGemmaProcessor (pgexport_runtime/
// prompt.py), with Hugging Face's tokenizers.js reading the bundle's tokenizer.json (BPE, Unigram, WordPiece,
// WordLevel), and the Rust tokenizers library's rules for pieces outside the vocabulary where tokenizers.js has none.

import { Tokenizer } from '@huggingface/tokenizers';
import { BundleError, UserError, oneLine } from './errors.js';
import { repr } from './escape.js';
import * as limits from './limits.js';

export class PromptTokenizer {
  /** @param {Uint8Array|string} tokenizerJson the bundle's tokenizer file */
  constructor(tokenizerJson, geometry, imageToken = '<image>', bosToken = '<bos>', where = 'tokenizer.json') {
    try {
      const text = typeof tokenizerJson === 'string' ? tokenizerJson : new TextDecoder().decode(tokenizerJson);
      const json = JSON.parse(text);
      this.tok = new Tokenizer(json, {});
      this.unknown = unknownRule(json.model);
    } catch (e) {
      throw new BundleError(`${where}: not a tokenizer tokenizers.js can read (${oneLine(e, 200)})`);
    }
    if (this.tok.token_to_id(imageToken) !== geometry.image_token_id) {
      throw new BundleError(`${where}: ${repr(imageToken)} is not token ${geometry.image_token_id} as the geometry says; ` +
        'the tokenizer does not belong to this model');
    }
    this.g = geometry;
    this.imageToken = imageToken;
    this.bosToken = bosToken;
    this.where = where;
  }

  /** Token ids of a text, special tokens written in it included, as the Rust tokenizers library gives them. */
  encode(text) {
    const { ids, tokens } = this.tok.encode(text, { add_special_tokens: false });
    return tokens.flatMap((piece, i) => {
      const unknown = ids[i] === null || ids[i] === undefined ||
        (this.unknown !== null && ids[i] === this.unknown.unkId && piece !== this.unknown.unkToken);
      return unknown ? this.unknownIds(piece) : [ids[i]];
    });
  }

  /** A piece outside the vocabulary: its UTF-8 bytes (byte_fallback) when the vocabulary has them all, else <unk>. */
  unknownIds(piece) {
    const rule = this.unknown;
    if (rule?.byteFallback) {
      const bytes = [...new TextEncoder().encode(piece)].map((b) => rule.vocab.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`));
      if (bytes.every((id) => id !== undefined)) return bytes;
    }
    if (rule?.unkId === null || rule?.unkId === undefined) {
      throw new BundleError(`${this.where}: cannot tokenize the prompt: ${repr(piece)} is not in the vocabulary and ` +
        'the tokenizer has no unknown token');
    }
    return [rule.unkId];
  }

  /** @returns {number[]} */
  prefixIds(prompt) {
    limits.checkPrompt(prompt);
    const text = this.imageToken.repeat(this.g.num_image_tokens) + this.bosToken + prompt + '\n';
    const ids = this.encode(text);
    if (ids.filter((t) => t === this.g.image_token_id).length !== this.g.num_image_tokens) {
      throw new UserError('the prompt must not contain <image> tokens; the runtime adds them');
    }
    return ids;
  }

  /** Left-padded input ids and attention mask [B, S], as transformers pads PaliGemma. */
  batch(prompts) {
    const rows = prompts.map((p) => this.prefixIds(p));
    const width = Math.max(...rows.map((r) => r.length));
    const ids = new BigInt64Array(rows.length * width).fill(BigInt(this.g.pad_token_id));
    const mask = new BigInt64Array(rows.length * width);
    rows.forEach((r, b) => {
      r.forEach((t, j) => {
        ids[b * width + width - r.length + j] = BigInt(t);
        mask[b * width + width - r.length + j] = 1n;
      });
    });
    return { ids, mask, batch: rows.length, width };
  }

  decode(ids, skipSpecialTokens = true) {
    // no clean-up of spaces: the Rust tokenizers library (the Python runtime's) does none
    return this.tok.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
  }
}

/**
 * What the Rust tokenizers library does with a piece outside the vocabulary, for the models where tokenizers.js
 * (0.2.0) does otherwise: a WordLevel model's unknown word is its unk_token (tokenizers.js reads WordLevel as a
 * "legacy" model that gives it no id at all), and a Unigram model with byte_fallback writes an unknown piece as its
 * UTF-8 bytes, <0xNN> (tokenizers.js gives <unk>). The pieces tokenizers.js returns are the Rust library's (an unknown
 * run fused into one piece), so only their ids change. null for BPE and WordPiece, whose rules it has.
 * @returns {{vocab: Map<string, number>, unkId: number|undefined, unkToken: string|undefined, byteFallback: boolean}|null}
 */
function unknownRule(model) {
  if (model?.type === 'WordLevel') {
    const vocab = new Map(Object.entries(model.vocab ?? {}));
    return { vocab, unkId: vocab.get(model.unk_token), unkToken: model.unk_token, byteFallback: false };
  }
  if (model?.type === 'Unigram') {
    const pieces = model.vocab ?? [];
    const vocab = new Map(pieces.map(([piece], i) => [piece, i]));
    const unkId = model.unk_id ?? undefined;
    return { vocab, unkId, unkToken: pieces[unkId]?.[0], byteFallback: Boolean(model.byte_fallback) };
  }
  return null;
}
