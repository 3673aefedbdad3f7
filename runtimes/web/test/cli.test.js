// The Node CLI: `--json` is `pgexport run --json` (one object per line and --prompt); mistakes are one line on
// stderr, exit status 2, no stack trace.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { vectors } from './vectors.js';

const CLI = fileURLToPath(new URL('../cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

test('--json equals the Python runtime answer', () => {
  const v = vectors();
  for (const task of ['segment', 'caption']) {
    const item = v.items.find((i) => i.task === task);
    const r = run(v.bundles.fp32, '--image', v.path(item.image), '--prompt', item.prompt, '--json',
      '--max-new-tokens', String(item.max_new_tokens));
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), item.fp32);
  }
});

test('several --prompt: answered in order, one JSON object per line, fields in the Python order', () => {
  const v = vectors();
  const item = v.items.find((i) => i.task === 'detect');
  const n = String(item.max_new_tokens);
  const args = [v.bundles.fp32, '--image', v.path(item.image), '--prompt', item.prompt, '--prompt', 'caption en',
    '--max-new-tokens', n];
  const r = run(...args, '--json');
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 2, r.stdout);
  const [first, second] = lines.map((line) => JSON.parse(line));
  assert.deepEqual(first, item.fp32);
  assert.deepEqual(Object.keys(first), Object.keys(item.fp32)); // "prompt" first, as Answer.to_json
  assert.equal(Object.keys(first)[0], 'prompt');
  const alone = run(v.bundles.fp32, '--image', v.path(item.image), '--prompt', 'caption en', '--max-new-tokens', n, '--json');
  assert.deepEqual(second, JSON.parse(alone.stdout));
  // as text: a [prompt] line before each answer when there are several, none when there is one
  const text = run(...args);
  assert.equal(text.status, 0, text.stderr);
  const out = text.stdout.split('\n');
  assert.deepEqual(out.slice(0, 2), [`[${item.prompt}]`, first.text]);
  assert.deepEqual(out.slice(out.indexOf('[caption en]') + 1, out.indexOf('[caption en]') + 2), [second.text]);
  assert.ok(out.indexOf('[caption en]') > 1, text.stdout);
  const one = run(v.bundles.fp32, '--image', v.path(item.image), '--prompt', item.prompt, '--max-new-tokens', n);
  assert.equal(one.stdout.split('\n')[0], first.text);
});

test('bad input is one line on stderr and exit status 2', () => {
  const v = vectors();
  const image = v.path(v.items[0].image);
  const cases = [
    [[v.bundles.fp32, '--image', image, '--prompt', ' '], /empty prompt/],
    [[v.bundles.fp32, '--image', image, '--prompt', 'ocr', '--prompt', ''], /empty prompt/],
    [[v.bundles.fp32, '--image', '/no/such.png', '--prompt', 'ocr'], /image not found/],
    [[v.bundles.fp32, '--image', CLI, '--prompt', 'ocr'], /cannot read image/],
    [['/no/such/bundle', '--image', image, '--prompt', 'ocr'], /no such bundle directory/],
    [[v.bundles.fp32, '--image', image, '--prompt', 'ocr', '--max-new-tokens', '0'], /max_new_tokens must be/],
    [[v.bundles.fp32, '--image', image, '--prompt', 'ocr', '--max-new-tokens', '100000'], /positions/],
    [[v.bundles.fp32, '--image', image, '--prompt', 'ocr', '--sample', '--temperature', 'nan'], /not a number|temperature/],
    [[v.bundles.fp32, '--image', image], /--image and --prompt are required/],
    [[v.bundles.fp32, '--bogus'], /Unknown option/],
  ];
  for (const [args, pattern] of cases) {
    const r = run(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^error: /);
    assert.match(lines[0], pattern);
  }
});
