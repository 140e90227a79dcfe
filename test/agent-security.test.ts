/**
 * Security properties of the node agent, on the real `meshca agent` with the real `meshca ca`:
 *  - the SDS socket gets exactly the mode configured (--sds-socket-mode, MESHCA_SDS_SOCKET_MODE);
 *  - no private key (served, renewed, read from a file-cert: file) and no workload token ever appears in the
 *    agent's output at --log-level trace, in /metrics or in /healthz/ready, through NACKs, refusals and renewals;
 *  - OUTPUT_CERTS writes key.pem 0600 (also over a pre-existing 0644 file and after a renewal), atomically, with a
 *    chain that verifies and belongs to the key.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { certificateToPem, createCaCertificate, exportPrivateKeyPem, LeafIssuer, parseCertificate, generateKeyPairFor } from '../src/pki/index.js';
import { startCa, type RunningCa } from './ca-helpers.js';
import { decodeSecret, eventually, metricValue, RawSotwStream, startAgentProcess, tempDir, type AgentProcess } from './agent-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslVerify } from './support/openssl.js';

/** The base64 body lines of a PEM key: what would betray the key in any text, whatever was done to its armour. */
function keyFingerprints(keyPem: string): string[] {
  return keyPem.split('\n').filter((line) => line.length >= 40 && !line.startsWith('-----'));
}

function firstPem(chainPem: string): string {
  return chainPem.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
}

