/**
 * The committed protobuf types (src/wire/generated/) must be exactly what
 * `npm run gen:proto` produces from proto/ today: regenerate into a temporary
 * directory and compare every file byte for byte, in both directions.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { GENERATED_DIR, REPO_ROOT, generateProtoTypes } from '../scripts/gen-proto.js';

function listFiles(root: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(path.join(root, prefix), { withFileTypes: true })) {
    const relative = prefix === '' ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory()) out.push(...listFiles(root, relative));
    else out.push(relative);
  }
  return out.sort();
}

test('src/wire/generated matches a fresh proto-loader-gen-types run over proto/ (run `npm run gen:proto` if not)', () => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'meshca-gen-proto-'));
  try {
    const fresh = path.join(scratch, 'generated');
    generateProtoTypes(fresh);
    const committed = path.join(REPO_ROOT, GENERATED_DIR);
    const freshFiles = listFiles(fresh);
    // A generator that silently produced nothing must not pass against an empty checkout.
    assert.ok(freshFiles.includes('ca.ts') && freshFiles.includes('sds.ts'), `generator output: ${freshFiles.join(', ')}`);
    assert.deepEqual(listFiles(committed), freshFiles, 'generated file set differs: run `npm run gen:proto` and commit');
    for (const file of freshFiles) {
      const want = readFileSync(path.join(fresh, file));
      const have = readFileSync(path.join(committed, file));
      assert.ok(have.equals(want), `${GENERATED_DIR}/${file} is stale: run \`npm run gen:proto\` and commit`);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});
