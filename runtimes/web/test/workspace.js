// Workspaces for the CLI tests, and the shared case list's steps (tests/runtime_cases.json, whose Python reader is
// tests/runtime_cases.py): a fresh directory holding bundle/ (a copy of a bundle) and img.png, set up as a case says.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../cli.js', import.meta.url));
export const CASES_FILE = fileURLToPath(new URL('../../../tests/runtime_cases.json', import.meta.url));

const made = [];

/** Removes every workspace made so far (call it from after()). */
export function removeWorkspaces() {
  made.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true }));
}

export function workspace(bundle, image) {
  const root = mkdtempSync(path.join(tmpdir(), 'pgexport-cli-'));
  made.push(root);
  cpSync(bundle, path.join(root, 'bundle'), { recursive: true });
  copyFileSync(image, path.join(root, 'img.png'));
  const ws = { root, bundle: path.join(root, 'bundle'), image: path.join(root, 'img.png') };
  const manifestPath = path.join(ws.bundle, 'manifest.json');
  ws.manifest = () => JSON.parse(readFileSync(manifestPath, 'utf8'));
  ws.writeManifest = (m) => writeFileSync(manifestPath, JSON.stringify(m));
  ws.rehash = (name) => {
    const m = ws.manifest();
    m.files[name] = createHash('sha256').update(readFileSync(path.join(ws.bundle, name))).digest('hex');
    ws.writeManifest(m);
  };
  /** Rewrites the bundle's tokenizer.json with edit(json) and updates its sha256. */
  ws.editTokenizer = (edit) => {
    const name = ws.manifest().tokenizer.file;
    const p = path.join(ws.bundle, name);
    writeFileSync(p, JSON.stringify(edit(JSON.parse(readFileSync(p, 'utf8')))));
    ws.rehash(name);
  };
  return ws;
}

/** A case's setup steps (the "format" of tests/runtime_cases.json). */
export function setUp(ws, steps) {
  for (const step of steps) {
    if (step.set) {
      const m = ws.manifest();
      const keys = step.set.slice(0, -1);
      keys.reduce((d, k) => d[k], m)[step.set.at(-1)] = step.to;
      ws.writeManifest(m);
    } else if (step.write) {
      writeFileSync(path.join(ws.root, step.write), step.text);
    } else if (step.tokenizer === 'wordlevel') {
      ws.editTokenizer((t) => asWordlevel(t, step.unk_token));
    } else {
      throw new Error(`unknown setup step ${JSON.stringify(step)}`);
    }
  }
}

/** A BPE or WordPiece tokenizer.json made a WordLevel model over the same vocabulary (tests/runtime_cases.py as_wordlevel). */
export function asWordlevel(tokenizer, unkToken) {
  return { ...tokenizer, normalizer: null, pre_tokenizer: { type: 'WhitespaceSplit' }, decoder: null,
    model: { type: 'WordLevel', vocab: tokenizer.model.vocab, unk_token: unkToken } };
}

/** A case's arguments: strings (paths filled in) or Buffers (bytes that need not be UTF-8). */
export function expandArgs(items, ws) {
  return items.flatMap((a) => {
    if (typeof a === 'string') return [a.replaceAll('{bundle}', ws.bundle).replaceAll('{image}', ws.image).replaceAll('{root}', ws.root)];
    if (a.hex !== undefined) return [Buffer.from(a.hex, 'hex')];
    if (a.repeat !== undefined) return [a.text + a.repeat.repeat(a.times)];
    return Array.from({ length: a.times }, () => expandArgs(a.args, ws)).flat();
  });
}

/**
 * Runs the CLI. Node passes arguments to a child as UTF-8 text, so one that is raw bytes goes through the shell
 * (printf's octal escapes); the rest are passed as they are.
 */
export function runCli(args, options = {}) {
  const run = { encoding: 'utf8', maxBuffer: 1 << 26, ...options };
  if (!args.some((a) => Buffer.isBuffer(a))) return spawnSync(process.execPath, [CLI, ...args], run);
  const quote = (s) => `'${s.replaceAll("'", "'\\''")}'`;
  const word = (a) => (Buffer.isBuffer(a) ? `"$(printf '${[...a].map((b) => `\\${b.toString(8).padStart(3, '0')}`).join('')}')"` : quote(a));
  return spawnSync('/bin/sh', ['-c', `exec ${[process.execPath, CLI, ...args].map(word).join(' ')}`], run);
}

/** The one line a refused command writes: exit status `code`, nothing on stdout, one line on stderr, no stack trace. */
export function refusal(r, code = 2) {
  const lines = r.stderr.split('\n').filter((line) => line.trim());
  assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, code, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^error: /);
  assert.doesNotMatch(lines[0], /\p{Cc}/u, 'a control character on the terminal');
  assert.doesNotMatch(r.stderr, /\n\s+at |Traceback/);
  return lines[0];
}

/** Everything under a directory (relative paths), to see that a command left nothing behind. */
export function listing(dir) {
  return readdirSync(dir, { recursive: true }).map(String).sort();
}
