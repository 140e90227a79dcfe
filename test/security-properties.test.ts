/**
 * Security properties of `meshca ca`:
 *  - private keys (and bearer tokens) never appear in logs (even at --log-level trace), metrics, /debug/ca,
 *    /ready or error messages; the key file is 0600 and the state directory 0700;
 *  - the gRPC port speaks TLS 1.2+ with AEAD ciphers only (TLS 1.0/1.1 and CBC-only clients are refused);
 *  - --max-csr-per-identity-per-minute limits each caller identity with RESOURCE_EXHAUSTED and a metric;
 *  - a signer that returns a wrong certificate (another identity, another key, another issuer, a reordered or
 *    truncated chain, a stale bundle) never reaches the workload: the final check turns it into INTERNAL.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { connect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { DEV_ISSUER, DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { buildCaMaterial, LocalSigner, type SignedChain, type SignerStatus, type WorkloadSignRequest, type WorkloadSigner } from '../src/ca/index.js';
import { Command } from 'commander';
import { addCaServerOptions, readCaServerConfig, type CaServerFlags } from '../src/config/ca.js';
import { createLogger } from '../src/log.js';
import { createCaCertificate, generateKeyPairFor, parseCertificate, spkiDer, type ParsedCertificate } from '../src/pki/index.js';
import { startCaServer, TLS_CIPHERS, type CaServer } from '../src/server/index.js';
import type { IstioCaClient } from '../src/wire/protos.js';
import {
  caClient,
  createCertificate,
  getText,
  metricValue,
  opensslFacts,
  opensslKeyAndCsr,
  SERVER_NAME,
  startCa,
  type CallResult,
  type RunningCa,
} from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const id = (sa: string): string => `spiffe://cluster.local/ns/default/sa/${sa}`;
const RATE_LIMIT = 5;

function assertRefused(result: CallResult, code: grpc.status, details: string | RegExp): void {
  if (result.ok) assert.fail(`expected ${grpc.status[code]}, got a certificate`);
  assert.equal(grpc.status[result.code], grpc.status[code], result.details);
  if (typeof details === 'string') assert.equal(result.details, details);
  else assert.match(result.details, details);
}

/** The base64 lines of a PEM body: any of them showing up anywhere means key material leaked. */
function bodyLines(pemText: string): string[] {
  return pemText
    .split('\n')
    .filter((line) => line.length >= 40 && !line.startsWith('-----'))
    .map((line) => line.slice(0, 40));
}

/** `openssl s_client` against the CA port; returns its whole output. */
function sClient(port: number, args: string[]): string {
  const result = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', SERVER_NAME, ...args], {
    input: '',
    encoding: 'utf8',
    timeout: 15_000,
  });
  return `${result.stdout}${result.stderr}`;
}

