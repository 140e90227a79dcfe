/**
 * `npm test`'s runner: every test/*.test.ts file, in separate processes, three at a time, longest files first.
 * Three on the two-core machine because several files spend seconds waiting on real child processes and
 * clocks; a third file keeps both cores busy then (measured: 2 at a time 193 s, 3 at a time 160 s, 4 at a
 * time 163 s). MESHCA_TEST_CONCURRENCY overrides it. `node --test` on a glob sorts the files by name, so a long file that sorts last
 * (vault.test.ts) starts when the other worker is idle and bounds the whole run; starting the long files first
 * lets the short ones fill the gaps. The order only changes when a file starts, never what it proves.
 * `npm test` runs it compiled (.test-build/test/run.js, from `npm run build:tests`): a test process under tsx
 * spends more CPU in its loader hooks (one round trip per module, thousands for @kubernetes/client-node) than
 * most tests spend testing. Run from source it takes the .ts files, as `fuzz` does.
 * Usage: node .test-build/test/run.js [test/x.test.ts ...]   or   node --import tsx test/run.ts [file ...]
 */
import { readdirSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from 'node:test';
import { tap } from 'node:test/reporters';

const self = fileURLToPath(import.meta.url);
const here = path.dirname(self);
/** '.js' when compiled, '.ts' under tsx: the test files are taken in the same form as this runner. */
const ext = path.extname(self);

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
  'pkcs11-ca.test.ts',
  'security-files.test.ts',
  'manifests.test.ts',
  'ca-dev.test.ts',
  'federation-e2e.test.ts',
  'agent-security.test.ts',
  'authn.test.ts',
  'standins.test.ts',
  'cacerts-cli.test.ts',
  'cli.test.ts',
  'agent-rotation-e2e.test.ts',
];

function ordered(files: string[]): string[] {
  const rank = (file: string): number => {
    const at = LONGEST_FIRST.indexOf(path.basename(file, ext) + '.ts');
    return at === -1 ? LONGEST_FIRST.length : at;
  };
  return [...files].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

const given = process.argv.slice(2);
/** A test named by its source path (test/x.test.ts) runs in this runner's form: compiled beside it, or as given. */
function inThisForm(file: string): string {
  return ext === '.js' && file.endsWith('.ts') ? path.join(here, path.basename(file).replace(/\.ts$/, '.js')) : path.resolve(file);
}
const files = given.length > 0 ? given.map(inThisForm) : readdirSync(here).filter((f) => f.endsWith(`.test${ext}`)).map((f) => path.join(here, f));

const stream = run({ files: ordered(files), concurrency: Number(process.env.MESHCA_TEST_CONCURRENCY ?? 3) });
stream.on('test:fail', () => {
  process.exitCode = 1;
});
stream.compose(tap).pipe(process.stdout);
