/**
 * The CA's own SPIFFE bundle and its bundle endpoint, in process over real HTTPS: the sequence derived from the
 * roots (and kept growing within a process), the https_spiffe profile (an SVID from the CA, checked by a client
 * that trusts only the CA's roots, re-issued on rotation), the https_web profile (the admin's certificate, reloaded
 * when its files change), what is refused, the flags, and `meshca bundle show` through the built CLI.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { request } from 'node:https';
import * as path from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { buildCaMaterial, ManagedLocalSigner } from '../src/ca/index.js';
import { startBundleEndpoint, type BundleEndpoint, type BundleEndpointConfig } from '../src/ca/federation/bundle-endpoint.js';
import { bundleOfRoots, bundleSequenceOf, nextBundleSequence, ownBundle } from '../src/ca/federation/own-bundle.js';
import { readCaServerConfig } from '../src/config/ca.js';
import { ConfigError } from '../src/config/env.js';
import {
  certificateToPem,
  createCaCertificate,
  exportPrivateKeyPem,
  formatSpiffeBundle,
  LeafIssuer,
  parseCertificate,
  parseSpiffeBundle,
  spkiDer,
  type ParsedCertificate,
  generateKeyPairFor,
} from '../src/pki/index.js';
import { memoryLogger } from './agent-helpers.js';
import { eventually } from './support/eventually.js';
import { metricValue } from './support/metrics.js';
import { makeTempDir, runMeshca } from './support/process.js';

const TD = 'cluster.local';
const DAY = 86400_000;
const ENDPOINT_ID = `spiffe://${TD}/meshca/bundle-endpoint`;

function ecKey(): KeyObject {
  return generateKeyPairFor('ec-p256').privateKey;
}

function root(name: string, notBefore: Date): { cert: ParsedCertificate; key: KeyObject } {
  const key = ecKey();
  return { key, cert: parseCertificate(createCaCertificate({ subject: { commonName: name }, subjectKey: key, notBefore, notAfter: new Date(notBefore.getTime() + 365 * DAY) })) };
}

/** An intermediate under `parent`, with CA material whose bundle is `roots`. */
function materialUnder(parent: { cert: ParsedCertificate; key: KeyObject }, roots: ParsedCertificate[]): ReturnType<typeof buildCaMaterial> {
  const key = ecKey();
  const cert = parseCertificate(
    createCaCertificate({ subject: { commonName: 'intermediate' }, subjectKey: key, issuer: { certificate: parent.cert, privateKey: parent.key }, notAfter: new Date(Date.now() + 30 * DAY) }),
  );
  return buildCaMaterial({ signingCert: cert, privateKey: key, chain: [cert, parent.cert], roots });
}

const seconds = (date: Date): number => Math.floor(date.getTime() / 1000);
const T0 = new Date('2026-01-01T00:00:00Z');
const T1 = new Date('2026-06-01T00:00:00Z');

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  peer: PeerCertificate;
}

/** One HTTPS request that trusts only `ca`; `endpointId` replaces the host-name check by the SVID's URI SAN. */
function fetchFrom(port: number, options: { ca: string; endpointId?: string; servername?: string; method?: string; path?: string; body?: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: options.path ?? '/',
        method: options.method ?? 'GET',
        ca: options.ca,
        agent: false,
        ...(options.servername ? { servername: options.servername } : {}),
        ...(options.endpointId
          ? {
              checkServerIdentity: (_host: string, cert: PeerCertificate) => {
                const uris = parseCertificate(cert.raw).sans.uris;
                return uris.length === 1 && uris[0] === options.endpointId ? undefined : new Error(`SVID for ${uris.join(',')}`);
              },
            }
          : {}),
      },
      (res) => {
        let body = '';
        const peer = (res.socket as import('node:tls').TLSSocket).getPeerCertificate();
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, peer }));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

