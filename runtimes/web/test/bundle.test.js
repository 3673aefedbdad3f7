// The manifest contract: tampered files, unknown schema versions and paths that leave the bundle are refused;
// a schema version 2 manifest (v1 less its duplicated fields) reads the same.

import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { BundleError, UserError, decodeImage, int8MatrixUnits, loadBundle, answerToJson } from '../src/node.js';
import { vectors } from './vectors.js';

const dirs = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function copy(src) {
  const dir = mkdtempSync(path.join(tmpdir(), 'pgexport-web-'));
  dirs.push(dir);
  cpSync(src, dir, { recursive: true });
  return dir;
}

function editManifest(dir, edit) {
  const p = path.join(dir, 'manifest.json');
  const m = JSON.parse(readFileSync(p, 'utf8'));
  edit(m);
  writeFileSync(p, JSON.stringify(m));
}

test('a tampered file is refused by its sha256', async () => {
  const dir = copy(vectors().bundles.fp32);
  const p = path.join(dir, 'projector.onnx');
  const bytes = readFileSync(p);
  bytes[bytes.length - 1] ^= 1;
  writeFileSync(p, bytes);
  await assert.rejects(loadBundle(dir), (e) => e instanceof BundleError && /projector\.onnx does not match its sha256/.test(e.message));
});

test('unknown schema versions and other schemas are refused', async () => {
  for (const [edit, pattern] of [
    [(m) => { m.schema_version = 3; }, /schema version 3 is not supported/],
    [(m) => { m.schema_version = '1'; }, /schema version '1' is not supported/], // quoted as Python's repr()
    [(m) => { m.schema = 'other'; }, /not a pgexport manifest/],
  ]) {
    const dir = copy(vectors().bundles.fp32);
    editManifest(dir, edit);
    await assert.rejects(loadBundle(dir), (e) => e instanceof BundleError && pattern.test(e.message));
  }
});

test('manifest paths that leave the bundle are refused, and so are symbolic links', async () => {
  const bad = ['../manifest.json', '/etc/passwd', 'sub/decoder.onnx', '..', '.hidden'];
  for (const name of bad) {
    const dir = copy(vectors().bundles.fp32);
    editManifest(dir, (m) => {
      m.files[name] = m.files['projector.onnx'];
      m.graphs.projector.file = name;
    });
    await assert.rejects(loadBundle(dir), (e) => e instanceof BundleError && /not a plain file name/.test(e.message), name);
  }
  const dir = copy(vectors().bundles.fp32);
  rmSync(path.join(dir, 'projector.onnx'));
  symlinkSync(path.join(vectors().bundles.fp32, 'projector.onnx'), path.join(dir, 'projector.onnx'));
  await assert.rejects(loadBundle(dir), (e) => e instanceof BundleError && /symbolic link/.test(e.message));
});

test('a schema version 2 manifest (no duplicated token ids) gives the same answer', async () => {
  const v = vectors();
  const dir = copy(v.bundles.fp32);
  editManifest(dir, (m) => {
    m.schema_version = 2;
    for (const k of ['image_token_id', 'bos_token_id', 'eos_token_id', 'pad_token_id']) delete m.tokenizer[k];
    delete m.generation.eos_token_ids;
    m.appended_in_a_later_version = { anything: true }; // unknown fields are ignored
  });
  const pg = await loadBundle(dir);
  const item = v.items.find((i) => i.task === 'detect');
  const answer = await pg.answer(await decodeImage(v.path(item.image)), item.prompt, { maxNewTokens: item.max_new_tokens });
  assert.deepEqual(answerToJson(answer), item.fp32);
  await pg.release();
});

test('an int8 prefill graph that will not run is not read: its files must be there, and are not hashed', async () => {
  const v = vectors();
  const dir = copy(v.bundles.fp32);
  writeFileSync(path.join(dir, 'decoder_int8.onnx'), 'not an onnx graph');
  editManifest(dir, (m) => {
    m.graphs.decoder_int8 = { ...m.graphs.decoder, file: 'decoder_int8.onnx', data_files: [], precision: 'int8-rows' };
    m.files['decoder_int8.onnx'] = '0'.repeat(64); // not its sha256: a runtime that read it would refuse it
  });
  const item = v.items.find((i) => i.task === 'caption');
  for (const backend of ['node', 'wasm']) {
    const pg = await loadBundle(dir, { backend, prefill: backend === 'node' ? 'decoder' : 'auto' });
    assert.equal(pg.prefillGraph, 'decoder');
    const answer = await pg.answer(await decodeImage(v.path(item.image)), item.prompt, { maxNewTokens: item.max_new_tokens });
    assert.deepEqual(answerToJson(answer), item.fp32);
    await pg.release();
  }
  await assert.rejects(loadBundle(dir, { prefill: 'int8' }), (e) => e instanceof BundleError && /decoder_int8\.onnx does not match/.test(e.message));
  rmSync(path.join(dir, 'decoder_int8.onnx'));
  await assert.rejects(loadBundle(dir, { prefill: 'decoder' }), (e) => e instanceof BundleError && /decoder_int8\.onnx/.test(e.message));
});

test('prefill chooses the graph: decoder_int8 runs the prefill, the decoder the decode steps', async () => {
  const v = vectors();
  const dir = copy(v.bundles.fp32);
  // the decoder's own graph under the int8 graph's name: the same answers prove the cache it writes is the decoder's
  cpSync(path.join(dir, 'decoder.onnx'), path.join(dir, 'decoder_int8.onnx'));
  editManifest(dir, (m) => {
    m.graphs.decoder_int8 = { ...m.graphs.decoder, file: 'decoder_int8.onnx', precision: 'int8-rows' };
    m.files['decoder_int8.onnx'] = m.files['decoder.onnx'];
  });
  const item = v.items.find((i) => i.task === 'detect');
  const pg = await loadBundle(dir, { prefill: 'int8' });
  assert.equal(pg.prefillGraph, 'decoder_int8');
  let prefills = 0;
  const run = pg.graphs.int8Prefill.run.bind(pg.graphs.int8Prefill);
  pg.graphs.int8Prefill.run = (...args) => { prefills += 1; return run(...args); };
  const answer = await pg.answer(await decodeImage(v.path(item.image)), item.prompt, { maxNewTokens: item.max_new_tokens });
  assert.deepEqual(answerToJson(answer), item.fp32);
  assert.equal(prefills, 1);
  await pg.release();
  await assert.rejects(loadBundle(dir, { backend: 'wasm', prefill: 'int8' }), (e) => e instanceof UserError && /no int8 matrix units/.test(e.message));
  await assert.rejects(loadBundle(v.bundles.fp32, { prefill: 'int8' }), (e) => e instanceof UserError && /--int8-prefill/.test(e.message));
  await assert.rejects(loadBundle(dir, { prefill: 'fast' }), (e) => e instanceof UserError && /unknown prefill fast/.test(e.message));
});

test('int8 matrix units are read from the x86 flags', () => {
  const flags = (f) => `processor\t: 0\nflags\t\t: fpu sse2 ${f}\n`;
  assert.equal(int8MatrixUnits('x64', flags('avx512_vnni amx_tile amx_int8')), true);
  assert.equal(int8MatrixUnits('x64', flags('avx512_vnni amx_tile')), false);
  assert.equal(int8MatrixUnits('arm64', flags('amx_int8')), false);
  assert.equal(int8MatrixUnits('x64', null), false);
});