describe('meshca ca security properties (real binary)', () => {
  const temp = makeTempDir('meshca-security-props-');
  let kube: KubeStandin;
  let ca: RunningCa;
  let client: IstioCaClient;
  const port = (): number => Number(ca.grpcAddress.split(':').pop());

  before(async () => {
    kube = await startKubeStandin();
    const stateDir = path.join(temp.dir, 'state');
    // Created too open on purpose: the CA must tighten it.
    mkdirSync(stateDir, { mode: 0o755 });
    ca = await startCa(stateDir, ['--kubeconfig', kube.kubeconfigPath, '--log-level', 'trace', '--max-csr-per-identity-per-minute', String(RATE_LIMIT)]);
    client = caClient(ca.grpcAddress, ca.rootPem);
  });

  after(async () => {
    client?.close();
    await ca?.proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  test('TLS 1.0 and 1.1 handshakes are refused by the server', () => {
    for (const version of ['-tls1', '-tls1_1']) {
      // SECLEVEL=0 lets this OpenSSL offer the old protocol at all; the refusal must come from the CA.
      const output = sClient(port(), [version, '-cipher', 'DEFAULT:@SECLEVEL=0']);
      assert.match(output, /alert protocol version/, output);
      assert.match(output, /Cipher is \(NONE\)/, output);
    }
  });

  test('TLS 1.2 negotiates an AEAD cipher with forward secrecy; a CBC-only client is refused; TLS 1.3 works', async () => {
    const negotiate = (options: { maxVersion?: 'TLSv1.2' | 'TLSv1.3'; minVersion?: 'TLSv1.3' }): Promise<{ name: string; version: string }> =>
      new Promise((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port: port(), servername: SERVER_NAME, ca: ca.rootPem, ALPNProtocols: ['h2'], ...options }, () => {
          const cipher = socket.getCipher();
          resolve({ name: cipher.name, version: String(socket.getProtocol()) });
          socket.end();
        });
        socket.on('error', reject);
      });
    const tls12 = await negotiate({ maxVersion: 'TLSv1.2' });
    assert.equal(tls12.version, 'TLSv1.2');
    assert.match(tls12.name, /^ECDHE-ECDSA-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)$/);
    assert.ok(TLS_CIPHERS.split(':').includes(tls12.name));
    const tls13 = await negotiate({ minVersion: 'TLSv1.3' });
    assert.equal(tls13.version, 'TLSv1.3');
    assert.match(tls13.name, /^TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)$/);
    for (const cbc of ['ECDHE-ECDSA-AES128-SHA256', 'ECDHE-ECDSA-AES256-SHA', 'AES128-SHA']) {
      const output = sClient(port(), ['-tls1_2', '-cipher', cbc]);
      assert.match(output, /alert handshake failure/, `${cbc}: ${output}`);
    }
  });

  test('--max-csr-per-identity-per-minute: RESOURCE_EXHAUSTED naming the identity and limit, per identity, counted', async () => {
    const csr = opensslKeyAndCsr(temp.dir, 'rate').csrPem;
    const busy = await kube.mintToken({ namespace: 'default', serviceAccount: 'busy' });
    const quiet = await kube.mintToken({ namespace: 'default', serviceAccount: 'quiet' });
    const before = metricValue((await getText(`${ca.monitoringUrl}/metrics`)).body, 'meshca_csr_rate_limited_total');
    for (let i = 0; i < RATE_LIMIT; i++) assert.ok((await createCertificate(client, { csr, token: busy })).ok, `request ${i + 1} is within the limit`);
    assertRefused(
      await createCertificate(client, { csr, token: busy }),
      grpc.status.RESOURCE_EXHAUSTED,
      `rate limit exceeded for ${id('busy')}: at most ${RATE_LIMIT} certificate requests per minute per identity (--max-csr-per-identity-per-minute); retry later`,
    );
    // Another identity is not affected.
    const other = await createCertificate(client, { csr, token: quiet });
    assert.ok(other.ok, JSON.stringify(other));
    const metrics = (await getText(`${ca.monitoringUrl}/metrics`)).body;
    assert.equal(metricValue(metrics, 'meshca_csr_rate_limited_total') - before, 1);
    const debug = JSON.parse((await getText(`${ca.monitoringUrl}/debug/ca`)).body) as { maxCsrPerIdentityPerMinute: number };
    assert.equal(debug.maxCsrPerIdentityPerMinute, RATE_LIMIT);
  });

  test('private keys and tokens never appear in logs (trace level), metrics, debug endpoints or error messages', async () => {
    const workload = opensslKeyAndCsr(temp.dir, 'leak-check', { spiffeId: id('leak-check') });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'leak-check' });
    const captured: string[] = [];
    // CertSigner makes the CA write a debug record.
    const ok = await createCertificate(client, { csr: workload.csrPem, token, metadata: { CertSigner: 'kubernetes.io/legacy-unknown' } });
    assert.ok(ok.ok, JSON.stringify(ok));
    // Failures of every layer: a bad CSR, a bad token, refused impersonation, and a client sending its private key.
    const refusals = [
      await createCertificate(client, { csr: 'garbage', token }),
      await createCertificate(client, { csr: workload.csrPem, token: `${token.slice(0, -4)}AAAA` }),
      await createCertificate(client, { csr: workload.csrPem, token, metadata: { ImpersonatedIdentity: id('admin') } }),
      await createCertificate(client, { csr: workload.keyPem, token }),
    ];
    for (const refusal of refusals) {
      assert.equal(refusal.ok, false);
      if (!refusal.ok) captured.push(refusal.details);
    }
    // The mistaken key is named by its PEM label only.
    assert.equal(captured[3], 'CSR error: CSR is PEM of type "EC PRIVATE KEY", expected "CERTIFICATE REQUEST"');
    for (const endpoint of ['/metrics', '/debug/ca', '/ready', '/healthz']) captured.push((await getText(`${ca.monitoringUrl}${endpoint}`)).body);
    // Stop gracefully so that every log line is flushed.
    assert.equal(await ca.proc.stop('SIGTERM'), 0);
    captured.push(...ca.proc.lines);
    const everything = captured.join('\n');
    assert.ok(ca.proc.lines.some((line) => line.includes('"level":"debug"')), 'debug records were written');

    const caKeyPem = readFileSync(path.join(ca.stateDir, 'ca-key.pem'), 'utf8');
    assert.match(caKeyPem, /PRIVATE KEY/);
    for (const secret of [...bodyLines(caKeyPem), ...bodyLines(workload.keyPem)]) {
      assert.ok(!everything.includes(secret), `key material leaked: ${secret}`);
    }
    // Only the label of the key the client sent (in its own error message) may mention a private key.
    const withoutEchoedLabel = everything.replace(/PEM of type \\?"EC PRIVATE KEY\\?"/g, '');
    assert.doesNotMatch(withoutEchoedLabel, /PRIVATE KEY/);
    assert.doesNotMatch(everything, /redacted private key/, 'nothing even tried to log key material');
    assert.ok(!everything.includes(token.split('.')[2]!), 'the bearer token signature never appears');

    // File modes: the key 0600, the state directory tightened to 0700.
    assert.equal(statSync(path.join(ca.stateDir, 'ca-key.pem')).mode & 0o777, 0o600);
    assert.equal(statSync(ca.stateDir).mode & 0o777, 0o700);
  });
});

