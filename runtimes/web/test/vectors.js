// The shared test vectors, written by the Python runtime (tests/web/vectors.py, run by tests/test_web.py).
// PGEXPORT_WEB_VECTORS names their directory; a test that needs them fails without it (it does not skip).

import { readFileSync } from 'node:fs';
import path from 'node:path';

export function vectors() {
  const dir = process.env.PGEXPORT_WEB_VECTORS;
  if (!dir) throw new Error('PGEXPORT_WEB_VECTORS is not set: run tests/test_web.py, which writes the vectors');
  const v = JSON.parse(readFileSync(path.join(dir, 'vectors.json'), 'utf8'));
  v.path = (rel) => path.join(dir, rel);
  return v;
}

export function readF32(file) {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** Position-wise agreement of two token lists over the longer one (a missing token is a disagreement). */
export function agreement(a, b) {
  const n = Math.max(a.length, b.length);
  let same = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) same += a[i] === b[i] ? 1 : 0;
  return { same, n };
}