describe('meshca agent security properties (real binaries)', () => {
  let kube: KubeStandin;
  let ca: RunningCa;
  const caState = tempDir('meshca-ca-agentsec-');
  const agents: AgentProcess[] = [];

  before(async () => {
    kube = await startKubeStandin();
    ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
  });
  after(async () => {
    for (const agent of agents) await agent.stop();
    await ca?.proc.stop();
    await kube?.close();
    caState.cleanup();
  });

  const startAgent = async (options: { env?: NodeJS.ProcessEnv; args?: string[] } = {}): Promise<AgentProcess> => {
    const agent = await startAgentProcess({ caAddress: ca.grpcAddress, caRootPem: ca.rootPem, ...options });
    agents.push(agent);
    return agent;
  };

  it('gives the SDS socket exactly the configured mode, and the socket serves', async () => {
    const cases: [string, { env?: NodeJS.ProcessEnv; args?: string[] }, number][] = [
      ['--sds-socket-mode 0660', { args: ['--sds-socket-mode', '0660'] }, 0o660],
      ['MESHCA_SDS_SOCKET_MODE=0600', { env: { MESHCA_SDS_SOCKET_MODE: '0600' } }, 0o600],
    ];
    for (const [how, options, mode] of cases) {
      const agent = await startAgent(options);
      assert.equal((statSync(agent.socket).mode & 0o777).toString(8), mode.toString(8), how);
      const stream = new RawSotwStream(agent.client, await kube.mintToken({ namespace: 'sec', serviceAccount: 'socket' }));
      stream.subscribe(['ROOTCA']);
      assert.equal(decodeSecret((await stream.next(20_000)).resources[0]!).rootsPem!.trim(), ca.rootPem.trim(), `${how}: served`);
      stream.close();
    }
  });

  it('never shows a private key or a workload token in trace logs, /metrics or /healthz/ready', async () => {
    const files = tempDir('meshca-agentsec-files-');
    try {
      // A file-cert: resource, so that a key the agent only reads from disk is covered too.
      const { privateKey: issuerKey } = generateKeyPairFor('ec-p256');
      const issuer = parseCertificate(createCaCertificate({ subject: { commonName: 'file-ca' }, subjectKey: issuerKey, notAfter: new Date(Date.now() + 86400_000) }));
      const { privateKey: fileKey, publicKey } = generateKeyPairFor('ec-p256');
      const fileLeaf = new LeafIssuer({ certificate: issuer, privateKey: issuerKey }).issue({
        spkiDer: publicKey.export({ type: 'spki', format: 'der' }),
        uris: ['spiffe://example.org/file'],
        ttlSeconds: 3600,
      });
      const fileKeyPem = exportPrivateKeyPem(fileKey);
      writeFileSync(path.join(files.dir, 'cert.pem'), certificateToPem(fileLeaf.der));
      writeFileSync(path.join(files.dir, 'key.pem'), fileKeyPem, { mode: 0o600 });
      const fileCert = `file-cert:${path.join(files.dir, 'cert.pem')}~${path.join(files.dir, 'key.pem')}`;

      const agent = await startAgent({ env: { SECRET_TTL: '4s' }, args: ['--log-level', 'trace', '--file-resource-dirs', files.dir] });
      const tokens = await Promise.all(['alpha', 'beta'].map((serviceAccount) => kube.mintToken({ namespace: 'sec', serviceAccount })));
      const keys: string[] = [fileKeyPem];
      const streams: RawSotwStream[] = [];
      for (const token of tokens) {
        const stream = new RawSotwStream(agent.client, token);
        streams.push(stream);
        stream.subscribe(['default']);
        const first = await stream.next(20_000);
        keys.push(decodeSecret(first.resources[0]!).keyPem!);
        // A NACK whose message quotes the key, as a confused client might: it must not reach the log as a key.
        stream.send({ resource_names: ['default'], response_nonce: first.nonce, error_detail: { code: grpc.status.INTERNAL, message: `bad key ${keys.at(-1)}` } });
      }
      const fileStream = new RawSotwStream(agent.client, tokens[0]);
      streams.push(fileStream);
      fileStream.subscribe([fileCert]);
      assert.equal(decodeSecret((await fileStream.next(20_000)).resources[0]!).keyPem, fileKeyPem);
      // A renewal (SECRET_TTL=4s) brings new keys; their pushes are NACKed above, so read them from a new stream.
      await eventually(async () => metricValue(await agent.metrics(), 'meshca_agent_rotations_total', { result: 'success' }) >= 2, 'renewals', 20_000);
      for (const token of tokens) {
        const again = new RawSotwStream(agent.client, token);
        again.subscribe(['default']);
        keys.push(decodeSecret((await again.next(20_000)).resources[0]!).keyPem!);
        again.close();
      }
      const refused = new RawSotwStream(agent.client, await kube.mintForeignToken({ namespace: 'sec', serviceAccount: 'alpha' }));
      refused.subscribe(['default']);
      assert.equal((await refused.ended())?.code, grpc.status.UNAUTHENTICATED);
      streams.forEach((s) => s.close());

      const metrics = await agent.metrics();
      const ready = await (await fetch(`${agent.statusUrl}/healthz/ready`)).text();
      // The NACK that quoted a key was logged, with the key cut out.
      await eventually(() => agent.proc.lines.some((line) => line.includes('(NACK)') && line.includes('bad key [redacted private key]')), 'the NACKs to be logged');
      const output = agent.proc.lines.join('\n');
      assert.ok(agent.proc.records.some((r) => r.level === 'trace'), 'trace-level records were written');
      assert.equal(new Set(keys).size, keys.length, 'every key is distinct');
      for (const [where, text] of [['agent output', output], ['/metrics', metrics], ['/healthz/ready', ready]] as const) {
        assert.doesNotMatch(text, /PRIVATE KEY-----/, `${where} holds no PEM private key`);
        for (const [i, key] of keys.entries()) {
          for (const line of keyFingerprints(key)) assert.ok(!text.includes(line), `${where} holds no part of key ${i}`);
        }
        for (const token of tokens) assert.ok(!text.includes(token.split('.')[2]!), `${where} holds no workload token signature`);
      }
    } finally {
      files.cleanup();
    }
  });

  it('writes OUTPUT_CERTS key.pem with mode 0600, over an existing 0644 file and again after a renewal', async () => {
    const { dir, cleanup } = tempDir('meshca-agentsec-out-');
    try {
      const out = path.join(dir, 'certs');
      const tokenFile = path.join(dir, 'istio-token');
      writeFileSync(tokenFile, await kube.mintToken({ namespace: 'sec', serviceAccount: 'sidecar' }));
      mkdirSync(out);
      writeFileSync(path.join(out, 'key.pem'), 'stale key from an earlier run\n', { mode: 0o644 });
      const agent = await startAgent({ env: { SECRET_TTL: '4s' }, args: ['--mode', 'sidecar', '--token-file', tokenFile, '--output-certs', out] });
      const keyFile = path.join(out, 'key.pem');
      const readKey = (): string => readFileSync(keyFile, 'utf8');
      await eventually(() => existsSync(path.join(out, 'root-cert.pem')) && readKey().includes('PRIVATE KEY'), 'OUTPUT_CERTS to be written', 20_000);

      const check = (label: string): string => {
        const key = readKey();
        assert.equal((statSync(keyFile).mode & 0o777).toString(8), '600', `${label}: key.pem is 0600`);
        const chain = readFileSync(path.join(out, 'cert-chain.pem'), 'utf8');
        const roots = readFileSync(path.join(out, 'root-cert.pem'), 'utf8');
        const verified = opensslVerify(firstPem(chain), '', roots);
        assert.ok(verified.ok, `${label}: ${verified.output}`);
        const keyPublic = execFileSync('openssl', ['pkey', '-pubout'], { input: key, encoding: 'utf8' });
        const certPublic = execFileSync('openssl', ['x509', '-noout', '-pubkey'], { input: firstPem(chain), encoding: 'utf8' });
        assert.equal(keyPublic, certPublic, `${label}: key.pem belongs to the certificate in cert-chain.pem`);
        assert.deepEqual(readdirSync(out).sort(), ['cert-chain.pem', 'key.pem', 'root-cert.pem'], `${label}: no temporary files left`);
        return key;
      };
      let first = '';
      // The three files are replaced one after the other; wait until they agree.
      await eventually(() => {
        try {
          first = check('first write');
          return true;
        } catch {
          return false;
        }
      }, 'a consistent first write', 10_000);
      check('first write');
      await eventually(() => readKey() !== first, 'a renewal to rewrite key.pem', 20_000);
      await eventually(() => {
        try {
          check('after renewal');
          return true;
        } catch {
          return false;
        }
      }, 'a consistent write after renewal', 10_000);
      check('after renewal');
      assert.ok(metricValue(await agent.metrics(), 'meshca_agent_rotations_total', { result: 'success' }) >= 1, 'a renewal happened');
    } finally {
      cleanup();
    }
  });
});