type Fault = 'other-identity' | 'other-key' | 'other-issuer' | 'stale-bundle' | 'reordered' | 'missing-intermediate' | 'not-a-leaf-first';

/** A key source that hands out wrong certificates on demand (for workload requests only). */
class FaultySigner implements WorkloadSigner {
  readonly source: SignerStatus['source'] = 'self-signed';
  fault: Fault | undefined;
  private readonly otherSpki = spkiDer(generateKeyPairFor('ec-p256').privateKey);

  constructor(
    private readonly inner: LocalSigner,
    private readonly impostor: LocalSigner,
  ) {}

  async sign(request: WorkloadSignRequest): Promise<SignedChain> {
    const good = (): Promise<SignedChain> => this.inner.sign(request);
    if (!this.fault || request.uris.length === 0 || request.uris.some((u) => u.includes('readiness-probe'))) return good();
    switch (this.fault) {
      case 'other-identity':
        return this.inner.sign({ ...request, uris: [id('admin')] });
      case 'other-key':
        return this.inner.sign({ ...request, spkiDer: this.otherSpki });
      case 'other-issuer': {
        const forged = await this.impostor.sign(request);
        return { ...forged, chain: [forged.chain[0]!, ...this.inner.current().chainPems, this.inner.trustBundlePem()] };
      }
      case 'stale-bundle': {
        const signed = await good();
        return { ...signed, chain: [...signed.chain.slice(0, -1), this.impostor.trustBundlePem()] };
      }
      case 'reordered': {
        const signed = await good();
        const [leaf, signing, intermediate, bundle] = signed.chain;
        return { ...signed, chain: [leaf!, intermediate!, signing!, bundle!] };
      }
      case 'missing-intermediate': {
        const signed = await good();
        return { ...signed, chain: [signed.chain[0]!, signed.chain[1]!, signed.chain[3]!] };
      }
      case 'not-a-leaf-first': {
        const signed = await good();
        return { ...signed, chain: signed.chain.slice(1) };
      }
    }
  }

  trustBundlePem(): string {
    return this.inner.trustBundlePem();
  }

  maxNotAfter(): Date {
    return this.inner.maxNotAfter();
  }

  status(): SignerStatus {
    return this.inner.status();
  }

  onChange(listener: () => void): () => void {
    return this.inner.onChange(listener);
  }

  async close(): Promise<void> {}
}

/** Root → intermediate → signing CA, all EC P-256, built with meshca's own PKI code. */
function threeLevelSigner(name: string): LocalSigner {
  const notAfter = new Date(Date.now() + 86400_000);
  const rootKey = generateKeyPairFor('ec-p256').privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: `${name} root` }, subjectKey: rootKey, notAfter }));
  const interKey = generateKeyPairFor('ec-p256').privateKey;
  const inter = parseCertificate(createCaCertificate({ subject: { organization: `${name} intermediate` }, subjectKey: interKey, issuer: { certificate: root, privateKey: rootKey }, notAfter }));
  const signingKey = generateKeyPairFor('ec-p256').privateKey;
  const signing: ParsedCertificate = parseCertificate(
    createCaCertificate({ subject: { organization: `${name} signing` }, subjectKey: signingKey, issuer: { certificate: inter, privateKey: interKey }, notAfter }),
  );
  return new LocalSigner('self-signed', buildCaMaterial({ signingCert: signing, privateKey: signingKey, chain: [inter], roots: [root] }));
}

