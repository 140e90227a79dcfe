/**
 * Broken files at start-up of the real `meshca ca`: one clear line on stderr, exit 1, no key material in the
 * output, and nothing regenerated or left half-written. Covered here: an expired intermediate in cacerts,
 * unreadable files (mode 000 read by an unprivileged user — the tests run as root, which reads anything, so the
 * CA is started as uid 65534 — and a directory where a key file should be), and a state directory on a full disk
 * (a 16 KiB tmpfs, filled). A key for another certificate, a non-CA signing certificate and a root that does not
 * anchor the chain are covered by test/cacerts.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, cpSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanEnv, createCertificate, caClient, opensslKeyAndCsr, startCa } from './ca-helpers.js';
import { expectStartFailure, istioFiles, makeRoot, makeSubCa, writeFiles } from './keysource-helpers.js';
import { CLI, makeTempDir, REPO_ROOT } from './support/process.js';
import { DEV_ISSUER, DevTokenIssuer } from '../src/authn/dev-issuer.js';

const NOBODY = 65534;

/** True when every directory from / down to `dir` lets other users through (o+x), i.e. uid 65534 can reach it. */
function traversableByOthers(dir: string): boolean {
  for (let current = dir; ; current = path.dirname(current)) {
    if ((statSync(current).mode & 0o001) === 0) return false;
    if (current === path.dirname(current)) return true;
  }
}

/**
 * The built CLI where an unprivileged user can run it. The repository may sit in a private directory (a clone in
 * `mktemp -d` is mode 0700), which uid 65534 cannot enter: then every refusal would be "cannot find module", not
 * the file error under test. So dist/, proto/ and package.json are copied to a world-traversable directory, and
 * node_modules is linked there (or copied, when its real path is private too). The same goes for the node binary:
 * a Node.js 24 from scripts/node24.sh lives under ~/.cache, in root's private home.
 */
function unprivilegedCli(base: string): { cli: string; node: string } {
  const root = path.join(base, 'cli-copy');
  mkdirSync(root, { mode: 0o755 });
  const realNode = realpathSync(process.execPath);
  const node = traversableByOthers(realNode) ? realNode : path.join(root, 'node');
  if (node !== realNode) cpSync(realNode, node);
  for (const entry of ['dist', 'proto', 'package.json']) cpSync(path.join(REPO_ROOT, entry), path.join(root, entry), { recursive: true });
  const modules = realpathSync(path.join(REPO_ROOT, 'node_modules'));
  const target = path.join(root, 'node_modules');
  if (traversableByOthers(modules)) symlinkSync(modules, target);
  else cpSync(modules, target, { recursive: true });
  // Readable by all (the copy keeps the repository's modes, which a private clone may have narrowed).
  const opened = spawnSync('chmod', ['-R', 'a+rX', root], { encoding: 'utf8' });
  assert.equal(opened.status, 0, opened.stderr);
  return { cli: path.join(root, path.relative(REPO_ROOT, CLI)), node };
}

let unprivileged: { cli: string; node: string } | undefined;

/** Runs `meshca ca` as an unprivileged user until it exits; resolves with the exit code and stderr. */
function runCaAs(uid: number, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stderr: string; stdout: string }> {
  assert.ok(unprivileged, 'unprivilegedCli() runs in before()');
  const { cli, node } = unprivileged;
  return new Promise((resolve, reject) => {
    const child = spawn(node, [cli, 'ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', ...args], {
      cwd: path.dirname(path.dirname(cli)),
      env: cleanEnv(env),
      uid,
      gid: uid,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, stdout });
    });
  });
}

function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(readdirSync(dir).map((name) => [name, readFileSync(path.join(dir, name), 'latin1')]));
}

function assertOneLine(result: { code: number | null; stderr: string }, expected: string): void {
  assert.equal(result.code, 1, result.stderr);
  const lines = result.stderr.split('\n').filter((line) => line.startsWith('meshca: '));
  assert.deepEqual(lines, [`meshca: ${expected}`], result.stderr);
  assert.doesNotMatch(result.stderr, /PRIVATE KEY/);
}

