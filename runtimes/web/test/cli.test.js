// The Node CLI: `--json` is `pgexport run --json` (one object per line and --prompt); mistakes are one line on
// stderr, exit status 2, no stack trace.

import assert from 'node:assert/strict';
import { existsSync, writeFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { vectors } from './vectors.js';
import { CLI, refusal, removeWorkspaces, runCli, setUp, workspace } from './workspace.js';

const run = (...args) => runCli(args);
after(removeWorkspaces);

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

// Characters a terminal acts on, put into what the demo model generates by the tokenizer's decoder (the token ids stay
// the same): ESC starting a colour sequence, a right-to-left override, a C1 control and DEL. Letters of no <loc>/<seg>
// token are replaced, so the answers still parse.
const INJECTED = [['a', 'a\x1b[31m'], ['i', 'i\u202e'], ['r', 'r\x9b'], ['t', 't\x7f']];
const SHOWN = [['\x1b', '\\x1b'], ['\u202e', '\\u202e'], ['\x9b', '\\x9b'], ['\x7f', '\\x7f']];
const replaceAll = (text, pairs) => pairs.reduce((t, [from, to]) => t.replaceAll(from, to), text);
const RAW = /[\p{Cc}\u202a-\u202e\u2066-\u2069]/u;

function injectingWorkspace(v) {
  const ws = workspace(v.bundles.fp32, v.path(v.images[0].file));
  ws.editTokenizer((t) => ({ ...t, decoder: { type: 'Sequence', decoders: [...t.decoder.decoders,
    ...INJECTED.map(([from, to]) => ({ type: 'Replace', pattern: { String: from }, content: to }))] } }));
  return ws;
}

test('generated text and labels are shown escaped; --json keeps the exact text', () => {
  const v = vectors();
  const ws = injectingWorkspace(v);
  for (const task of ['caption', 'detect']) {
    const item = v.items.find((i) => i.task === task);
    const args = [ws.bundle, '--image', v.path(item.image), '--prompt', item.prompt, '--max-new-tokens', String(item.max_new_tokens)];
    const json = run(...args, '--json');
    assert.equal(json.status, 0, json.stderr);
    const answer = JSON.parse(json.stdout);
    assert.deepEqual(answer.tokens, item.fp32.tokens);
    assert.equal(answer.text, replaceAll(item.fp32.text, INJECTED)); // the exact text, ESC and all
    assert.ok(RAW.test(answer.text));
    const human = run(...args);
    assert.equal(human.status, 0, human.stderr);
    assert.doesNotMatch(human.stdout.replaceAll('\n', ''), RAW, 'a raw control character on the terminal');
    assert.doesNotMatch(human.stderr.replaceAll('\n', ''), RAW, 'a raw control character on the terminal');
    const lines = human.stdout.trimEnd().split('\n');
    assert.equal(lines[0], replaceAll(answer.text, SHOWN));
    assert.equal(lines.length, 1 + answer.detections.length);
    answer.detections.forEach((d, i) => assert.ok(lines[1 + i].startsWith(`  ${replaceAll(d.label, SHOWN)}: box (`), lines[1 + i]));
  }
});

test('the [prompt] lines before each answer show a prompt escaped', () => {
  const v = vectors();
  const prompts = ['caption en\x1b[2J', 'answer en what is \u202eleft?'];
  const r = run(v.bundles.fp32, '--image', v.path(v.images[0].file), ...prompts.flatMap((p) => ['--prompt', p]), '--max-new-tokens', '1');
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.equal(lines[0], '[caption en\\x1b[2J]');
  assert.equal(lines[2], '[answer en what is \\u202eleft?]');
  assert.doesNotMatch(r.stdout.replaceAll('\n', ''), RAW);
});

test('file names and option values with newlines or escape sequences are one escaped line', () => {
  const v = vectors();
  const ws = workspace(v.bundles.fp32, v.path(v.images[0].file));
  const cut = path.join(ws.root, 'cut\x1b[31m.png');
  writeFileSync(cut, readFileSync(ws.image).subarray(0, 60));
  const image = ws.image;
  const cases = [
    [[ws.bundle, '--image', 'no\nsuch\x1b[2J.png', '--prompt', 'ocr'], 'error: image not found: no\\nsuch\\x1b[2J.png'],
    [['/no/such\nbundle\u202e', '--image', image, '--prompt', 'ocr'], 'error: /no/such\\nbundle\\u202e: no such bundle directory'],
    [[ws.bundle, '--image', cut, '--prompt', 'ocr'], `error: cannot read image ${ws.root}/cut\\x1b[31m.png: `],
    [[ws.bundle, '--image', image, '--prompt', 'ocr', '--max-new-tokens', '1\n2'], "error: --max-new-tokens: '1\\n2' is not an integer"],
    [[ws.bundle, '--image', image, '--prompt', 'ocr', '--top-p', '0.5\x1b[8m'], "error: --top-p: '0.5\\x1b[8m' is not a number"],
    [[ws.bundle, '--image', image, '--prompt', 'ocr', '--\x1b[31mx'], "error: Unknown option '--\\x1b[31mx'"],
  ];
  for (const [args, start] of cases) {
    const line = refusal(run(...args));
    assert.ok(line.startsWith(start), `${JSON.stringify(line)} does not start with ${JSON.stringify(start)}`);
  }
});

test("a long command line is answered: onnxruntime-node's telemetry, which reads it, is off", () => {
  // with it on, a command line over ~29 KB (here 200 prompts of 208 characters, 42 KB) overflows the stack in
  // InferenceSession.create: SIGSEGV, nothing on stderr
  const v = vectors();
  const prompt = `caption en ${'x '.repeat(99)}`.slice(0, 208);
  const r = run(v.bundles.fp32, '--image', v.path(v.images[0].file), ...Array(200).fill(['--prompt', prompt]).flat(),
    '--max-new-tokens', '1', '--json');
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trimEnd().split('\n').length, 200);
  assert.equal(existsSync(`/tmp/mat-debug-${r.pid}.log`), false, "onnxruntime's telemetry wrote its log");
});

test('a WordLevel tokenizer answers a prompt with words outside its vocabulary', () => {
  const v = vectors();
  const ws = workspace(v.bundles.fp32, v.path(v.images[0].file));
  setUp(ws, [{ tokenizer: 'wordlevel', unk_token: '<unk>' }]);
  const r = run(ws.bundle, '--image', ws.image, '--prompt', 'caption zebrafish en', '--max-new-tokens', '3', '--json');
  assert.equal(r.status, 0, r.stderr);
  const answer = JSON.parse(r.stdout);
  assert.equal(answer.prompt, 'caption zebrafish en');
  assert.ok(answer.tokens.length >= 1 && answer.tokens.length <= 3, r.stdout);
});
