// Showing text from outside the runtime: repr() is Python's, character for character (the Python runtime's messages
// quote with it); visible() escapes what a terminal acts on and nothing else. Command-line bytes that are not UTF-8
// are read as Python reads them.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { surrogateEscape } from '../src/argv_node.js';
import { UserError } from '../src/errors.js';
import { repr, visible } from '../src/escape.js';
import { vectors } from './vectors.js';

test("repr() is Python's repr() of the same strings", () => {
  for (const { text, repr: want } of vectors().reprs) assert.equal(repr(text), want, JSON.stringify(text));
  assert.equal(repr(true), 'True');
  assert.equal(repr(null), 'None');
});

test('visible() escapes controls, DEL, C1, lone surrogates, separators and bidi controls, and keeps the rest', () => {
  const cases = [
    ['\x1b[31mred\x1b[0m', '\\x1b[31mred\\x1b[0m'], ['a\nb\r\tc', 'a\\nb\\r\\tc'], ['\x9b2J', '\\x9b2J'],
    ['del\x7f', 'del\\x7f'], ['\u202eevil\u202c', '\\u202eevil\\u202c'], ['\u2066x\u2069', '\\u2066x\\u2069'],
    ['\u200f\u061c', '\\u200f\\u061c'], ['l\u2028p\u2029', 'l\\u2028p\\u2029'], ['lone \ud800', 'lone \\ud800'],
    ['café ☕ 日本\u3000語 👨\u200d👩', 'café ☕ 日本\u3000語 👨\u200d👩'], ['back\\slash', 'back\\slash'],
  ];
  for (const [text, want] of cases) assert.equal(visible(text), want, JSON.stringify(text));
});

test('a UserError is one line whatever it quotes', () => {
  const e = new UserError('image not found: no\nsuch\x1b[2J.png');
  assert.equal(e.message, 'image not found: no\\nsuch\\x1b[2J.png');
});

test("command-line bytes that are not UTF-8 decode as Python's surrogateescape", () => {
  for (const { hex, text } of vectors().argv) assert.equal(surrogateEscape(Buffer.from(hex, 'hex')), text, hex);
});
