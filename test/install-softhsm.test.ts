/**
 * scripts/install-softhsm.sh (npm test's `pretest`), run by bash as npm runs it, with the system around it replaced:
 * PATH holds only a temp bin directory with stand-ins for apt-get, apt-cache, dpkg-query and id (each records how it
 * was called) and, per case, softhsm2-util and the build tools. Nothing is installed or removed on this machine; the
 * real apt path is what CI exercises on a fresh Debian machine.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { makeTempDir, REPO_ROOT } from './support/process.js';

const SCRIPT = path.join(REPO_ROOT, 'scripts/install-softhsm.sh');

function systemTool(name: string): string {
  const found = ['/usr/bin', '/bin'].map((dir) => path.join(dir, name)).find((file) => existsSync(file));
  assert.ok(found, `${name} not found in /usr/bin or /bin`);
  return found;
}

const BASH = systemTool('bash');
const CHMOD = systemTool('chmod');

interface Machine {
  uid: number;
  /** softhsm2-util on PATH before the script runs. */
  installed: boolean;
  /** apt-cache knows softhsm2 before an apt-get update. */
  listsKnowIt: boolean;
  installFails: boolean;
  buildTools: string[];
}

interface Run {
  status: number | null;
  stdout: string;
  stderrLines: string[];
  /** One line per apt-get call: DEBIAN_FRONTEND, then the arguments. */
  aptGet: string[];
}

const temp = makeTempDir('meshca-install-softhsm-');
after(temp.cleanup);
let runs = 0;

function executable(file: string, body: string): void {
  writeFileSync(file, `#!${BASH}\n${body}\n`);
  chmodSync(file, 0o755);
}

function runScript(machine: Partial<Machine>, env: Record<string, string> = {}): Run {
  const m: Machine = { uid: 0, installed: false, listsKnowIt: true, installFails: false, buildTools: ['python3', 'make', 'g++'], ...machine };
  const dir = path.join(temp.dir, String(runs++));
  const bin = path.join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  const module = path.join(dir, 'libsofthsm2.so');
  writeFileSync(module, '');
  const calls = path.join(dir, 'apt-get.calls');
  writeFileSync(calls, '');
  const util = path.join(bin, 'softhsm2-util');
  for (const tool of ['grep', 'mktemp', 'rm', 'cat']) executable(path.join(bin, tool), `exec ${systemTool(tool)} "$@"`);
  for (const tool of m.buildTools) executable(path.join(bin, tool), 'exit 0');
  if (m.installed) executable(util, 'exit 0');
  executable(path.join(bin, 'id'), `[ "$1" = -u ] && echo ${m.uid}`);
  executable(path.join(bin, 'dpkg-query'), 'echo 2.6.1-2');
  executable(path.join(bin, 'apt-cache'), `[ ${m.listsKnowIt ? 1 : 0} = 1 ] || [ -e ${dir}/updated ] || { echo "E: No packages found" >&2; exit 100; }`);
  executable(
    path.join(bin, 'apt-get'),
    [
      `echo "\${DEBIAN_FRONTEND:-unset} $*" >> ${calls}`,
      'case " $* " in',
      `  *" update "*) : > ${dir}/updated; echo "Reading package lists..." ;;`,
      `  *" install "*) ${m.installFails ? 'echo "E: Unable to locate package softhsm2" >&2; exit 100' : `echo "Setting up softhsm2 (2.6.1-2) ..."; printf '#!${BASH}\\nexit 0\\n' > ${util}; ${CHMOD} 755 ${util}`} ;;`,
      'esac',
    ].join('\n'),
  );
  const result = spawnSync(BASH, [SCRIPT], { encoding: 'utf8', env: { PATH: bin, MESHCA_SOFTHSM_MODULE: module, ...env } });
  return {
    status: result.status,
    stdout: result.stdout,
    stderrLines: result.stderr.split('\n').filter(Boolean),
    aptGet: readFileSync(calls, 'utf8').split('\n').filter(Boolean),
  };
}