describe('broken files at start-up', () => {
  const temp = makeTempDir('meshca-security-files-');
  let jwtRule: string;
  const mounts: string[] = [];

  before(async () => {
    // The unprivileged CA must be able to reach its files: open the temp directory for traversal.
    chmodSync(temp.dir, 0o711);
    assert.ok(traversableByOthers(temp.dir), `${temp.dir} must be reachable by uid ${NOBODY}: TMPDIR sits in a private directory`);
    unprivileged = unprivilegedCli(temp.dir);
    const issuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'issuer'));
    chmodSync(path.join(temp.dir, 'issuer'), 0o755);
    jwtRule = JSON.stringify({ issuer: DEV_ISSUER, jwks_file: issuer.jwksPath, audiences: ['istio-ca'] });
  });

  // One self-signed state, made by a real `meshca ca` that then stopped, copied wherever a test needs an existing CA.
  let selfSignedTemplate: Promise<string> | undefined;
  async function copySelfSignedState(dir: string): Promise<void> {
    selfSignedTemplate ??= (async () => {
      const template = path.join(temp.dir, 'self-signed-template');
      const first = await startCa(template, [], { JWT_RULE: jwtRule });
      await first.proc.stop();
      return template;
    })();
    const template = await selfSignedTemplate;
    mkdirSync(dir, { mode: 0o700 });
    for (const name of readdirSync(template)) copyFileSync(path.join(template, name), path.join(dir, name));
  }

  after(() => {
    for (const mount of mounts) spawnSync('umount', [mount]);
    temp.cleanup();
  });

  test('cacerts with an expired intermediate between the signing CA and the root', async () => {
    const now = Date.now();
    const root = await makeRoot('files root', 'ec');
    const expired = await makeSubCa('expired intermediate', 'ec', root, { notBefore: new Date(now - 10 * 3600_000), notAfter: new Date(now - 3600_000) });
    const signing = await makeSubCa('signing CA', 'ec', expired, { notBefore: new Date(now - 5 * 3600_000), notAfter: new Date(now + 3600_000) });
    const dir = path.join(temp.dir, 'expired-intermediate');
    await writeFiles(dir, istioFiles({ root, intermediate: expired, signing }));
    const result = await expectStartFailure(['--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'expired-intermediate-state')], {
      ROOT_CA_DIR: dir,
      JWT_RULE: jwtRule,
    });
    assertOneLine(
      { code: result.code, stderr: `${result.stderr}\n` },
      `${dir}/cert-chain.pem: chain certificate "CN=expired intermediate" (serial ${new X509Certificate(expired.pem).serialNumber.toLowerCase()}) expired at ${expired.cert.notAfter.toISOString()}`,
    );
  });

  test('unreadable files: a mode-000 cacerts key or self-signed key read by an unprivileged CA, and a directory as the key', async () => {
    const root = await makeRoot('unreadable root', 'ec');
    const signing = await makeSubCa('unreadable signing CA', 'ec', root);
    const cacerts = path.join(temp.dir, 'unreadable-cacerts');
    await writeFiles(cacerts, istioFiles({ root, signing }));
    chmodSync(cacerts, 0o755);
    chmodSync(path.join(cacerts, 'ca-key.pem'), 0o000);
    const nobodyState = path.join(temp.dir, 'nobody-state');
    mkdirSync(nobodyState, { mode: 0o700 });
    chownSync(nobodyState, NOBODY, NOBODY);
    const asNobody = await runCaAs(NOBODY, ['--ca-source', 'cacerts', '--state-dir', nobodyState], { ROOT_CA_DIR: cacerts, JWT_RULE: jwtRule });
    const key = path.join(cacerts, 'ca-key.pem');
    assertOneLine(asNobody, `${key} cannot be read: EACCES: permission denied, open '${key}'`);

    // A self-signed root whose key the CA's user cannot read: refused, and never replaced by a new root.
    const selfSigned = path.join(temp.dir, 'self-signed-state');
    await copySelfSignedState(selfSigned);
    chmodSync(path.join(selfSigned, 'ca-key.pem'), 0o000);
    chownSync(selfSigned, NOBODY, NOBODY);
    const before = snapshot(selfSigned);
    const refused = await runCaAs(NOBODY, ['--state-dir', selfSigned, '--ca-key-type', 'ec-p256'], { JWT_RULE: jwtRule });
    const selfKey = path.join(selfSigned, 'ca-key.pem');
    assertOneLine(refused, `cannot read ${selfKey}: EACCES: permission denied, open '${selfKey}'`);
    assert.deepEqual(snapshot(selfSigned), before, 'nothing regenerated or added');

    // As root, a directory where the key should be.
    chmodSync(key, 0o600);
    rmSync(key);
    mkdirSync(key);
    const directory = await expectStartFailure(['--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'directory-state')], { ROOT_CA_DIR: cacerts, JWT_RULE: jwtRule });
    assertOneLine({ code: directory.code, stderr: `${directory.stderr}\n` }, `${key} cannot be read: EISDIR: illegal operation on a directory, read`);
  });

  test('a state directory on a full disk: a clear refusal with nothing half-written; an existing CA still starts', async (t) => {
    const disk = path.join(temp.dir, 'tiny-disk');
    mkdirSync(disk);
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', disk], { encoding: 'utf8' });
    if (mounted.status !== 0) {
      // No tmpfs here (not root, or no CAP_SYS_ADMIN): an unwritable state directory takes the same path.
      t.diagnostic(`tmpfs not mountable (${mounted.stderr.trim()}); checking an unwritable state directory instead`);
      chmodSync(disk, 0o555);
      const result = await runCaAs(NOBODY, ['--state-dir', path.join(disk, 'state'), '--ca-key-type', 'ec-p256'], { JWT_RULE: jwtRule });
      assert.equal(result.code, 1);
      assert.match(result.stderr, /^meshca: cannot use the CA state directory .*EACCES.*; give the CA's user access to it or set --state-dir\n$/);
      return;
    }
    mounts.push(disk);
    // An existing CA moved onto the disk before it fills up.
    const moved = path.join(disk, 'existing');
    await copySelfSignedState(moved);
    // Fill the disk.
    let filled = 0;
    try {
      for (;;) {
        writeFileSync(path.join(disk, `filler-${filled}`), Buffer.alloc(4096));
        filled++;
      }
    } catch (error) {
      assert.equal((error as NodeJS.ErrnoException).code, 'ENOSPC');
    }

    const fresh = path.join(disk, 'fresh');
    const result = await expectStartFailure(['--state-dir', fresh, '--ca-key-type', 'ec-p256'], { JWT_RULE: jwtRule });
    assertOneLine(
      { code: result.code, stderr: `${result.stderr}\n` },
      `cannot write to the CA state directory ${fresh}: no space left on the device (ENOSPC); free some space or set --state-dir to a directory with room`,
    );
    assert.deepEqual(readdirSync(fresh), [], 'no partial key or temp file is left behind');

    const before = snapshot(moved);
    const ca = await startCa(moved, [], { JWT_RULE: jwtRule });
    try {
      assert.equal(ca.proc.records.some((r) => r.msg === 'loaded the self-signed root CA'), true);
      const token = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'issuer')).then((i) =>
        i.mint({ namespace: 'default', serviceAccount: 'full-disk', audiences: ['istio-ca'], ttlSeconds: 600 }),
      );
      const client = caClient(ca.grpcAddress, ca.rootPem);
      try {
        const issued = await createCertificate(client, { csr: opensslKeyAndCsr(temp.dir, 'full-disk').csrPem, token });
        assert.ok(issued.ok, JSON.stringify(issued));
      } finally {
        client.close();
      }
    } finally {
      await ca.proc.stop();
    }
    assert.deepEqual(snapshot(moved), before, 'the CA on a full disk signs without rewriting its state');
  });
});
