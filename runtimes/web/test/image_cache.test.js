// The image-feature cache (image_cache.js): the vision graph runs once per distinct image, answers are the same
// with it off, a batch encodes only what is missing, and the cache is bounded by bytes, least recently used out first.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sha256Hex } from '../src/files_node.js';
import { ImageCache } from '../src/image_cache.js';
import { UserError, answerToJson, decodeImage, loadBundle } from '../src/node.js';
import { vectors } from './vectors.js';

const PROMPTS = ['caption en', 'detect circle ; square', 'answer en what colour is the large shape on the left?'];

/** Wrap the bundle's vision session to count its calls and the images they encode. */
function counted(pg) {
  const session = pg.graphs.vision;
  const count = { calls: 0, images: 0 };
  pg.graphs.vision = {
    run: (feeds, ...rest) => {
      count.calls += 1;
      count.images += Object.values(feeds)[0].dims[0];
      return session.run(feeds, ...rest);
    },
    release: () => session.release(),
  };
  return count;
}

/** pixel_values of `n` one-value images [n, 3, 2, 2], image i filled with values[i]. */
function pixels(...values) {
  const data = new Float32Array(values.length * 12);
  values.forEach((v, i) => data.fill(v, i * 12, (i + 1) * 12));
  return { data, dims: [values.length, 3, 2, 2] };
}

/** A stand-in for vision + projector: the first ten values of each image, counting the images it is given. */
function fakeEncoder() {
  const encode = async ({ data, dims }) => {
    encode.images += dims[0];
    const out = new Float32Array(dims[0] * 10);
    for (let b = 0; b < dims[0]; b++) out.set(data.subarray(b * 12, b * 12 + 10), b * 10);
    return out;
  };
  encode.images = 0;
  return encode;
}

test('the cache is bounded by bytes, least recently used out first; callers get their own arrays', async () => {
  const cache = new ImageCache(sha256Hex, 3 * 4 * 10); // room for three rows of ten float32
  const encode = fakeEncoder();
  for (let i = 0; i < 5; i++) await cache.embeddings(pixels(i), encode);
  assert.equal(cache.entries.size, 3);
  assert.ok(cache.bytes <= cache.maxBytes);
  assert.equal(cache.misses, 5);
  await cache.embeddings(pixels(2), encode); // a hit: 2 is now the most recently used, 3 the least
  await cache.embeddings(pixels(0), encode); // evicted (the oldest of 0..4): encoded again, 3 goes out
  assert.deepEqual([cache.hits, cache.misses], [1, 6]);
  await cache.embeddings(pixels(2), encode); // inserted before 3 but used since: still there
  assert.deepEqual([cache.hits, cache.misses], [2, 6]);
  await cache.embeddings(pixels(3), encode); // gone: encoded again
  assert.deepEqual([cache.hits, cache.misses], [2, 7]);
  const out = await cache.embeddings(pixels(3), encode);
  out.fill(-1); // the caller's array is its own: the cached row is untouched
  assert.ok((await cache.embeddings(pixels(3), encode)).every((v) => v === 3));
  assert.deepEqual([cache.hits, cache.misses, encode.images], [4, 7, 7]);
  const small = new ImageCache(sha256Hex, 39); // a row of 40 bytes does not fit: encoded every time
  await small.embeddings(pixels(1), encode);
  assert.ok((await small.embeddings(pixels(1), encode)).every((v) => v === 1));
  assert.deepEqual([small.entries.size, small.misses], [0, 2]);
  cache.clear();
  await cache.embeddings(pixels(3), encode);
  assert.equal(cache.misses, 8);
});

test('a batch encodes only its distinct missing images, in one call, rows in order', async () => {
  const cache = new ImageCache(sha256Hex);
  const encode = fakeEncoder();
  let calls = 0;
  const once = (p) => {
    calls += 1;
    return encode(p);
  };
  await cache.embeddings(pixels(0), once);
  const out = await cache.embeddings(pixels(1, 0, 1, 2), once);
  assert.deepEqual([calls, encode.images], [2, 3]); // 0 then {1, 2}: 1 once although it appears twice
  assert.deepEqual([...out], [1, 0, 1, 2].flatMap((v) => new Array(10).fill(v)));
  assert.deepEqual([cache.hits, cache.misses], [2, 3]);
  await cache.embeddings(pixels(2, 1), once);
  assert.equal(calls, 2); // every row cached: no call at all
});

test('several prompts on one image: one vision run, the same answers as with the cache off', async () => {
  const v = vectors();
  const item = v.items.find((i) => i.task === 'detect');
  const image = await decodeImage(v.path(item.image));
  const cached = await loadBundle(v.bundles.fp32);
  const plain = await loadBundle(v.bundles.fp32, { imageCacheBytes: 0 });
  assert.equal(plain.imageCache, null);
  const [on, off] = [counted(cached), counted(plain)];
  const ask = async (pg) => {
    const out = [];
    for (const prompt of PROMPTS) out.push(answerToJson(await pg.answer(image, prompt, { maxNewTokens: 12 })));
    return out;
  };
  const want = await ask(plain);
  const got = await ask(cached);
  assert.deepEqual(got, want);
  assert.ok(new Set(want.map((a) => a.text)).size > 1, 'different prompts gave the same answer');
  assert.deepEqual([on.calls, on.images, off.images], [1, 1, PROMPTS.length]);
  // one batch of the same image thrice: served from the cache; with the cache off the batch encodes it thrice
  const batch = await cached.answers([image, image, image], PROMPTS, { maxNewTokens: 12 });
  assert.deepEqual(batch.map(answerToJson), want);
  assert.equal(on.images, 1);
  await plain.answers([image, image, image], PROMPTS, { maxNewTokens: 12 });
  assert.equal(off.images, 2 * PROMPTS.length);
  // the item's own prompt gives the Python runtime's answer through the cache too
  assert.deepEqual(answerToJson(await cached.answer(image, item.prompt, { maxNewTokens: item.max_new_tokens })), item.fp32);
  // hits: the prompts after the first, the batch's three rows, the item's prompt
  assert.deepEqual([cached.imageCache.hits, cached.imageCache.misses], [(PROMPTS.length - 1) + PROMPTS.length + 1, 1]);
  await Promise.all([cached.release(), plain.release()]);
});

test('imageEmbeddings encodes each distinct missing image once and equals the uncached embeddings', async () => {
  const v = vectors();
  const [a, b] = await Promise.all(v.items.slice(0, 2).map((i) => decodeImage(v.path(i.image))));
  const pg = await loadBundle(v.bundles.fp32);
  const count = counted(pg);
  await pg.imageEmbeddings([a]);
  const both = await pg.imageEmbeddings([b, a, b]);
  assert.deepEqual([count.calls, count.images], [2, 2]); // a, then b once (deduplicated within the batch)
  const plain = await loadBundle(v.bundles.fp32, { imageCacheBytes: 0 });
  const fresh = await plain.imageEmbeddings([b, a, b]);
  assert.equal(both.length, fresh.length);
  assert.ok(both.every((x, i) => x === fresh[i]), 'cached embeddings differ from freshly encoded ones');
  await Promise.all([pg.release(), plain.release()]);
});

test('imageCacheBytes must be a non-negative integer', async () => {
  const v = vectors();
  for (const bad of [-1, 1.5, '64', Number.NaN, null]) {
    await assert.rejects(loadBundle(v.bundles.fp32, { imageCacheBytes: bad }),
      (e) => e instanceof UserError && /imageCacheBytes must be a non-negative integer/.test(e.message), String(bad));
  }
});
