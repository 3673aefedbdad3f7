// Prompt token ids equal the Python runtime's (tokenizers.js vs the Rust tokenizers library).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nodeFiles } from '../src/files_node.js';
import { loadManifest } from '../src/manifest.js';
import { PromptTokenizer } from '../src/prompt.js';
import { vectors } from './vectors.js';

test('prompt token ids equal the Python runtime', async () => {
  const v = vectors();
  const files = await nodeFiles(v.bundles.fp32);
  const m = await loadManifest(files, { verify: false });
  const tok = new PromptTokenizer(await files.read(m.tokenizer.file), m.geometry, m.tokenizer.imageToken, m.tokenizer.bosToken);
  for (const { prompt, ids } of v.prompts) assert.deepEqual(tok.prefixIds(prompt), ids, JSON.stringify(prompt));
});
