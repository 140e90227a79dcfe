/**
 * `file-cert:` / `file-root:` resources (SECURITY.md: files the agent reads for a client). A client names a path;
 * the agent must read only regular files, of at most 1 MiB, inside the allowed directories, from the descriptor
 * it checked, and never wait on a FIFO or a device:
 *  - readFileResource on its own: /dev/zero, a FIFO nobody writes to, a 2 MiB file (and exactly 1 MiB), symlinks
 *    out of the allowed directory (as the file and as a parent directory), a Kubernetes Secret volume layout
 *    (`cert.pem -> ..data/cert.pem`, `..data -> ..2024_…`), and a path swapped under the reader;
 *  - the real agent process: five FIFOs requested at once, then a workload certificate (key generated on the spot),
 *    /healthz/ready and SIGTERM all still work;
 *  - sidecar mode (no token needed): only Istio's certificate directories by default, others when configured.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { readAgentConfig, DEFAULT_SIDECAR_FILE_RESOURCE_DIRS } from '../src/config/agent.js';
import { SdsError } from '../src/agent/errors.js';
import { MAX_FILE_RESOURCE_BYTES, readFileResource } from '../src/agent/files.js';
import { certificateToPem, createCaCertificate, generateKeyPairFor } from '../src/pki/index.js';
import { startCa, type RunningCa } from './ca-helpers.js';
import { decodeSecret, RawSotwStream, startAgentProcess, startTestAgent, tempDir, type AgentProcess } from './agent-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';

function rootPem(name: string): string {
  const { privateKey } = generateKeyPairFor('ec-p256');
  return certificateToPem(createCaCertificate({ subject: { commonName: name }, subjectKey: privateKey, notAfter: new Date(Date.now() + 86400_000) }));
}

/** The SdsError a read is refused with (fails the test when the read succeeds or throws something else). */
async function refusal(read: Promise<unknown>): Promise<SdsError> {
  try {
    await read;
  } catch (error) {
    assert.ok(error instanceof SdsError, `an SdsError, got ${String(error)}`);
    return error;
  }
  assert.fail('the read was expected to be refused');
}

