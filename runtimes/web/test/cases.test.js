// The cases both runtimes must refuse alike (tests/runtime_cases.json, the one list; the Python runtime's side is
// tests/catalogue.py): each through this runtime's CLI, in a fresh workspace, must end with exit status 2 and one
// line on stderr holding the same words as the Python runtime's, and leave nothing behind.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { vectors } from './vectors.js';
import { CASES_FILE, expandArgs, listing, refusal, removeWorkspaces, runCli, setUp, workspace } from './workspace.js';

const { cases } = JSON.parse(readFileSync(CASES_FILE, 'utf8'));
after(removeWorkspaces);

test('the shared case list is well formed', () => {
  const names = cases.map((c) => c.name);
  assert.equal(new Set(names).size, names.length, 'case names must be unique');
  assert.ok(cases.length >= 20, `${cases.length} cases`);
});

for (const c of cases) {
  test(`shared case ${c.name}`, () => {
    const v = vectors();
    const ws = workspace(v.bundles.fp32, v.path(v.images[0].file));
    setUp(ws, c.setup);
    const before = listing(ws.root);
    const line = refusal(runCli(expandArgs(c.args, ws), { timeout: 120_000 }));
    assert.ok(line.includes(c.needle), `${JSON.stringify(c.needle)} not in ${JSON.stringify(line)}`);
    assert.deepEqual(listing(ws.root), before);
  });
}