describe('a signing fault never reaches a workload (in-process server, real gRPC over TLS)', () => {
  const temp = makeTempDir('meshca-issued-check-');
  const logLines: string[] = [];
  let issuer: DevTokenIssuer;
  let signer: FaultySigner;
  let server: CaServer;
  let client: IstioCaClient;
  let csrPem: string;

  before(async () => {
    issuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'issuer'));
    const command = addCaServerOptions(new Command('ca').exitOverride());
    command.parse(['--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', '--state-dir', path.join(temp.dir, 'state')], { from: 'user' });
    const config = readCaServerConfig(command.opts<CaServerFlags>(), { JWT_RULE: JSON.stringify({ issuer: DEV_ISSUER, jwks_file: issuer.jwksPath }) });
    signer = new FaultySigner(threeLevelSigner('meshca'), threeLevelSigner('impostor'));
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        logLines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        callback();
      },
    });
    server = await startCaServer({ config, signer, logger: createLogger({ level: 'info', format: 'json', destination }), registry: new Registry(), env: {} });
    client = caClient(server.grpcAddress, signer.trustBundlePem());
    csrPem = opensslKeyAndCsr(temp.dir, 'workload', { spiffeId: id('workload') }).csrPem;
  });

  after(async () => {
    client?.close();
    await server?.close();
    temp.cleanup();
  });

  const refusal = (reason: string): string => `the issued certificate failed the final check and was not handed out: ${reason}`;
  const cases: { fault: Fault; reason: string }[] = [
    { fault: 'other-identity', reason: refusal(`the leaf names URI SANs [${id('admin')}] but the caller was granted [${id('workload')}]`) },
    { fault: 'other-key', reason: refusal('the leaf certifies a different public key than the CSR') },
    { fault: 'other-issuer', reason: refusal('the leaf is not signed by the next certificate of the chain') },
    { fault: 'stale-bundle', reason: refusal('the last element of the chain is not the trust bundle this CA publishes') },
    { fault: 'reordered', reason: refusal('the leaf is not signed by the next certificate of the chain') },
    { fault: 'missing-intermediate', reason: refusal('chain element 1 ("O=meshca signing") does not verify against any root of the trust bundle') },
    { fault: 'not-a-leaf-first', reason: refusal('the first element of the chain is not the issued leaf certificate') },
  ];

  test('each kind of wrong chain is INTERNAL with the reason, logged as an error and counted; good chains still flow', async () => {
    const token = await issuer.mint({ namespace: 'default', serviceAccount: 'workload', audiences: ['istio-ca'], ttlSeconds: 600 });
    const good = await createCertificate(client, { csr: csrPem, token });
    assert.ok(good.ok, JSON.stringify(good));
    assert.equal(good.chain.length, 4, 'leaf, signing CA, intermediate, bundle');
    assert.ok(opensslVerifyResponseChain(good.chain).ok);
    for (const c of cases) {
      signer.fault = c.fault;
      try {
        assertRefused(await createCertificate(client, { csr: csrPem, token }), grpc.status.INTERNAL, c.reason);
      } finally {
        signer.fault = undefined;
      }
    }
    const metrics = await server.metrics.registry.metrics();
    assert.equal(metricValue(metrics, 'meshca_issued_chain_rejected_total'), cases.length);
    assert.equal(metricValue(metrics, 'citadel_server_csr_sign_err_count', { error: 'CERT_GEN_ERROR' }), cases.length);
    assert.equal(metricValue(metrics, 'citadel_server_success_cert_issuance_count'), 1);
    const errors = logLines.map((line) => JSON.parse(line) as { level: string; msg: string }).filter((r) => r.msg === 'withholding a signed certificate that failed the final check');
    assert.equal(errors.length, cases.length);
    assert.ok(errors.every((r) => r.level === 'error'));
    const after = await createCertificate(client, { csr: csrPem, token });
    assert.ok(after.ok, JSON.stringify(after));
    assert.match(opensslFacts(after.chain[0]!).text, new RegExp(`URI:${id('workload').replaceAll('/', '\\/')}`));
  });
});