const ADDRESS = { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' };

describe('the bundle sequence', () => {
  it('grows on each step of a rotation and is the same for the same roots (pure)', () => {
    const old = root('old', T0).cert;
    const next = root('next', T1).cert;
    const before = bundleSequenceOf([old]);
    const during = bundleSequenceOf([old, next]);
    const after = bundleSequenceOf([next]);
    assert.equal(before, 2 * seconds(T0));
    assert.equal(during, seconds(T0) + seconds(T1));
    assert.ok(before < during && during < after, `${before} < ${during} < ${after}`);
    assert.equal(bundleSequenceOf([next, old]), during, 'the order of the roots does not matter');
    assert.deepEqual(nextBundleSequence(undefined, during), { sequence: during, derived: true });
    assert.deepEqual(nextBundleSequence(before, during), { sequence: during, derived: true });
    // A change the dates do not order (back to the old root): never down, never equal within a process.
    assert.deepEqual(nextBundleSequence(after, before), { sequence: after + 1, derived: false });
    assert.deepEqual(nextBundleSequence(after, after), { sequence: after + 1, derived: false });
  });

  it('ownBundle follows the signer: a new root set raises it, the same set does not, an unordered change is last + 1 with a warning', () => {
    const old = root('old', T0).cert;
    const next = root('next', T1).cert;
    let pem = certificateToPem(old.der);
    const listeners = new Set<() => void>();
    const signer = { trustBundlePem: () => pem, onChange: (l: () => void) => (listeners.add(l), () => listeners.delete(l)) };
    const { log, records } = memoryLogger();
    const own = ownBundle(signer, TD, { refreshHintSeconds: 300, logger: log });
    let changes = 0;
    own.onChange(() => changes++);
    const change = (roots: ParsedCertificate[]): number | undefined => {
      pem = roots.map((r) => certificateToPem(r.der)).join('');
      for (const l of [...listeners]) l();
      return own.current().sequence;
    };
    assert.equal(own.current().sequence, 2 * seconds(T0));
    assert.equal(own.current().refreshHintSeconds, 300);
    assert.equal(change([old]), 2 * seconds(T0), 'a signer change that keeps the roots changes nothing');
    assert.equal(changes, 0);
    assert.equal(change([old, next]), seconds(T0) + seconds(T1));
    assert.equal(change([next, old]), seconds(T0) + seconds(T1), 'same roots, other order: no change');
    assert.equal(change([next]), 2 * seconds(T1));
    assert.equal(changes, 2);
    assert.ok(!records.some((r) => r.level === 40));
    // Back to the old root (a rollback): the derived value is lower, so last + 1, and a warning.
    assert.equal(change([old]), 2 * seconds(T1) + 1);
    assert.equal(changes, 3);
    assert.ok(records.some((r) => r.level === 40 && /publishing the last sequence \+ 1/.test(String(r.msg))));
    own.close();
    assert.equal(listeners.size, 0);
  });
});

describe('the bundle endpoint', () => {
  const { log, records } = memoryLogger();
  const registry = new Registry();
  const rootA = root('root A', new Date(Date.now() - DAY));
  const signer = new ManagedLocalSigner('test', materialUnder(rootA, [rootA.cert]));
  const own = ownBundle(signer, TD, { refreshHintSeconds: 120, logger: log });
  const rootsPem = (): string => signer.trustBundlePem();
  let endpoint: BundleEndpoint;
  const { dir, cleanup } = makeTempDir('meshca-bundle-endpoint-');

  before(async () => {
    endpoint = await startBundleEndpoint({
      config: { address: ADDRESS, profile: { kind: 'https_spiffe', spiffeId: ENDPOINT_ID }, refreshHintSeconds: 120 },
      bundle: own,
      signer,
      svidTtlSeconds: 3600,
      logger: log,
      registry,
    });
  });
  after(async () => {
    await endpoint.close();
    own.close();
    await signer.close();
    cleanup();
  });

  it('https_spiffe: serves the bundle under an SVID that a client trusting only the roots verifies; the document parses and openssl reads it', async () => {
    const answer = await fetchFrom(endpoint.port, { ca: rootsPem(), endpointId: ENDPOINT_ID });
    assert.equal(answer.status, 200);
    assert.equal(answer.headers['content-type'], 'application/json');
    const bundle = parseSpiffeBundle(TD, answer.body);
    assert.equal(bundle.sequence, bundleSequenceOf([rootA.cert]));
    assert.equal(bundle.refreshHintSeconds, 120);
    assert.deepEqual(bundle.x509Authorities.map((c) => c.der), [rootA.cert.der]);
    // openssl reads the authority from x5c on its own.
    const der = path.join(dir, 'x5c.der');
    writeFileSync(der, Buffer.from((JSON.parse(answer.body) as { keys: { x5c: string[] }[] }).keys[0]!.x5c[0]!, 'base64'));
    assert.match(execFileSync('openssl', ['x509', '-inform', 'DER', '-in', der, '-noout', '-subject'], { encoding: 'utf8' }), /CN ?= ?root A/);
    // The SVID names the endpoint; the chain served is the SVID and the intermediate, not the root.
    assert.match(answer.peer.subjectaltname ?? '', new RegExp(`URI:${ENDPOINT_ID}`));
    const svid = endpoint.svid()!;
    assert.equal((svid.certChainPem.match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
    assert.ok(!svid.certChainPem.includes(certificateToPem(rootA.cert.der)));
    // A client that pins another SPIFFE ID refuses it.
    await assert.rejects(fetchFrom(endpoint.port, { ca: rootsPem(), endpointId: `spiffe://${TD}/other` }), /SVID for/);
  });

  it('refuses other methods and paths without reading a body, and counts each result', async () => {
    const post = await fetchFrom(endpoint.port, { ca: rootsPem(), endpointId: ENDPOINT_ID, method: 'POST', body: 'x'.repeat(10_000) });
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
    assert.equal(post.headers.connection, 'close');
    const other = await fetchFrom(endpoint.port, { ca: rootsPem(), endpointId: ENDPOINT_ID, path: '/keys' });
    assert.equal(other.status, 404);
    const head = await fetchFrom(endpoint.port, { ca: rootsPem(), endpointId: ENDPOINT_ID, method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    const text = await registry.metrics();
    assert.equal(metricValue(text, 'meshca_bundle_endpoint_requests_total', { result: 'method_not_allowed' }), 1);
    assert.equal(metricValue(text, 'meshca_bundle_endpoint_requests_total', { result: 'not_found' }), 1);
    assert.ok(metricValue(text, 'meshca_bundle_endpoint_requests_total', { result: 'ok' }) >= 2);
  });

  it('a rotation raises the sequence, serves both roots, and re-issues the SVID that clients trusting the new root verify', async () => {
    const rootB = root('root B', new Date(Date.now() - 1000));
    const firstSerial = endpoint.svid()!.serialHex;
    signer.replace(materialUnder(rootB, [rootA.cert, rootB.cert]));
    const svid = await eventually(() => (endpoint.svid()!.serialHex !== firstSerial ? endpoint.svid() : undefined), 5000, 'the SVID re-issued');
    const answer = await fetchFrom(endpoint.port, { ca: certificateToPem(rootB.cert.der), endpointId: ENDPOINT_ID });
    assert.equal(parseCertificate(answer.peer.raw).serialHex, svid.serialHex);
    const bundle = parseSpiffeBundle(TD, answer.body);
    assert.equal(bundle.x509Authorities.length, 2);
    assert.equal(bundle.sequence, bundleSequenceOf([rootA.cert, rootB.cert]));
    assert.ok(bundle.sequence! > bundleSequenceOf([rootA.cert]));
    assert.ok(records.some((r) => r.msg === 'own SPIFFE bundle changed'));
  });

  it('meshca bundle show: --from with --endpoint-id and --bundle prints the served bundle; --cacerts prints the same from the files', async () => {
    const trust = path.join(dir, 'trust.json');
    writeFileSync(trust, formatSpiffeBundle(own.current()));
    const fetched = await runMeshca(['bundle', 'show', '--from', `https://127.0.0.1:${endpoint.port}/`, '--endpoint-id', ENDPOINT_ID, '--bundle', trust]);
    assert.equal(fetched.stderr, '');
    assert.equal(fetched.code, 0);
    assert.equal(fetched.stdout, formatSpiffeBundle(own.current()));
    const cacerts = path.join(dir, 'cacerts');
    execFileSync('mkdir', ['-p', cacerts]);
    writeFileSync(path.join(cacerts, 'root-cert.pem'), rootsPem());
    const local = await runMeshca(['bundle', 'show', '--cacerts', cacerts]);
    assert.equal(local.code, 0, local.stderr);
    // The same roots and sequence as the endpoint serves (the refresh hint is the endpoint's setting).
    assert.equal(local.stdout, formatSpiffeBundle(bundleOfRoots(TD, own.current().x509Authorities)));
    assert.equal(parseSpiffeBundle(TD, local.stdout).sequence, own.current().sequence);
  });

  it('https_web: serves the admin certificate and follows its files; a port in use is one line', async () => {
    const webRoot = root('web root', new Date(Date.now() - DAY));
    const issuer = new LeafIssuer({ certificate: webRoot.cert, privateKey: webRoot.key });
    const certFile = path.join(dir, 'tls.crt');
    const keyFile = path.join(dir, 'tls.key');
    const writeWebCert = (): string => {
      const key = ecKey();
      const leaf = issuer.issue({ spkiDer: spkiDer(key), uris: [], dnsNames: ['bundle.example.com'], ttlSeconds: 3600 });
      writeFileSync(keyFile, exportPrivateKeyPem(key));
      writeFileSync(certFile, certificateToPem(leaf.der));
      return leaf.serialHex;
    };
    const first = writeWebCert();
    const config: BundleEndpointConfig = { address: ADDRESS, profile: { kind: 'https_web', certFile, keyFile }, refreshHintSeconds: 60 };
    const web = await startBundleEndpoint({ config, bundle: own, signer, svidTtlSeconds: 3600, logger: log, reloadIntervalMs: 50 });
    try {
      const fetch = (): Promise<Answer> => fetchFrom(web.port, { ca: certificateToPem(webRoot.cert.der), servername: 'bundle.example.com' });
      const answer = await fetch();
      assert.equal(answer.status, 200);
      assert.equal(parseCertificate(answer.peer.raw).serialHex, first);
      assert.equal(parseSpiffeBundle(TD, answer.body).x509Authorities.length, own.current().x509Authorities.length);
      assert.equal(web.svid(), undefined);
      const second = writeWebCert();
      await eventually(async () => (parseCertificate((await fetch()).peer.raw).serialHex === second ? true : undefined), 5000, 'the reloaded certificate served');
      // `meshca bundle show --from` at an endpoint of a private CA, without its root: the hint names this command's flag.
      const untrusted = await runMeshca(['bundle', 'show', '--from', `https://127.0.0.1:${web.port}/`]);
      assert.notEqual(untrusted.code, 0);
      assert.match(untrusted.stderr, /TLS: .*for a private CA add --ca-file <pem>/);
      assert.doesNotMatch(untrusted.stderr, /,ca-file=/);
      await assert.rejects(
        startBundleEndpoint({ config: { ...config, address: { host: '127.0.0.1', port: web.port, text: `127.0.0.1:${web.port}` } }, bundle: own, signer, svidTtlSeconds: 3600, logger: log }),
        new RegExp(`^ListenError: cannot listen on 127\\.0\\.0\\.1:${web.port} for the SPIFFE bundle endpoint: the address is already in use; stop the other process or choose another address with --bundle-endpoint-addr$`),
      );
    } finally {
      await web.close();
    }
  });
});

describe('bundle endpoint flags', () => {
  const read = (flags: Record<string, string>, env: Record<string, string> = {}) => readCaServerConfig({ kubeconfig: [], ...flags }, { ROOT_CA_DIR: '/nonexistent', ...env }).bundleEndpoint;

  it('is off without an address, and defaults to https_spiffe with the CA-only ID and a 5m hint', () => {
    assert.equal(read({}), undefined);
    assert.deepEqual(read({ bundleEndpointAddr: ':8443' }), {
      address: { host: '0.0.0.0', port: 8443, text: ':8443' },
      profile: { kind: 'https_spiffe', spiffeId: 'spiffe://cluster.local/meshca/bundle-endpoint' },
      refreshHintSeconds: 300,
    });
    assert.deepEqual(read({}, { MESHCA_BUNDLE_ENDPOINT_ADDR: ':9443', MESHCA_BUNDLE_ENDPOINT_PROFILE: 'https_web', MESHCA_BUNDLE_ENDPOINT_CERT: 'c.pem', MESHCA_BUNDLE_ENDPOINT_KEY: 'k.pem', MESHCA_BUNDLE_ENDPOINT_REFRESH_HINT: '1m' }), {
      address: { host: '0.0.0.0', port: 9443, text: ':9443' },
      profile: { kind: 'https_web', certFile: 'c.pem', keyFile: 'k.pem' },
      refreshHintSeconds: 60,
    });
  });

  it('refuses settings that cannot work, each in one line', () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ bundleEndpointProfile: 'https_web' }, /^--bundle-endpoint-profile set without --bundle-endpoint-addr/],
      [{ bundleEndpointAddr: ':8443', bundleEndpointProfile: 'https_web' }, /https_web needs --bundle-endpoint-cert and --bundle-endpoint-key/],
      [{ bundleEndpointAddr: ':8443', bundleEndpointCert: 'c.pem' }, /are for --bundle-endpoint-profile https_web/],
      [{ bundleEndpointAddr: ':8443', bundleEndpointProfile: 'spiffe' }, /expected one of https_spiffe, https_web/],
      [{ bundleEndpointAddr: ':8443', bundleEndpointSpiffeId: 'spiffe://other.org/meshca/bundle-endpoint' }, /in this CA's trust domain "cluster.local"/],
      [{ bundleEndpointAddr: ':8443', bundleEndpointSpiffeId: 'spiffe://cluster.local/ns/istio-system/sa/istiod' }, /an ID no workload can be issued/],
      [{ bundleEndpointAddr: ':8443', bundleEndpointRefreshHint: '0s' }, /--bundle-endpoint-refresh-hint/],
    ];
    for (const [flags, message] of cases) assert.throws(() => read(flags), (error: Error) => error instanceof ConfigError && message.test(error.message) && !error.message.includes('\n'));
  });
});
