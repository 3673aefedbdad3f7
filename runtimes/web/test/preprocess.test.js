// Preprocessing equals the Python runtime's: pixel_values within 1e-6 on odd-sized, RGBA, grayscale, palette,
// shrunk, JPEG and EXIF-rotated images (decoded here with sharp, there with Pillow).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeImage } from '../src/images_node.js';
import { loadManifest } from '../src/manifest.js';
import { nodeFiles } from '../src/files_node.js';
import { preprocess, toRgb } from '../src/preprocess.js';
import { readF32, vectors } from './vectors.js';

test('alpha over white leaves opaque pixels unchanged and makes transparent ones white', () => {
  const data = new Uint8Array(256 * 2 * 4);
  for (let v = 0; v < 256; v++) {
    data.set([v, 255 - v, v, 255], v * 4);
    data.set([v, v, v, 0], (256 + v) * 4);
  }
  const rgb = toRgb({ width: 512, height: 1, data });
  for (let v = 0; v < 256; v++) {
    assert.deepEqual([...rgb.subarray(v * 3, v * 3 + 3)], [v, 255 - v, v]);
    assert.deepEqual([...rgb.subarray((256 + v) * 3, (256 + v) * 3 + 3)], [255, 255, 255]);
  }
});

test('pixel_values equal the Python runtime within 1e-6', async (t) => {
  const v = vectors();
  const m = await loadManifest(await nodeFiles(v.bundles.fp32), { verify: false });
  let worst = 0;
  for (const img of v.images) {
    const decoded = await decodeImage(v.path(img.file));
    const { data, dims } = preprocess([decoded], m.preprocessing);
    assert.deepEqual(dims, img.dims, img.file);
    const ref = readF32(v.path(img.pixels));
    let max = 0;
    for (let i = 0; i < ref.length; i++) max = Math.max(max, Math.abs(ref[i] - data[i]));
    t.diagnostic(`${img.file}: max |diff| ${max}`);
    worst = Math.max(worst, max);
    assert.ok(max <= 1e-6, `${img.file}: max |diff| ${max} > 1e-6`);
  }
  console.log(`PREPROCESS_MAX_DIFF ${worst} over ${v.images.length} images`);
});
