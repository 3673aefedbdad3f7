// Sampling: a seed draws the same tokens every run, another seed other tokens; top-k 1 is greedy. (The JS RNG is
// not numpy's: sampled tokens are not expected to equal the Python runtime's; greedy ones are, generate.test.js.)

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng, choose, sampling } from '../src/sampling.js';
import { LimitError } from '../src/errors.js';
import { round2 } from '../src/typed_answers.js';
import { decodeImage, loadBundle } from '../src/node.js';
import { vectors } from './vectors.js';

test('the RNG is deterministic per seed and uniform enough', () => {
  const a = new Rng(42n);
  const b = new Rng(42n);
  const xs = Array.from({ length: 10000 }, () => a.next());
  assert.deepEqual(xs.slice(0, 100), Array.from({ length: 100 }, () => b.next()));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.02 && xs.every((x) => x >= 0 && x < 1), `mean ${mean}`);
  assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, new Rng(43n).next.bind(new Rng(43n))));
});

test('top-p keeps the smallest set reaching p; top-k 1 is greedy', () => {
  const logits = Float32Array.from([0, 3, 1, 2.9]);
  const rng = new Rng(1n);
  const seen = new Set();
  for (let i = 0; i < 200; i++) seen.add(choose(logits, 1, sampling({ doSample: true, topP: 0.5 }), rng)[0]);
  assert.deepEqual([...seen].sort(), [1, 3]);
  for (let i = 0; i < 20; i++) assert.equal(choose(logits, 1, sampling({ doSample: true, topK: 1 }), rng)[0], 1);
  assert.throws(() => sampling({ doSample: true, temperature: 0 }), LimitError);
  assert.throws(() => sampling({ topP: 0 }), LimitError);
  assert.throws(() => sampling({ seed: -1 }), LimitError);
});

test('round2 is Python round(v, 2) (ties to even on the exact value)', () => {
  const cases = [[0.125, 0.12], [0.375, 0.38], [2.675, 2.67], [1.005, 1], [85.955, 85.95], [123, 123], [0.625, 0.62]];
  for (const [v, want] of cases) assert.equal(round2(v), want, String(v));
});

test('sampled generation: same seed same tokens, another seed other tokens', async () => {
  const v = vectors();
  const pg = await loadBundle(v.bundles.fp32);
  // OCR: the demo model's least certain task (its captions are near-certain even at temperature 1.5)
  const item = v.items.find((i) => i.task === 'ocr');
  const image = await decodeImage(v.path(item.image));
  const draw = async (seed) => (await pg.generate([image], [item.prompt], {
    maxNewTokens: 24, sampling: sampling({ doSample: true, temperature: 1.5, seed }),
  }))[0].tokens;
  const a = await draw(7n);
  assert.deepEqual(await draw(7n), a);
  const others = [await draw(8n), await draw(9n)];
  assert.ok(others.some((o) => JSON.stringify(o) !== JSON.stringify(a)), 'three seeds drew the same tokens');
  await pg.release();
});

test('stop strings end the answer before the stop string; streaming gives the whole text', async () => {
  const v = vectors();
  const pg = await loadBundle(v.bundles.fp32);
  const item = v.items.find((i) => i.task === 'caption' && i.fp32.text.includes(','));
  const image = await decodeImage(v.path(item.image));
  let streamed = '';
  const [full] = await pg.generate([image], [item.prompt], {
    maxNewTokens: item.max_new_tokens, onToken: (row, token, text) => { streamed += text; },
  });
  assert.equal(full.text, item.fp32.text);
  assert.equal(streamed, full.text);
  const [cut] = await pg.generate([image], [item.prompt], { maxNewTokens: item.max_new_tokens, stopStrings: [','] });
  assert.equal(cut.text, full.text.slice(0, full.text.indexOf(',')));
  assert.ok(cut.tokens.length < full.tokens.length);
  await pg.release();
});
