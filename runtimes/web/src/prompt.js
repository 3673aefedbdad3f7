// PaliGemma prompts: <image> x N + <bos> + prompt + "\n", tokenized like PaliGemmaProcessor (pgexport_runtime/
// prompt.py), with Hugging Face's tokenizers.js reading the bundle's tokenizer.json (BPE, Unigram, WordPiece...).

import { Tokenizer } from '@huggingface/tokenizers';
import { BundleError, UserError, oneLine } from './errors.js';
import { repr } from './escape.js';
import * as limits from './limits.js';

export class PromptTokenizer {
  /** @param {Uint8Array|string} tokenizerJson the bundle's tokenizer file */
  constructor(tokenizerJson, geometry, imageToken = '<image>', bosToken = '<bos>', where = 'tokenizer.json') {
    try {
      const text = typeof tokenizerJson === 'string' ? tokenizerJson : new TextDecoder().decode(tokenizerJson);
      this.tok = new Tokenizer(JSON.parse(text), {});
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
  }

  /** @returns {number[]} */
  prefixIds(prompt) {
    limits.checkPrompt(prompt);
    const text = this.imageToken.repeat(this.g.num_image_tokens) + this.bosToken + prompt + '\n';
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
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