/** A hang is the failure being tested for: fail with `what` after a generous bound instead of waiting forever. */
async function settlesWithin<T>(promise: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms / 1000} s: the agent is waiting on the FIFO`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function mkfifo(file: string): void {
  execFileSync('mkfifo', [file]);
}

/** Kubernetes' Secret volume layout: files are symlinks through `..data` to a timestamped directory. */
function kubernetesSecretMount(mount: string, files: Record<string, string>, version = '..2024_01_01_00_00_00.000000001'): void {
  mkdirSync(path.join(mount, version), { recursive: true });
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(mount, version, name), content);
  symlinkSync(version, path.join(mount, '..data'));
  for (const name of Object.keys(files)) symlinkSync(path.join('..data', name), path.join(mount, name));
}

describe('reading a file resource', () => {
  const cleanups: (() => void)[] = [];
  let allowed: string;
  let outside: string;

  before(() => {
    const a = tempDir('meshca-files-allowed-');
    const o = tempDir('meshca-files-outside-');
    cleanups.push(a.cleanup, o.cleanup);
    allowed = a.dir;
    outside = o.dir;
    writeFileSync(path.join(outside, 'secret-key.pem'), 'THE CA KEY\n');
  });

  after(() => cleanups.forEach((c) => c()));

  it('reads a regular file inside an allowed directory', async () => {
    const pem = rootPem('happy');
    writeFileSync(path.join(allowed, 'root.pem'), pem);
    const data = await readFileResource(path.join(allowed, 'root.pem'), { allowedDirs: [allowed] });
    assert.equal(data.toString(), pem);
  });

  it('refuses /dev/zero as a character device, without reading it', async () => {
    const error = await refusal(readFileResource('/dev/zero', { allowedDirs: ['/dev'] }));
    assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(error.message, '/dev/zero is a character device, not a regular file; file-cert:/file-root: serve regular files only');
    // Even where any path is allowed (the operator's own CA root setting), a device is never read.
    assert.equal((await refusal(readFileResource('/dev/zero', { allowedDirs: null }))).code, grpc.status.FAILED_PRECONDITION);
  });

  it('refuses a FIFO nobody writes to, at once, and stays able to read other files meanwhile', async () => {
    const fifos = [1, 2, 3, 4, 5].map((i) => path.join(allowed, `fifo-${i}.pem`));
    fifos.forEach(mkfifo);
    // More FIFOs than libuv has threads (4): a blocking open on each would leave no thread for the read below.
    const errors = await settlesWithin(Promise.all(fifos.map((fifo) => refusal(readFileResource(fifo, { allowedDirs: [allowed] })))), 'reading five FIFOs');
    for (const [i, error] of errors.entries()) {
      assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
      assert.equal(error.message, `${fifos[i]} is a FIFO, not a regular file; file-cert:/file-root: serve regular files only`);
    }
    writeFileSync(path.join(allowed, 'after-fifos.pem'), 'ok');
    assert.equal((await readFileResource(path.join(allowed, 'after-fifos.pem'), { allowedDirs: [allowed] })).toString(), 'ok');
  });

  it('refuses a 2 MiB file with its size and the limit, and reads one of exactly 1 MiB', async () => {
    assert.equal(MAX_FILE_RESOURCE_BYTES, 1024 * 1024);
    const big = path.join(allowed, 'big.pem');
    writeFileSync(big, Buffer.alloc(2 * 1024 * 1024, 0x41));
    const error = await refusal(readFileResource(big, { allowedDirs: [allowed] }));
    assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
    assert.match(error.message, /big\.pem is 2097152 bytes, more than the 1048576-byte \(1 MiB\) limit for file-cert:\/file-root: files/);
    const limit = path.join(allowed, 'limit.pem');
    writeFileSync(limit, Buffer.alloc(MAX_FILE_RESOURCE_BYTES, 0x42));
    assert.equal((await readFileResource(limit, { allowedDirs: [allowed] })).length, MAX_FILE_RESOURCE_BYTES);
  });

  it('refuses a path outside the allowed directories, and symlinks (file or parent directory) that lead out of them', async () => {
    const secret = path.join(outside, 'secret-key.pem');
    const direct = await refusal(readFileResource(secret, { allowedDirs: [allowed] }));
    assert.equal(direct.code, grpc.status.PERMISSION_DENIED);
    assert.match(direct.message, /secret-key\.pem is outside the directories allowed by --file-resource-dirs; allowed: /);

    const fileLink = path.join(allowed, 'link-to-secret.pem');
    symlinkSync(secret, fileLink);
    const viaFile = await refusal(readFileResource(fileLink, { allowedDirs: [allowed] }));
    assert.equal(viaFile.code, grpc.status.PERMISSION_DENIED);
    assert.match(viaFile.message, /link-to-secret\.pem is outside the directories allowed by --file-resource-dirs \(it leads to .*secret-key\.pem\)/);

    const dirLink = path.join(allowed, 'linked-dir');
    symlinkSync(outside, dirLink);
    const viaDir = await refusal(readFileResource(path.join(dirLink, 'secret-key.pem'), { allowedDirs: [allowed] }));
    assert.equal(viaDir.code, grpc.status.PERMISSION_DENIED);
  });

  it('reads through a Kubernetes Secret volume (cert.pem -> ..data/cert.pem, ..data -> ..2024_…/), before and after an update', async () => {
    const mount = path.join(allowed, 'k8s-secret');
    kubernetesSecretMount(mount, { 'cert.pem': 'v1 cert', 'key.pem': 'v1 key' });
    assert.equal((await readFileResource(path.join(mount, 'cert.pem'), { allowedDirs: [mount] })).toString(), 'v1 cert');
    // The kubelet's update: a new timestamped directory, a new ..data link renamed over the old one.
    mkdirSync(path.join(mount, '..2024_01_02_00_00_00.000000002'));
    writeFileSync(path.join(mount, '..2024_01_02_00_00_00.000000002', 'cert.pem'), 'v2 cert');
    symlinkSync('..2024_01_02_00_00_00.000000002', path.join(mount, '..data_tmp'));
    renameSync(path.join(mount, '..data_tmp'), path.join(mount, '..data'));
    rmSync(path.join(mount, '..2024_01_01_00_00_00.000000001'), { recursive: true });
    assert.equal((await readFileResource(path.join(mount, 'cert.pem'), { allowedDirs: [mount] })).toString(), 'v2 cert');
  });

  it('never returns a file outside the allowed directory while the path is swapped under it (file and parent directory)', async () => {
    const race = path.join(allowed, 'race');
    mkdirSync(race);
    const inside = path.join(race, 'real');
    mkdirSync(inside);
    writeFileSync(path.join(inside, 'cert.pem'), 'inside');
    const target = path.join(race, 'cert.pem');
    writeFileSync(target, 'inside');
    // What the swapped parent directory would lead to: a file of the same name, outside.
    writeFileSync(path.join(outside, 'cert.pem'), 'outside');
    const swapped = path.join(race, 'swapped');
    const outcomes = { inside: 0, refused: 0 };
    let swapping = true;
    // Flip both the file and a parent directory between an allowed target and a link out, as fast as possible.
    const flipper = (async () => {
      let n = 0;
      while (swapping) {
        if (n % 2 === 0) {
          symlinkSync(path.join(outside, 'secret-key.pem'), `${target}.tmp`);
          renameSync(`${target}.tmp`, target);
          renameSync(inside, `${inside}.away`);
          symlinkSync(outside, swapped);
          renameSync(swapped, inside);
        } else {
          writeFileSync(`${target}.tmp`, 'inside');
          renameSync(`${target}.tmp`, target);
          rmSync(inside);
          renameSync(`${inside}.away`, inside);
        }
        n++;
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    try {
      for (let round = 0; round < 300; round++) {
      const reads = [target, path.join(inside, 'cert.pem')].map((file) =>
        readFileResource(file, { allowedDirs: [race] }).then(
          (data) => {
            assert.equal(data.toString(), 'inside', `${file} must never yield the file outside`);
            outcomes.inside++;
          },
          (error: unknown) => {
            assert.ok(error instanceof SdsError, String(error));
            outcomes.refused++;
          },
        ),
      );
      await Promise.all(reads);
      }
    } finally {
      swapping = false;
      await flipper;
    }
    assert.equal(outcomes.inside + outcomes.refused, 600);
    assert.ok(outcomes.refused > 0, 'the swaps were seen at least once');
  });
});

describe('the agent process with FIFOs requested', () => {
  let kube: KubeStandin;
  let ca: RunningCa;
  let agent: AgentProcess;
  const cleanups: (() => void)[] = [];
  let filesDir: string;

  before(async () => {
    kube = await startKubeStandin();
    const caState = tempDir('meshca-files-ca-');
    cleanups.push(caState.cleanup);
    ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
    const files = tempDir('meshca-files-fifo-');
    cleanups.push(files.cleanup);
    filesDir = files.dir;
    // No pre-generated keys: the certificate below needs a key generated on libuv's thread pool after the FIFOs.
    agent = await startAgentProcess({ caAddress: ca.grpcAddress, caRootPem: ca.rootPem, args: ['--file-resource-dirs', filesDir, '--key-pool-size', '0'] });
  });

  after(async () => {
    await agent?.stop();
    await ca?.proc.stop();
    await kube?.close();
    cleanups.forEach((c) => c());
  });

  it('refuses five FIFOs with FAILED_PRECONDITION, then still issues a certificate, answers /healthz/ready and exits on SIGTERM', async () => {
    const token = await kube.mintToken({ namespace: 'files', serviceAccount: 'fifo' });
    const fifos = [1, 2, 3, 4, 5].map((i) => path.join(filesDir, `fifo-${i}`));
    fifos.forEach(mkfifo);
    const streams = fifos.map((fifo) => {
      const stream = new RawSotwStream(agent.client, token);
      stream.subscribe([`file-root:${fifo}`]);
      return stream;
    });
    const errors = await settlesWithin(Promise.all(streams.map((s) => s.ended())), 'five file-root: streams on FIFOs');
    for (const [i, error] of errors.entries()) {
      assert.equal(error?.code, grpc.status.FAILED_PRECONDITION);
      assert.match(error!.details, new RegExp(`${fifos[i]} is a FIFO, not a regular file`));
    }
    const stream = new RawSotwStream(agent.client, token);
    stream.subscribe(['default']);
    assert.equal(decodeSecret((await stream.next(20_000)).resources[0]!).spiffeId, 'spiffe://cluster.local/ns/files/sa/fifo');
    stream.close();
    const ready = await fetch(`${agent.statusUrl}/healthz/ready`);
    assert.equal(ready.status, 200);
    // A graceful exit on SIGTERM: exit code 0, not the SIGKILL that stop() falls back to after 5 s.
    assert.equal(await agent.proc.stop('SIGTERM', 5000), 0);
  });
});

describe('sidecar mode file directories', () => {
  const cleanups: (() => void)[] = [];
  after(() => cleanups.forEach((c) => c()));

  it("defaults to Istio's certificate directories, not every path, and takes --file-resource-dirs / MESHCA_FILE_RESOURCE_DIRS", () => {
    assert.deepEqual(readAgentConfig({ mode: 'sidecar' }, {}).fileResourceDirs, [
      '/etc/certs',
      '/etc/istio',
      '/var/run/secrets/istio',
      '/var/run/secrets/workload-spiffe-credentials',
    ]);
    assert.deepEqual(DEFAULT_SIDECAR_FILE_RESOURCE_DIRS, readAgentConfig({ mode: 'sidecar' }, {}).fileResourceDirs);
    assert.deepEqual(readAgentConfig({ mode: 'sidecar' }, { MESHCA_FILE_RESOURCE_DIRS: '/a, /b' }).fileResourceDirs, ['/a', '/b']);
    assert.deepEqual(readAgentConfig({ mode: 'sidecar', fileResourceDirs: '/c' }, { MESHCA_FILE_RESOURCE_DIRS: '/a' }).fileResourceDirs, ['/c']);
    assert.deepEqual(readAgentConfig({}, {}).fileResourceDirs, [], 'node mode: none, as before');
  });

  it('refuses a tokenless request for a file outside the default directories, and serves a Kubernetes Secret mount once allowed', async () => {
    const files = tempDir('meshca-files-sidecar-');
    cleanups.push(files.cleanup);
    const tokenFile = path.join(files.dir, 'token');
    writeFileSync(tokenFile, 'tok-sidecar\n');
    const mount = path.join(files.dir, 'istio-certs');
    const pem = rootPem('mounted');
    kubernetesSecretMount(mount, { 'root-cert.pem': pem });

    const defaults = await startTestAgent({ flags: { mode: 'sidecar', tokenFile } });
    try {
      defaults.ca.addWorkload('tok-sidecar', 'shop', 'side');
      for (const file of [tokenFile, path.join(mount, 'root-cert.pem')]) {
        const stream = new RawSotwStream(defaults.client, undefined); // no token: the pod's own, as sidecar mode allows
        stream.subscribe([`file-root:${file}`]);
        const error = await stream.ended();
        assert.equal(error?.code, grpc.status.PERMISSION_DENIED);
        assert.match(error!.details, /is outside the directories allowed by --file-resource-dirs.*allowed: .*\/etc\/certs/);
      }
    } finally {
      await defaults.close();
    }

    const configured = await startTestAgent({ flags: { mode: 'sidecar', tokenFile }, env: { MESHCA_FILE_RESOURCE_DIRS: mount } });
    try {
      configured.ca.addWorkload('tok-sidecar', 'shop', 'side');
      const stream = new RawSotwStream(configured.client, undefined);
      stream.subscribe([`file-root:${path.join(mount, 'root-cert.pem')}`]);
      assert.equal(decodeSecret((await stream.next()).resources[0]!).rootsPem, pem);
      stream.close();
      const token = new RawSotwStream(configured.client, undefined);
      token.subscribe([`file-root:${tokenFile}`]);
      assert.equal((await token.ended())?.code, grpc.status.PERMISSION_DENIED, 'the token beside the mount stays out of reach');
    } finally {
      await configured.close();
    }
  });
});
