/**
 * Which workload gets which identity, and the agent's local duties: socket handling, file resources, key types,
 * OUTPUT_CERTS, status server and configuration errors. The agent runs in-process on a real Unix socket; the CA
 * is an in-process signer behind the agent's CA-client interface.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { readAgentConfig, startAgent } from '../src/agent/index.js';
import { ConfigError } from '../src/config/env.js';
import { certificateToPem, createCaCertificate, exportPrivateKeyPem, parseCertificate, LeafIssuer, generateKeyPairFor } from '../src/pki/index.js';
import { opensslVerify } from './support/openssl.js';
import { runMeshca } from './support/process.js';
import {
  decodeSecret,
  eventually,
  InProcessCa,
  memoryLogger,
  metricsText,
  metricValue,
  namesIn,
  RawSotwStream,
  startTestAgent,
  tempDir,
  wireToken,
  type TestAgent,
} from './agent-helpers.js';

async function firstSecret(t: TestAgent, token: string | undefined, name = 'default'): Promise<ReturnType<typeof decodeSecret>> {
  const stream = new RawSotwStream(t.client, token);
  stream.subscribe([name]);
  try {
    return decodeSecret((await stream.next()).resources[0]!);
  } finally {
    stream.close();
  }
}

describe('workload identities on one socket', () => {
  let t: TestAgent;
  before(async () => {
    t = await startTestAgent({ flags: { idleSecretTtl: '300ms' } });
  });
  after(async () => t.close());

  it('gives two workloads with different tokens their own SPIFFE IDs and keys', async () => {
    const frontend = t.ca.addWorkload('tok-frontend', 'shop', 'frontend');
    const backend = t.ca.addWorkload('tok-backend', 'shop', 'backend');
    const [a, b] = await Promise.all([firstSecret(t, 'tok-frontend'), firstSecret(t, 'tok-backend')]);
    assert.equal(a.spiffeId, frontend);
    assert.equal(b.spiffeId, backend);
    assert.notEqual(a.keyPem, b.keyPem);
    const leafA = a.chainPem!.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
    assert.ok(opensslVerify(leafA, '', t.ca.rootsPem).ok, 'chain verifies with openssl');
  });

  it('refuses a stream without a token, naming the metadata to send, and caches nothing', async () => {
    const cachedBefore = t.agent.secrets.size;
    const callsBefore = t.ca.calls;
    const stream = new RawSotwStream(t.client, undefined);
    stream.subscribe(['default']);
    const error = await stream.ended();
    assert.equal(error?.code, grpc.status.UNAUTHENTICATED);
    assert.match(error!.details, /no workload token.*istio_sds_credentials_header-bin.*authorization: Bearer/);
    assert.equal(t.agent.secrets.size, cachedBefore);
    assert.equal(t.ca.calls, callsBefore, 'no CSR without a token');
  });

  it('refuses a token the CA does not accept and caches nothing, also for ROOTCA', async () => {
    const cachedBefore = t.agent.secrets.size;
    for (const name of ['default', 'ROOTCA']) {
      const stream = new RawSotwStream(t.client, 'a-foreign-token');
      stream.subscribe([name]);
      const error = await stream.ended();
      assert.equal(error?.code, grpc.status.UNAUTHENTICATED);
      assert.match(error!.details, /the CA refused the workload token.*request authenticate failure/);
    }
    assert.equal(t.agent.secrets.size, cachedBefore);
  });

  it('accepts the token as authorization: Bearer too', async () => {
    const id = t.ca.addWorkload('tok-bearer', 'shop', 'bearer');
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${wireToken('tok-bearer')}`);
    const stream = new RawSotwStream(t.client, undefined, metadata);
    stream.subscribe(['default']);
    assert.equal(decodeSecret((await stream.next()).resources[0]!).spiffeId, id);
    stream.close();
  });

  it('shares one secret between streams with the same token (one CSR) and between tokens of one identity', async () => {
    t.ca.addWorkload('tok-cart-1', 'shop', 'cart');
    t.ca.addWorkload('tok-cart-2', 'shop', 'cart');
    const callsBefore = t.ca.calls;
    const first = await firstSecret(t, 'tok-cart-1');
    const again = await firstSecret(t, 'tok-cart-1');
    assert.equal(t.ca.calls, callsBefore + 1, 'the same token is proven once');
    assert.equal(again.leaf!.serialHex, first.leaf!.serialHex);
    const otherPod = await firstSecret(t, 'tok-cart-2');
    assert.equal(t.ca.calls, callsBefore + 2, 'a new token is proven with its own CSR');
    assert.equal(otherPod.leaf!.serialHex, first.leaf!.serialHex, 'same identity, shared secret');
  });

  it('never serves one identity to a stream whose token proved another', async () => {
    t.ca.addWorkload('tok-pay', 'shop', 'payments');
    t.ca.addWorkload('tok-ads', 'ads', 'server');
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => firstSecret(t, i % 2 === 0 ? 'tok-pay' : 'tok-ads').then((s) => [i, s.spiffeId] as const)),
    );
    for (const [i, id] of results) {
      assert.equal(id, i % 2 === 0 ? 'spiffe://cluster.local/ns/shop/sa/payments' : 'spiffe://cluster.local/ns/ads/sa/server');
    }
  });

  it('drops an identity --idle-secret-ttl after its last stream ends', async () => {
    t.ca.addWorkload('tok-idle', 'shop', 'idle');
    const stream = new RawSotwStream(t.client, 'tok-idle');
    stream.subscribe(['default']);
    await stream.next();
    const hasIdle = (): boolean => t.agent.secrets.expiryReadings().some((r) => r.identity.endsWith('/sa/idle'));
    assert.ok(hasIdle());
    stream.close();
    await eventually(() => !hasIdle(), 'the idle identity to be dropped');
    assert.ok(t.records.some((r) => r.msg === 'dropped cached secret' && String(r.identity).endsWith('/sa/idle')));
  });
});

describe('the SDS socket', () => {
  it('creates parent directories, sets --sds-socket-mode and refuses a socket a live agent owns', async () => {
    const t = await startTestAgent({ flags: { sdsSocketMode: '0660' } });
    try {
      assert.equal(statSync(t.socket).mode & 0o777, 0o660);
      const config = readAgentConfig({ sdsSocket: t.socket, statusAddr: '127.0.0.1:0' }, {});
      await assert.rejects(startAgent(config, memoryLogger().log, { caClient: new InProcessCa() }), /another process \(a live agent\?\) is serving on the SDS socket/);
      assert.ok(existsSync(t.socket), 'the live socket is left alone');
    } finally {
      await t.close();
    }
  });

  it('defaults to mode 0666 and replaces a stale socket left by a dead process', async () => {
    const { dir, cleanup } = tempDir();
    const socket = path.join(dir, 'socket');
    // A process that dies without cleaning up leaves its socket file behind.
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    await new Promise((resolve) => child.on('exit', resolve));
    assert.ok(statSync(socket).isSocket());
    const ca = new InProcessCa();
    ca.addWorkload('tok', 'default', 'app');
    const agent = await startAgent(readAgentConfig({ sdsSocket: socket, statusAddr: '127.0.0.1:0' }, { ECC_SIGNATURE_ALGORITHM: 'ECDSA' }), memoryLogger().log, {
      caClient: ca,
    });
    try {
      assert.equal(statSync(socket).mode & 0o777, 0o666);
    } finally {
      await agent.close();
      cleanup();
    }
    assert.ok(!existsSync(socket), 'the socket is removed on shutdown');
  });

  it('refuses a path that is not a socket', async () => {
    const { dir, cleanup } = tempDir();
    const file = path.join(dir, 'socket');
    writeFileSync(file, 'not a socket');
    try {
      const config = readAgentConfig({ sdsSocket: file, statusAddr: '127.0.0.1:0' }, {});
      await assert.rejects(startAgent(config, memoryLogger().log, { caClient: new InProcessCa() }), /exists and is not a socket/);
    } finally {
      cleanup();
    }
  });
});

describe('file-cert and file-root resources', () => {
  let t: TestAgent;
  let files: string;
  const makeCert = (name: string): { certPem: string; keyPem: string } => {
    const { privateKey: caKey } = generateKeyPairFor('ec-p256');
    const caCert = parseCertificate(createCaCertificate({ subject: { commonName: `${name}-ca` }, subjectKey: caKey, notAfter: new Date(Date.now() + 86400_000) }));
    const { privateKey, publicKey } = generateKeyPairFor('ec-p256');
    const leaf = new LeafIssuer({ certificate: caCert, privateKey: caKey }).issue({
      spkiDer: publicKey.export({ type: 'spki', format: 'der' }),
      uris: [`spiffe://example.org/${name}`],
      ttlSeconds: 3600,
    });
    return { certPem: certificateToPem(leaf.der), keyPem: exportPrivateKeyPem(privateKey) };
  };

  before(async () => {
    const { dir } = tempDir();
    files = dir;
    t = await startTestAgent({ flags: { fileResourceDirs: files } });
    t.ca.addWorkload('tok-files', 'shop', 'files');
  });
  after(async () => t.close());

  it('serves file-cert and re-pushes it when the files change', async () => {
    const cert = path.join(files, 'cert.pem');
    const key = path.join(files, 'key.pem');
    const one = makeCert('one');
    writeFileSync(cert, one.certPem);
    writeFileSync(key, one.keyPem);
    const name = `file-cert:${cert}~${key}`;
    const stream = new RawSotwStream(t.client, 'tok-files');
    stream.subscribe([name]);
    const first = await stream.next();
    assert.deepEqual(namesIn(first), [name]);
    assert.equal(decodeSecret(first.resources[0]!).spiffeId, 'spiffe://example.org/one');
    stream.ack(first, [name]);
    const two = makeCert('two');
    writeFileSync(key, two.keyPem);
    writeFileSync(cert, two.certPem);
    const pushed = await stream.next();
    assert.equal(decodeSecret(pushed.resources[0]!).spiffeId, 'spiffe://example.org/two');
    stream.close();
  });

  it('serves file-root and re-pushes it when the file changes', async () => {
    const roots = path.join(files, 'roots.pem');
    writeFileSync(roots, makeCert('r1').certPem);
    const name = `file-root:${roots}`;
    const stream = new RawSotwStream(t.client, 'tok-files');
    stream.subscribe([name]);
    const first = await stream.next();
    stream.ack(first, [name]);
    const replacement = makeCert('r2').certPem;
    writeFileSync(roots, replacement);
    const pushed = await stream.next();
    assert.equal(decodeSecret(pushed.resources[0]!).rootsPem, replacement);
    stream.close();
  });

  it('follows a Kubernetes-style ..data symlink swap of a mounted Secret', async () => {
    const mount = path.join(files, 'mount');
    mkdirSync(path.join(mount, '..v1'), { recursive: true });
    writeFileSync(path.join(mount, '..v1', 'root.pem'), makeCert('mounted-1').certPem);
    symlinkSync('..v1', path.join(mount, '..data'));
    symlinkSync(path.join('..data', 'root.pem'), path.join(mount, 'root.pem'));
    const name = `file-root:${path.join(mount, 'root.pem')}`;
    const stream = new RawSotwStream(t.client, 'tok-files');
    stream.subscribe([name]);
    stream.ack(await stream.next(), [name]);
    // What the kubelet does: new timestamped dir, new ..data link renamed over the old one, old dir removed.
    const replacement = makeCert('mounted-2').certPem;
    mkdirSync(path.join(mount, '..v2'));
    writeFileSync(path.join(mount, '..v2', 'root.pem'), replacement);
    symlinkSync('..v2', path.join(mount, '..data_tmp'));
    renameSync(path.join(mount, '..data_tmp'), path.join(mount, '..data'));
    rmSync(path.join(mount, '..v1'), { recursive: true });
    assert.equal(decodeSecret((await stream.next()).resources[0]!).rootsPem, replacement);
    stream.close();
  });

  it('refuses files outside --file-resource-dirs, and all files in node mode by default', async () => {
    const escape = path.join(files, 'escape.pem');
    symlinkSync('/etc/hostname', escape);
    const viaLink = new RawSotwStream(t.client, 'tok-files');
    viaLink.subscribe([`file-root:${escape}`]);
    assert.equal((await viaLink.ended())?.code, grpc.status.PERMISSION_DENIED, 'a symlink out of the allowed directory is refused');

    const outside = new RawSotwStream(t.client, 'tok-files');
    outside.subscribe(['file-root:/etc/hostname']);
    const error = await outside.ended();
    assert.equal(error?.code, grpc.status.PERMISSION_DENIED);
    assert.match(error!.details, /outside the directories allowed by --file-resource-dirs/);

    const closed = await startTestAgent();
    try {
      closed.ca.addWorkload('tok', 'shop', 'x');
      const stream = new RawSotwStream(closed.client, 'tok');
      stream.subscribe([`file-root:${path.join(files, 'roots.pem')}`]);
      const denied = await stream.ended();
      assert.equal(denied?.code, grpc.status.PERMISSION_DENIED);
      assert.match(denied!.details, /file resources are disabled in node mode/);
    } finally {
      await closed.close();
    }
  });
});

describe('workload keys', () => {
  it('makes RSA-2048 PKCS#1 keys by default and honours WORKLOAD_RSA_KEY_SIZE', async () => {
    for (const [env, bits] of [[{}, 2048], [{ WORKLOAD_RSA_KEY_SIZE: '3072' }, 3072]] as const) {
      const t = await startTestAgent({ env: { ECC_SIGNATURE_ALGORITHM: '', ...env }, flags: { keyPoolSize: '1' } });
      try {
        t.ca.addWorkload('tok', 'shop', 'rsa');
        const secret = await firstSecret(t, 'tok');
        assert.match(secret.keyPem!, /BEGIN RSA PRIVATE KEY/);
        const text = execFileSync('openssl', ['pkey', '-noout', '-text'], { input: secret.keyPem, encoding: 'utf8' });
        assert.match(text, new RegExp(`${bits} bit`));
      } finally {
        await t.close();
      }
    }
  });

  it('makes ECDSA P-384 keys in PKCS#8 with ECC_CURVE=P384 PKCS8_KEY=true', async () => {
    const t = await startTestAgent({ env: { ECC_SIGNATURE_ALGORITHM: 'ECDSA', ECC_CURVE: 'P384', PKCS8_KEY: 'true' } });
    try {
      t.ca.addWorkload('tok', 'shop', 'ec');
      const secret = await firstSecret(t, 'tok');
      assert.match(secret.keyPem!, /BEGIN PRIVATE KEY/);
      const text = execFileSync('openssl', ['pkey', '-noout', '-text'], { input: secret.keyPem, encoding: 'utf8' });
      assert.match(text, /secp384r1|P-384/);
    } finally {
      await t.close();
    }
  });

  it('rejects weak or unknown key settings with the variable named', () => {
    assert.throws(() => readAgentConfig({}, { WORKLOAD_RSA_KEY_SIZE: '1024' }), (e: unknown) => e instanceof ConfigError && /WORKLOAD_RSA_KEY_SIZE\)="1024".*>= 2048/.test(e.message));
    assert.throws(() => readAgentConfig({}, { ECC_CURVE: 'P521' }), /ECC_CURVE\)="P521": expected one of P256, P384/);
    assert.throws(() => readAgentConfig({}, { SECRET_GRACE_PERIOD_RATIO: '1.5' }), /SECRET_GRACE_PERIOD_RATIO\)="1.5"/);
    assert.throws(() => readAgentConfig({ tokenFile: 'x' }, {}), /--token-file is only used with --mode sidecar/);
  });
});

describe('sidecar mode, OUTPUT_CERTS and the status server', () => {
  it('uses --token-file, writes key.pem 0600, cert-chain.pem, root-cert.pem, and reports ready and metrics', async () => {
    const { dir, cleanup } = tempDir();
    const tokenFile = path.join(dir, 'istio-token');
    writeFileSync(tokenFile, 'tok-sidecar\n');
    const out = path.join(dir, 'out');
    const ca = new InProcessCa();
    const id = ca.addWorkload('tok-sidecar', 'shop', 'sidecar');
    const t = await startTestAgent({ ca, flags: { mode: 'sidecar', tokenFile, outputCerts: out } });
    try {
      await eventually(() => existsSync(path.join(out, 'root-cert.pem')), 'OUTPUT_CERTS files');
      assert.equal(statSync(path.join(out, 'key.pem')).mode & 0o777, 0o600);
      const chain = readFileSync(path.join(out, 'cert-chain.pem'), 'utf8');
      const roots = readFileSync(path.join(out, 'root-cert.pem'), 'utf8');
      assert.ok(opensslVerify(chain.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!, '', roots).ok);
      assert.deepEqual(ca.tokensSeen, ['tok-sidecar'], 'the token file was read (trimmed) for the CSR');
      // A stream without any token gets the pod's identity in sidecar mode.
      const secret = await firstSecret(t, undefined);
      assert.equal(secret.spiffeId, id);
      const ready = await fetch(`${t.agent.statusUrl}/healthz/ready`);
      assert.equal(ready.status, 200);
      const metrics = await metricsText(t.agent);
      assert.ok(metricValue(metrics, 'istio_agent_num_outgoing_requests', { request_type: 'csr' }) >= 1);
      assert.ok(metricValue(metrics, 'istio_agent_cert_expiry_seconds', { resource_name: 'default' }) > 80_000);
      assert.ok(metricValue(metrics, 'istio_agent_cert_expiry_seconds', { resource_name: 'ROOTCA' }) > 0);
      assert.equal(metricValue(metrics, 'meshca_agent_secrets_cached'), 1);
      for (const name of ['istio_agent_num_failed_outgoing_requests', 'istio_agent_num_outgoing_retries', 'istio_agent_outgoing_latency', 'meshca_sds_pushes_total', 'meshca_sds_nacks_total']) {
        assert.match(metrics, new RegExp(`# TYPE ${name} `));
      }
    } finally {
      await t.close();
      cleanup();
    }
  });

  it('says not ready while the CA has not been reached', async () => {
    const ca = new InProcessCa();
    let release: () => void = () => undefined;
    ca.waitUntilReachable = () => new Promise<void>((resolve) => (release = resolve));
    const t = await startTestAgent({ ca });
    try {
      const response = await fetch(`${t.agent.statusUrl}/healthz/ready`);
      assert.equal(response.status, 503);
      assert.match(await response.text(), /waiting for the CA at in-process-ca/);
      release();
      await eventually(async () => (await fetch(`${t.agent.statusUrl}/healthz/ready`)).status === 200, 'readiness');
    } finally {
      await t.close();
    }
  });
});

describe('meshca agent start-up errors', () => {
  it('ends with one line naming the missing CA root and how to fix it', async () => {
    const { dir, cleanup } = tempDir();
    try {
      const result = await runMeshca(['agent', '--sds-socket', path.join(dir, 's'), '--status-addr', '127.0.0.1:0', '--ca-root-cert', path.join(dir, 'nope.pem')]);
      assert.equal(result.code, 1, 'a missing file is a failure (1), not a usage error (2)');
      assert.match(result.stderr, /^meshca: cannot read the CA root certificate .*nope\.pem \(--ca-root-cert, CA_ROOT_CA\): ENOENT; point it at the mesh root/m);
      assert.equal(result.stderr.trim().split('\n').length, 1);
    } finally {
      cleanup();
    }
  });

  it('ends with one line for a bad setting', async () => {
    const result = await runMeshca(['agent', '--sds-socket-mode', '999'], { env: { MESHCA_LOG_LEVEL: 'silent' } });
    assert.equal(result.code, 2, 'a bad setting is a usage error');
    assert.match(result.stderr, /^meshca: invalid --sds-socket-mode \(env MESHCA_SDS_SOCKET_MODE\)="999": expected an octal file mode/);
  });

  it('ends with one line when the status port is taken', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as AddressInfo).port;
    const { dir, cleanup } = tempDir();
    try {
      const root = path.join(dir, 'root.pem');
      const ca = new InProcessCa();
      writeFileSync(root, ca.rootsPem);
      mkdirSync(path.join(dir, 'run'));
      const result = await runMeshca(['agent', '--sds-socket', path.join(dir, 'run', 's'), '--status-addr', `127.0.0.1:${port}`, '--ca-root-cert', root]);
      assert.equal(result.code, 1);
      assert.match(result.stderr, /meshca: cannot listen on --status-addr 127\.0\.0\.1:\d+: .*in use/);
    } finally {
      blocker.close();
      cleanup();
    }
  });
});