describe('scripts/install-softhsm.sh', () => {
  it('present: prints the module path and nothing else, installs nothing', () => {
    const run = runScript({ installed: true });
    assert.equal(run.status, 0);
    assert.match(run.stdout, /\/libsofthsm2\.so\n$/);
    assert.deepEqual(run.stderrLines, []);
    assert.deepEqual(run.aptGet, []);
  });

  it('reports missing build tools in one line with the command, and installs none of them', () => {
    const run = runScript({ installed: true, buildTools: ['python3'] });
    assert.equal(run.status, 0);
    assert.deepEqual(run.stderrLines, [
      'install-softhsm: missing make, g++: npm ci needs python3, make and g++ to build the native addon pkcs11js; install them with: apt-get install -y python3 make g++',
    ]);
    assert.deepEqual(run.aptGet, []);
    const asUser = runScript({ installed: true, uid: 1000, buildTools: [] });
    assert.match(asUser.stderrLines.join('\n'), /^install-softhsm: missing python3, make, g\+\+: .* sudo apt-get install -y python3 make g\+\+$/);
  });

  it('missing, not root: exits 1 with the exact command, touches nothing', () => {
    const run = runScript({ uid: 1000 });
    assert.equal(run.status, 1);
    assert.equal(run.stdout, '');
    assert.deepEqual(run.stderrLines, [
      'install-softhsm: SoftHSM2 (softhsm2-util, libsofthsm2.so) is missing and installing it needs root; run: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y softhsm2',
    ]);
    assert.deepEqual(run.aptGet, []);
  });

  it('missing, root, fresh lists: apt-get update, then a non-interactive install; one line on stderr', () => {
    const run = runScript({ listsKnowIt: false });
    assert.equal(run.status, 0, run.stderrLines.join('\n'));
    assert.match(run.stdout, /\/libsofthsm2\.so\n$/);
    assert.deepEqual(run.aptGet, [
      'noninteractive -q -o DPkg::Lock::Timeout=300 update',
      'noninteractive -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends softhsm2',
    ]);
    assert.equal(run.stderrLines.length, 1, run.stderrLines.join('\n'));
    assert.match(run.stderrLines[0]!, /^install-softhsm: installed softhsm2 2\.6\.1-2 with apt-get: \S+\/softhsm2-util, module \S+\/libsofthsm2\.so$/);
  });

  it('missing, root, lists that know it: no update', () => {
    const run = runScript({ listsKnowIt: true });
    assert.equal(run.status, 0);
    assert.deepEqual(run.aptGet, ['noninteractive -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends softhsm2']);
  });

  it('install fails: updates once, tries again, then exits 1 showing apt-get output', () => {
    const run = runScript({ installFails: true });
    assert.equal(run.status, 1);
    assert.equal(run.stdout, '');
    assert.deepEqual(run.aptGet.map((line) => line.split(' ').at(-1)), ['softhsm2', 'update', 'softhsm2']);
    assert.equal(run.stderrLines[0], "install-softhsm: apt-get install -y softhsm2 failed, also after apt-get update; apt-get's output follows");
    assert.ok(run.stderrLines.includes('E: Unable to locate package softhsm2'));
  });

  it('MESHCA_SOFTHSM_MODULE naming no file: exits 1 saying so', () => {
    const run = runScript({ installed: true }, { MESHCA_SOFTHSM_MODULE: '/nonexistent/libsofthsm2.so' });
    assert.equal(run.status, 1);
    assert.deepEqual(run.stderrLines, [
      'install-softhsm: MESHCA_SOFTHSM_MODULE=/nonexistent/libsofthsm2.so is not a file; unset it to search the usual places, or point it at libsofthsm2.so',
    ]);
    assert.deepEqual(run.aptGet, []);
  });
});
