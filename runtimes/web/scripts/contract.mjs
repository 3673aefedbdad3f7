// Writes src/contract.js from the Python runtime's contract.json, the one file both runtimes read: graph I/O names,
// KV-cache layouts, manifest bounds and request limits. `--check` writes nothing and exits 1 when src/contract.js
// differs from what it would write (a test runs it).
//
//   node scripts/contract.mjs [--check]

import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = fileURLToPath(new URL('../../python/pgexport_runtime/contract.json', import.meta.url));
const target = fileURLToPath(new URL('../src/contract.js', import.meta.url));

const contract = JSON.parse(readFileSync(source, 'utf8'));
const text = [
  '// Written by scripts/contract.mjs from runtimes/python/pgexport_runtime/contract.json; edit that file, not this one.',
  '',
  `const contract = ${JSON.stringify(contract, null, 2)};`,
  '',
  'function deepFreeze(x) {',
  "  if (x && typeof x === 'object') Object.values(x).forEach(deepFreeze);",
  '  return Object.freeze(x);',
  '}',
  '',
  'export default deepFreeze(contract);',
  '',
].join('\n');

if (process.argv.includes('--check')) {
  let have = null;
  try { have = readFileSync(target, 'utf8'); } catch { /* missing: differs */ }
  if (have !== text) {
    console.error('src/contract.js differs from contract.json: run node scripts/contract.mjs');
    process.exit(1);
  }
} else {
  writeFileSync(target, text);
}
