// Prompt token ids equal the Python runtime's (tokenizers.js vs the Rust tokenizers library): on the demo bundle's
// tokenizer, and on tiny tokenizers of every model type with words outside their vocabularies.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { nodeFiles } from '../src/files_node.js';
import { loadManifest } from '../src/manifest.js';
import { PromptTokenizer } from '../src/prompt.js';
import { BundleError } from '../src/errors.js';
import { vectors } from './vectors.js';

test('prompt token ids equal the Python runtime', async () => {
  const v = vectors();
  const files = await nodeFiles(v.bundles.fp32);
  const m = await loadManifest(files, { verify: false });
  const tok = new PromptTokenizer(await files.read(m.tokenizer.file), m.geometry, m.tokenizer.imageToken, m.tokenizer.bosToken);
  for (const { prompt, ids } of v.prompts) assert.deepEqual(tok.prefixIds(prompt), ids, JSON.stringify(prompt));
});

function tiny(t, edit = (json) => json) {
  const json = edit(JSON.parse(readFileSync(vectors().path(t.file), 'utf8')));
  return new PromptTokenizer(JSON.stringify(json), { image_token_id: t.image_token_id, num_image_tokens: t.num_image_tokens, pad_token_id: 0 });
}

const TYPES = ['wordlevel', 'bpe', 'bpe-unfused', 'bpe-byte-fallback', 'unigram', 'unigram-byte-fallback', 'wordpiece'];
for (const name of TYPES) {
  test(`${name}: words outside the vocabulary get the Python runtime's ids, and decode to its text`, () => {
    const t = vectors().tokenizers.find((x) => x.name === name);
    assert.ok(t, `no vectors for ${name}`);
    const tok = tiny(t);
    for (const { prompt, ids, text } of t.prompts) {
      assert.deepEqual(tok.prefixIds(prompt), ids, JSON.stringify(prompt));
      assert.equal(tok.decode(ids.slice(t.num_image_tokens + 1)), text, JSON.stringify(prompt));
    }
  });
}

test('a word outside a vocabulary with no unknown token is one BundleError, as the Rust library refuses it', () => {
  const t = vectors().tokenizers.find((x) => x.name === 'wordlevel');
  const tok = tiny(t, (json) => ({ ...json, model: { ...json.model, unk_token: '[UNK]' } })); // not in the vocabulary
  assert.deepEqual(tok.prefixIds('caption en'), t.prompts.find((p) => p.prompt === 'caption en').ids);
  assert.throws(() => tok.prefixIds('caption zebra'),
    (e) => e instanceof BundleError && /cannot tokenize the prompt: 'zebra' is not in the vocabulary/.test(e.message));
  const uni = tiny(vectors().tokenizers.find((x) => x.name === 'unigram'), (json) => ({ ...json, model: { ...json.model, unk_id: null } }));
  assert.throws(() => uni.prefixIds('caption zebra'), (e) => e instanceof BundleError && /cannot tokenize the prompt/.test(e.message));
});
