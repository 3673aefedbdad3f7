// Greedy answers against the Python runtime on >= 30 held-out demo items (all five tasks): the fp32 bundle gives
// identical tokens and identical `--json` answers (boxes, masks); the int4 bundle's token agreement is measured
// and printed, and must stay above a floor. Also: onnxruntime-web (WASM) in Node agrees with onnxruntime-node.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeImage, loadBundle, answerToJson } from '../src/node.js';
import { agreement, vectors } from './vectors.js';

// int4: measured 1.0 (identical tokens on 30/30 items: the int4 MatMulNBits kernels are onnxruntime's own, the
// same in onnxruntime-node 1.30 as in Python's 1.32). The floor leaves room for kernel changes across versions.
const INT4_FLOOR = 0.95;
// int4 on onnxruntime-web's WASM backend: measured 0.994 on the demo model's int4 bundle. Its MatMulNBits kernel is
// not MLAS's, so the int4 products round differently and a near-tie between two tokens can flip.
const INT4_WASM_FLOOR = 0.85;

async function answers(pg, v, items) {
  const out = [];
  for (const item of items) {
    const image = await decodeImage(v.path(item.image));
    out.push(answerToJson(await pg.answer(image, item.prompt, { maxNewTokens: item.max_new_tokens })));
  }
  return out;
}

test('fp32: identical greedy tokens and --json answers on the held-out items', async () => {
  const v = vectors();
  assert.ok(v.items.length >= 30, `only ${v.items.length} items`);
  assert.deepEqual(new Set(v.items.map((i) => i.task)), new Set(['caption', 'vqa', 'ocr', 'detect', 'segment']));
  const pg = await loadBundle(v.bundles.fp32);
  const ours = await answers(pg, v, v.items);
  let same = 0;
  v.items.forEach((item, i) => {
    same += JSON.stringify(ours[i].tokens) === JSON.stringify(item.fp32.tokens) ? 1 : 0;
  });
  console.log(`FP32_TOKENS_IDENTICAL ${same}/${v.items.length}`);
  v.items.forEach((item, i) => assert.deepEqual(ours[i], item.fp32, item.id));
  await pg.release();
});

for (const [backend, floor] of [['node', INT4_FLOOR], ['wasm', INT4_WASM_FLOOR]]) {
  test(`int4 on ${backend}: token agreement with the Python runtime`, async (t) => {
    const v = vectors();
    assert.ok(v.bundles.int4, 'no int4 bundle in the vectors');
    const pg = await loadBundle(v.bundles.int4, { backend });
    const ours = await answers(pg, v, v.items);
    let same = 0;
    let n = 0;
    let rows = 0;
    v.items.forEach((item, i) => {
      const a = agreement(ours[i].tokens, item.int4.tokens);
      same += a.same;
      n += a.n;
      rows += a.same === a.n ? 1 : 0;
    });
    const rate = same / n;
    console.log(`INT4_TOKEN_AGREEMENT ${backend} ${rate.toFixed(4)} (${same}/${n} tokens; ${rows}/${v.items.length} items identical)`);
    t.diagnostic(`int4 ${backend} token agreement ${rate}`);
    assert.ok(rate >= floor, `int4 ${backend} token agreement ${rate} < ${floor}`);
    await pg.release();
  });
}

test('onnxruntime-web (WASM) in Node gives the same tokens as onnxruntime-node', async () => {
  const v = vectors();
  const items = ['caption', 'vqa', 'ocr', 'detect', 'segment'].map((task) => v.items.find((i) => i.task === task));
  const pg = await loadBundle(v.bundles.fp32, { backend: 'wasm' });
  const ours = await answers(pg, v, items);
  items.forEach((item, i) => assert.deepEqual(ours[i], item.fp32, item.id));
});

test('a left-padded batch gives each row its own answer', async () => {
  const v = vectors();
  const items = v.items.slice(0, 5); // prompts of different lengths: rows are padded on the left
  const pg = await loadBundle(v.bundles.fp32);
  const images = await Promise.all(items.map((i) => decodeImage(v.path(i.image))));
  const max = Math.max(...items.map((i) => i.max_new_tokens));
  const results = await pg.generate(images, items.map((i) => i.prompt), { maxNewTokens: max });
  items.forEach((item, i) => {
    const n = item.fp32.tokens.length;
    // a row stops at <eos>; one capped by its own max_new_tokens is compared over that many tokens
    assert.deepEqual(results[i].tokens.slice(0, n), item.fp32.tokens, item.id);
  });
  await pg.release();
});
