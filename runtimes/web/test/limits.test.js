// A request known before loading (the command line's) is held to the model's bounds before any graph loads: one
// that cannot fit costs no session, and onnxruntime is not reached.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LimitError } from '../src/errors.js';
import { nodeFiles } from '../src/files_node.js';
import { PaliGemma } from '../src/pipeline.js';
import { vectors } from './vectors.js';

/** An onnxruntime that records the sessions asked of it and makes none. */
function recordingOrt() {
  const created = [];
  const fail = async (what) => {
    created.push(what);
    throw new Error('no session in this test');
  };
  return { created, InferenceSession: { create: fail }, Tensor: class {} };
}

for (const [name, request, pattern] of [
  ['a prompt of 30,000 characters', { prompts: [`caption en ${'x '.repeat(15000)}`] }, /> the model's limit of \d+ positions/],
  ['200 prompts and too many new tokens', { prompts: Array(200).fill('caption en'), maxNewTokens: 100000 }, /> the model's limit of/],
  ['top-k over the vocabulary', { prompts: ['ocr'], sampling: { doSample: true, temperature: 1, topK: 10 ** 7, topP: 1, seed: null } },
    /larger than the model's vocabulary/],
]) {
  test(`${name}: refused before any session is created`, async () => {
    const ort = recordingOrt();
    const files = await nodeFiles(vectors().bundles.fp32);
    await assert.rejects(PaliGemma.load({ ort, files, verify: false, imageCacheBytes: 0, request }), (e) => e instanceof LimitError && pattern.test(e.message));
    assert.deepEqual(ort.created, []);
  });
}

test('a request that fits goes on to the sessions', async () => {
  const ort = recordingOrt();
  const files = await nodeFiles(vectors().bundles.fp32);
  await assert.rejects(PaliGemma.load({ ort, files, verify: false, imageCacheBytes: 0, request: { prompts: ['caption en'] } }), /no session in this test/);
  assert.equal(ort.created.length, 1);
});
