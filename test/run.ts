/**
 * `npm test`'s runner: every test/*.test.ts file, in separate processes, two at a time (the machine has two
 * cores), longest files first. `node --test` on a glob sorts the files by name, so a long file that sorts last
 * (vault.test.ts) starts when the other worker is idle and bounds the whole run; starting the long files first
 * lets the short ones fill the gaps. The order only changes when a file starts, never what it proves.
 * Usage: node --import tsx test/run.ts [file ...]   (no files: all of test/*.test.ts)
 */
import { readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from 'node:test';
import { tap } from 'node:test/reporters';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * The longest files, longest first (wall seconds on the 2-core machine, measured one file at a time). A file
 * missing here runs after these, in name order; the list needs no upkeep to be correct, only to stay fast.
 */
const LONGEST_FIRST = [
  'rotation.test.ts',
  'agent-faults.test.ts',
  'cacerts.test.ts',
  'vault.test.ts',
  'ca-workers.test.ts',
  'ca-ops.test.ts',
  'faults-ca.test.ts',
  'impersonation.test.ts',
  'identity-trust.test.ts',
  'sds-abuse.test.ts',
  'bench-smoke.test.ts',
  'agent-e2e.test.ts',
  'agent-rotation.test.ts',
  'ca-server.test.ts',
  'server-identity.test.ts',
  'kube-store.test.ts',
  'security-files.test.ts',
  'manifests.test.ts',
  'ca-dev.test.ts',
  'agent-security.test.ts',
  'authn.test.ts',
  'standins.test.ts',
  'cacerts-cli.test.ts',
  'cli.test.ts',
  'agent-rotation-e2e.test.ts',
];

function ordered(files: string[]): string[] {
  const rank = (file: string): number => {
    const at = LONGEST_FIRST.indexOf(path.basename(file));
    return at === -1 ? LONGEST_FIRST.length : at;
  };
  return [...files].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

const given = process.argv.slice(2);
const files = given.length > 0 ? given.map((f) => path.resolve(f)) : readdirSync(here).filter((f) => f.endsWith('.test.ts')).map((f) => path.join(here, f));

const stream = run({ files: ordered(files), concurrency: 2 });
stream.on('test:fail', () => {
  process.exitCode = 1;
});
stream.compose(tap).pipe(process.stdout);
