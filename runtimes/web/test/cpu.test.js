// Which CPUs get onnxruntime's x64quantprecision: x86 without VNNI only, where int8-weight products saturate in
// int16; on a VNNI CPU onnxruntime would turn the weights into uint8 too, and lose their speed (pgexport_runtime/cpu.py).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { int8WeightsSaturate } from '../src/node.js';

const cpuinfo = (flags) => `processor\t: 0\nmodel name\t: x\nflags\t\t: ${flags}\n`;

test('only an x86 CPU without VNNI, or with unreadable flags, is taken to saturate', () => {
  assert.equal(int8WeightsSaturate('x64', cpuinfo('avx2 avx512f avx512_vnni')), false);
  assert.equal(int8WeightsSaturate('x64', cpuinfo('avx2 avx_vnni')), false);
  assert.equal(int8WeightsSaturate('x64', cpuinfo('avx2 avx512f')), true);
  assert.equal(int8WeightsSaturate('x64', null), true);
  assert.equal(int8WeightsSaturate('arm64', null), false);
  assert.equal(int8WeightsSaturate('arm64', cpuinfo('asimd asimddp')), false);
});
