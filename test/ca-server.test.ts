/**
 * `meshca ca` end to end: the real binary against the Kubernetes API stand-in, called by a grpc-js client over
 * TLS that verifies the CA's serving certificate against the CA's own root. What is issued is checked with
 * `openssl verify` / `openssl x509`.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { connect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as jose from 'jose';
import { DEV_ISSUER, DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { certificatesFromPem, certificateToPem, createCaCertificate, generateKeyPairFor, LeafIssuer, parseCertificate, spkiDer } from '../src/pki/index.js';
import type { IstioCaClient } from '../src/wire/protos.js';
import {
  caClient,
  createCertificate,
  getText,
  metricValue,
  opensslFacts,
  opensslKeyAndCsr,
  opensslPublicKeyOfKey,
  SERVER_NAME,
  startCa,
  type CallResult,
  type KeyAndCsr,
  type RunningCa,
  waitForRecord,
} from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const TD = 'cluster.local';
const id = (ns: string, sa: string): string => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const OIDC_ISSUER = 'https://oidc.example.test';

function assertOk(result: CallResult): string[] {
  if (!result.ok) assert.fail(`expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

function assertStatus(result: CallResult, code: grpc.status, pattern: RegExp): string {
  assert.equal(result.ok, false, 'expected an error status, got a certificate');
  if (result.ok) throw new Error('unreachable');
  assert.equal(grpc.status[result.code], grpc.status[code], `status (details: ${result.details})`);
  assert.match(result.details, pattern);
  return result.details;
}

describe('meshca ca against a Kubernetes API stand-in', () => {
  const temp = makeTempDir('meshca-ca-server-');
  let kube: KubeStandin;
  let remote: KubeStandin;
  let ca: RunningCa;
  let client: IstioCaClient;
  let workload: KeyAndCsr;
  let devIssuer: DevTokenIssuer;
  let oidcKey: jose.CryptoKey;
  let jwksServer: Server;

  before(async () => {
    kube = await startKubeStandin();
    remote = await startKubeStandin();
    devIssuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'dev-issuer'));
    const oidc = await jose.generateKeyPair('RS256', { extractable: true });
    oidcKey = oidc.privateKey;
    const jwk = { ...(await jose.exportJWK(oidc.publicKey)), kid: 'oidc-1', alg: 'RS256', use: 'sig' };
    jwksServer = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
    const jwtRule = JSON.stringify([
      { issuer: DEV_ISSUER, jwks_file: devIssuer.jwksPath, audiences: ['istio-ca'] },
      { issuer: OIDC_ISSUER, jwks_uri: `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks`, audiences: ['istio-ca'] },
    ]);
    // A node agent (ztunnel-like) on node-1, a workload next to it, and one on another node.
    kube.state.addPod({ namespace: 'kube-system', name: 'ztunnel-n1', serviceAccount: 'ztunnel', nodeName: 'node-1' });
    kube.state.addPod({ namespace: 'default', name: 'sleep-n1', serviceAccount: 'sleep', nodeName: 'node-1' });
    kube.state.addPod({ namespace: 'default', name: 'far-n2', serviceAccount: 'faraway', nodeName: 'node-2' });
    kube.state.addPod({ namespace: 'default', name: 'httpbin-n1', serviceAccount: 'httpbin', nodeName: 'node-1' });
    ca = await startCa(
      path.join(temp.dir, 'state'),
      [
        '--kubeconfig',
        kube.kubeconfigPath,
        '--kubeconfig',
        `remote=${remote.kubeconfigPath}`,
        '--trusted-node-accounts',
        'kube-system/ztunnel',
        '--tokenreview-timeout',
        '1s',
        // The 1000-request cache test sends from one identity, beyond the default per-identity rate limit.
        '--max-csr-per-identity-per-minute',
        '0',
      ],
      { JWT_RULE: jwtRule },
    );
    client = caClient(ca.grpcAddress, ca.rootPem);
    workload = opensslKeyAndCsr(temp.dir, 'workload', { spiffeId: id('default', 'someone-else') });
  });

  after(async () => {
    client?.close();
    await ca?.proc.stop('SIGKILL');
    await kube?.close();
    await remote?.close();
    await new Promise((resolve) => jwksServer?.close(resolve));
    temp.cleanup();
  });

  test('a valid projected token gets a chain openssl verifies, for the caller identity and the requested TTL', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', podName: 'httpbin-n1' });
    const chain = assertOk(await createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 3600 }));
    const verified = opensslVerifyResponseChain(chain);
    assert.ok(verified.ok, verified.output);
    const facts = opensslFacts(chain[0]!);
    // The CSR asked for someone-else: the CA writes the identity it authenticated, and only that one.
    assert.match(facts.text, /X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/httpbin\s*\n/);
    assert.doesNotMatch(facts.text, /someone-else/);
    assert.match(facts.text, /TLS Web Server Authentication, TLS Web Client Authentication/);
    assert.match(facts.text, /CA:FALSE/);
    // NotBefore is backdated 2 minutes; NotAfter is the requested hour after issuance.
    assert.equal((facts.notAfter.getTime() - facts.notBefore.getTime()) / 1000, 3600 + 120);
    assert.equal(facts.publicKey, opensslPublicKeyOfKey(workload.keyPem));
    const serial = parseCertificate(certificatesFromPem(chain[0]!)[0]!).serialHex;
    const audit = await waitForRecord(ca.proc, (r) => r.msg === 'certificate issued' && r.serial === serial);
    assert.equal(audit.spiffeId, id('default', 'httpbin'));
    assert.equal(audit.authenticator, 'tokenreview');
    assert.equal(audit.caller, 'system:serviceaccount:default:httpbin');
    assert.match(String(audit.clientAddress), /127\.0\.0\.1/);
    assert.equal(audit.notAfter, opensslFacts(chain[0]!).notAfter.toISOString());
  });

  test('validity_duration 0 gets DEFAULT_WORKLOAD_CERT_TTL (24h)', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin' });
    const chain = assertOk(await createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 0 }));
    const facts = opensslFacts(chain[0]!);
    assert.equal((facts.notAfter.getTime() - facts.notBefore.getTime()) / 1000, 86400 + 120);
  });

  test('an unmodified Istio-style client flow works (key + CSR with SAN, Bearer, clusterid, CertSigner, root last)', async () => {
    const agent = opensslKeyAndCsr(temp.dir, 'istio-agent', { spiffeId: id('default', 'productpage'), keyType: 'rsa' });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'productpage' });
    const chain = assertOk(
      await createCertificate(client, {
        csr: agent.csrPem,
        token,
        validitySeconds: 86400,
        headers: { clusterid: 'Kubernetes' },
        metadata: { CertSigner: '' },
      }),
    );
    assert.ok(chain.length >= 2, 'istio-agent rejects a chain of one element');
    for (const element of chain) assert.ok(element.endsWith('\n'), 'every element ends with a newline');
    assert.equal(chain[0]!.match(/BEGIN CERTIFICATE/g)!.length, 1, 'the leaf element holds one certificate');
    const root = chain[chain.length - 1]!;
    assert.equal(root, ca.rootPem, 'the last element is the published root bundle');
    const verified = opensslVerifyResponseChain(chain);
    assert.ok(verified.ok, verified.output);
    assert.match(opensslFacts(chain[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/productpage/);
    assert.equal(opensslFacts(chain[0]!).publicKey, opensslPublicKeyOfKey(agent.keyPem));

    // Renewal: the workload now authenticates with the certificate it just got, no token.
    const renewing = caClient(ca.grpcAddress, ca.rootPem, { keyPem: agent.keyPem, certChainPem: chain.slice(0, -1).join('') });
    try {
      const renewed = assertOk(await createCertificate(renewing, { csr: agent.csrPem, validitySeconds: 3600 }));
      assert.match(opensslFacts(renewed[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/productpage/);
      const serial = parseCertificate(certificatesFromPem(renewed[0]!)[0]!).serialHex;
      const record = await waitForRecord(ca.proc, (r) => r.msg === 'certificate issued' && r.serial === serial);
      assert.equal(record.authenticator, 'client-cert');
      assert.equal(record.caller, id('default', 'productpage'));
    } finally {
      renewing.close();
    }
  });

  test('a client certificate from another CA does not authenticate', async () => {
    const foreignRootKey = generateKeyPairFor('ec-p256').privateKey;
    const foreignRoot = parseCertificate(createCaCertificate({ subject: { organization: 'evil' }, subjectKey: foreignRootKey, notAfter: new Date(Date.now() + 86400_000) }));
    const leafKey = generateKeyPairFor('ec-p256').privateKey;
    const leaf = new LeafIssuer({ certificate: foreignRoot, privateKey: foreignRootKey }).issue({ spkiDer: spkiDer(leafKey), uris: [id('default', 'productpage')], ttlSeconds: 3600 });
    const foreign = caClient(ca.grpcAddress, ca.rootPem, {
      keyPem: leafKey.export({ format: 'pem', type: 'pkcs8' }) as string,
      certChainPem: certificateToPem(leaf.der),
    });
    try {
      const details = assertStatus(await createCertificate(foreign, { csr: workload.csrPem }), grpc.status.UNAUTHENTICATED, /^request authenticate failure: /);
      assert.match(details, /tokenreview: no "authorization: Bearer <token>" header/);
    } finally {
      foreign.close();
    }
  });

  test('no credentials at all: UNAUTHENTICATED with each authenticator\'s reason', async () => {
    const details = assertStatus(await createCertificate(client, { csr: workload.csrPem }), grpc.status.UNAUTHENTICATED, /^request authenticate failure: /);
    assert.match(details, /client-cert: no verified client certificate/);
    assert.match(details, /tokenreview: no "authorization: Bearer <token>" header/);
    assert.match(details, /jwt: /);
  });

  test('a token for another audience is refused with the reason, never echoing the token', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', audiences: ['telemetry'] });
    const details = assertStatus(await createCertificate(client, { csr: workload.csrPem, token }), grpc.status.UNAUTHENTICATED, /^request authenticate failure: tokenreview: /);
    assert.match(details, /the token's audiences \["telemetry"\] include none of the audiences the CA accepts \["istio-ca"\]: .* add its audience to TOKEN_AUDIENCES/);
    assert.ok(!details.includes(token) && !details.includes(token.split('.')[2]!), 'the token must not be echoed');
  });

  test('an expired token is refused', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', expired: true });
    assertStatus(await createCertificate(client, { csr: workload.csrPem, token }), grpc.status.UNAUTHENTICATED, /request authenticate failure: tokenreview: .*expired/);
  });

  test('clusterid picks the cluster; an unknown one is refused and an empty one means local', async () => {
    const remoteToken = await remote.mintToken({ namespace: 'apps', serviceAccount: 'remote-sa' });
    const chain = assertOk(await createCertificate(client, { csr: workload.csrPem, token: remoteToken, headers: { clusterid: 'remote' } }));
    assert.match(opensslFacts(chain[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/apps\/sa\/remote-sa/);
    // The local cluster does not know the remote cluster's tokens.
    assertStatus(await createCertificate(client, { csr: workload.csrPem, token: remoteToken, headers: { clusterid: '' } }), grpc.status.UNAUTHENTICATED, /tokenreview: the token was not authenticated by cluster "Kubernetes"/);
    const localToken = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin' });
    assertStatus(
      await createCertificate(client, { csr: workload.csrPem, token: localToken, headers: { clusterid: 'elsewhere' } }),
      grpc.status.UNAUTHENTICATED,
      /unknown cluster ID "elsewhere" in the clusterid header/,
    );
  });

  test('a TokenReview answered 403 is UNAVAILABLE with a message about the CA\'s RBAC', async () => {
    kube.state.forbidReviews = true;
    try {
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'rbac-check' });
      const details = assertStatus(await createCertificate(client, { csr: workload.csrPem, token }), grpc.status.UNAVAILABLE, /RBAC permission to create tokenreviews/);
      assert.match(details, /system:auth-delegator/);
    } finally {
      kube.state.forbidReviews = false;
    }
  });

  test('an API server that is down or too slow fails closed with UNAVAILABLE, and the failure is not cached', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'outage-check' });
    kube.state.down = true;
    try {
      assertStatus(await createCertificate(client, { csr: workload.csrPem, token }), grpc.status.UNAVAILABLE, /could not reach the Kubernetes API server of cluster "Kubernetes"/);
    } finally {
      kube.state.down = false;
    }
    kube.state.delayMs = 2500;
    const reviewsBefore = kube.state.tokenReviewCount;
    try {
      assertStatus(await createCertificate(client, { csr: workload.csrPem, token }), grpc.status.UNAVAILABLE, /could not reach the Kubernetes API server.*no answer within 1s/);
    } finally {
      kube.state.delayMs = 0;
    }
    assertOk(await createCertificate(client, { csr: workload.csrPem, token }));
    // Let the abandoned slow review land, so later tests count only their own calls.
    while (kube.state.tokenReviewCount - reviewsBefore < 2) await new Promise((resolve) => setTimeout(resolve, 50));
  });

  test('bad CSRs and TTLs get INVALID_ARGUMENT naming the reason', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin' });
    assertStatus(await createCertificate(client, { csr: 'not a certificate request', token }), grpc.status.INVALID_ARGUMENT, /CSR/);
    const caCsr = opensslKeyAndCsr(temp.dir, 'wants-ca', { requestCa: true });
    assertStatus(await createCertificate(client, { csr: caCsr.csrPem, token }), grpc.status.INVALID_ARGUMENT, /requests a CA certificate/);
    assertStatus(
      await createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 91 * 86400 }),
      grpc.status.INVALID_ARGUMENT,
      /requested TTL 91d is greater than the max allowed TTL 90d/,
    );
    assertStatus(await createCertificate(client, { csr: `${workload.csrPem}${' '.repeat(65 * 1024)}`, token }), grpc.status.INVALID_ARGUMENT, /larger than the 64 KiB limit/);
    const many: Record<string, string> = {};
    for (let i = 0; i < 65; i++) many[`key${i}`] = 'v';
    assertStatus(await createCertificate(client, { csr: workload.csrPem, token, metadata: many }), grpc.status.INVALID_ARGUMENT, /at most 64 are allowed/);
    const huge = await createCertificate(client, { csr: 'x'.repeat(1100 * 1024), token });
    assert.equal(huge.ok, false);
    if (!huge.ok) assert.equal(grpc.status[huge.code], 'RESOURCE_EXHAUSTED');
    // The server lives on.
    assertOk(await createCertificate(client, { csr: workload.csrPem, token }));
  });

  test('impersonation: refused for an untrusted caller, allowed for a trusted node agent only for pods on its node', async () => {
    const untrusted = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', podName: 'httpbin-n1' });
    assertStatus(
      await createCertificate(client, { csr: workload.csrPem, token: untrusted, metadata: { ImpersonatedIdentity: id('default', 'sleep') } }),
      grpc.status.UNAUTHENTICATED,
      /^request impersonation authentication failure: .*not a trusted node account/,
    );
    const node = await kube.mintToken({ namespace: 'kube-system', serviceAccount: 'ztunnel', podName: 'ztunnel-n1' });
    const chain = assertOk(await createCertificate(client, { csr: workload.csrPem, token: node, metadata: { ImpersonatedIdentity: id('default', 'sleep') } }));
    const text = opensslFacts(chain[0]!).text;
    assert.match(text, /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/sleep\s*\n/);
    assert.doesNotMatch(text, /ztunnel/);
    assertStatus(
      await createCertificate(client, { csr: workload.csrPem, token: node, metadata: { ImpersonatedIdentity: id('default', 'faraway') } }),
      grpc.status.UNAUTHENTICATED,
      /^request impersonation authentication failure: no pod of service account default\/faraway runs on node node-1/,
    );
  });

  test('JWT authentication: a trusted issuer (JWKS file or URL) is accepted after TokenReview declines', async () => {
    const devToken = await devIssuer.mint({ namespace: 'dev', serviceAccount: 'demo', audiences: ['istio-ca'], ttlSeconds: 600 });
    const jwtHits = async (): Promise<number> => metricValue((await getText(`${ca.monitoringUrl}/metrics`)).body, 'meshca_jwt_cache_hits_total');
    const hitsBefore = await jwtHits();
    const chain = assertOk(await createCertificate(client, { csr: workload.csrPem, token: devToken }));
    assert.match(opensslFacts(chain[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/dev\/sa\/demo/);
    // The same token again is answered from the cache of verified tokens.
    assertOk(await createCertificate(client, { csr: workload.csrPem, token: devToken }));
    assert.equal((await jwtHits()) - hitsBefore, 1);
    const serial = parseCertificate(certificatesFromPem(chain[0]!)[0]!).serialHex;
    const record = await waitForRecord(ca.proc, (r) => r.msg === 'certificate issued' && r.serial === serial);
    assert.equal(record.authenticator, 'jwt');

    // An OIDC issuer whose JWKS is fetched over HTTP; identity from the kubernetes.io claims only.
    const oidcToken = await new jose.SignJWT({ 'kubernetes.io': { namespace: 'oidc-ns', serviceaccount: { name: 'oidc-sa' } } })
      .setProtectedHeader({ alg: 'RS256', kid: 'oidc-1' })
      .setIssuer(OIDC_ISSUER)
      .setAudience('istio-ca')
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(oidcKey);
    const oidcChain = assertOk(await createCertificate(client, { csr: workload.csrPem, token: oidcToken }));
    assert.match(opensslFacts(oidcChain[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/oidc-ns\/sa\/oidc-sa/);

    const wrongAudience = await devIssuer.mint({ namespace: 'dev', serviceAccount: 'demo', audiences: ['other'], ttlSeconds: 600 });
    const details = assertStatus(await createCertificate(client, { csr: workload.csrPem, token: wrongAudience }), grpc.status.UNAUTHENTICATED, /^request authenticate failure: /);
    assert.match(
      details,
      /jwt: the token's audiences \["other"\] include none of the audiences the CA accepts \["istio-ca"\]: mint the token for one of them \(a projected service-account token's audience\) or add its audience to the "audiences" of JWT_RULE issuer https:\/\/meshca\.dev\.local$/,
    );
    // The CA's log says the same.
    await waitForRecord(ca.proc, (r) => r.msg === 'CSR request refused: authentication failed' && r.reason === details); // the log line may trail the answer
    const expired = await devIssuer.mint({ namespace: 'dev', serviceAccount: 'demo', audiences: ['istio-ca'], ttlSeconds: 1, now: Date.now() - 3600_000 });
    assertStatus(await createCertificate(client, { csr: workload.csrPem, token: expired }), grpc.status.UNAUTHENTICATED, /jwt: the token has expired/);
  });

  test('1000 requests with one token cost one TokenReview call, and the metrics show it', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'bulk' });
    const reviewsBefore = kube.state.tokenReviewCount;
    const metricsBefore = (await getText(`${ca.monitoringUrl}/metrics`)).body;
    let ok = 0;
    for (let batch = 0; batch < 10; batch++) {
      const results = await Promise.all(Array.from({ length: 100 }, () => createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 600 })));
      ok += results.filter((r) => r.ok).length;
    }
    assert.equal(ok, 1000);
    assert.equal(kube.state.tokenReviewCount - reviewsBefore, 1, 'one TokenReview for 1000 requests');
    const metricsAfter = (await getText(`${ca.monitoringUrl}/metrics`)).body;
    const delta = (name: string, labels: Record<string, string> = {}): number => metricValue(metricsAfter, name, labels) - metricValue(metricsBefore, name, labels);
    assert.equal(delta('meshca_tokenreview_requests_total', { result: 'authenticated' }), 1);
    assert.equal(delta('meshca_tokenreview_cache_hits_total'), 999);
    assert.equal(delta('citadel_server_csr_count'), 1000);
    assert.equal(delta('citadel_server_success_cert_issuance_count'), 1000);
    assert.equal(delta('meshca_sign_duration_seconds_count'), 1000);
  });

  test('the serving certificate is issued by the CA for --server-dns names', async () => {
    const port = Number(ca.grpcAddress.split(':').pop());
    const peer = await new Promise<ReturnType<import('node:tls').TLSSocket['getPeerCertificate']>>((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port, servername: SERVER_NAME, ca: ca.rootPem, ALPNProtocols: ['h2'] }, () => {
        resolve(socket.getPeerCertificate());
        socket.end();
      });
      socket.on('error', reject);
    });
    assert.match(peer.subjectaltname ?? '', /DNS:meshca\.istio-system\.svc/);
    // The handshake above verified the chain against the CA root; a name the certificate lacks is refused.
    await assert.rejects(
      new Promise((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port, servername: 'other.example', ca: ca.rootPem, ALPNProtocols: ['h2'] }, () => resolve(socket.end()));
        socket.on('error', reject);
      }),
      /does not match|altnames/i,
    );
  });

  test('/ready, /healthz, /debug/ca and /metrics', async () => {
    const ready = await getText(`${ca.monitoringUrl}/ready`);
    assert.equal(ready.status, 200);
    assert.equal((JSON.parse(ready.body) as { ready: boolean }).ready, true);
    assert.equal((await getText(`${ca.monitoringUrl}/healthz`)).status, 200);

    const debug = JSON.parse((await getText(`${ca.monitoringUrl}/debug/ca`)).body) as {
      trustDomain: string;
      keySource: string;
      signingCertificate: { serial: string; notAfter: string; uris: string[] };
      roots: { fingerprintSha256: string }[];
      servingCertificate: { dnsNames: string[] };
      authenticators: string[];
    };
    assert.equal(debug.trustDomain, TD);
    assert.equal(debug.keySource, 'self-signed');
    assert.deepEqual(debug.authenticators, ['client-cert', 'tokenreview', 'jwt']);
    const opensslFingerprint = execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256'], { input: ca.rootPem, encoding: 'utf8' }).split('=')[1]!.trim();
    assert.equal(debug.roots[0]!.fingerprintSha256, opensslFingerprint);
    const rootSerial = execFileSync('openssl', ['x509', '-noout', '-serial'], { input: ca.rootPem, encoding: 'utf8' }).split('=')[1]!.trim();
    assert.equal(debug.signingCertificate.serial.toLowerCase().replace(/^0+/, ''), rootSerial.toLowerCase().replace(/^0+/, ''));
    assert.deepEqual(debug.signingCertificate.uris, [`spiffe://${TD}`], 'the self-signed root names its trust domain');
    assert.deepEqual(debug.servingCertificate.dnsNames, [SERVER_NAME, 'istiod.istio-system.svc'], 'the default names follow POD_NAMESPACE (unset here: istio-system)');

    const metrics = (await getText(`${ca.monitoringUrl}/metrics`)).body;
    for (const name of [
      'citadel_server_csr_count',
      'citadel_server_authentication_failure_count',
      'citadel_server_success_cert_issuance_count',
      'citadel_server_root_cert_expiry_timestamp',
      'citadel_server_cert_chain_expiry_timestamp',
      'meshca_sign_duration_seconds_bucket',
      'meshca_tokenreview_requests_total',
      'meshca_tokenreview_cache_hits_total',
    ]) {
      assert.match(metrics, new RegExp(`^${name}[{ ]`, 'm'), name);
    }
    assert.ok(metricValue(metrics, 'citadel_server_csr_sign_err_count', { error: 'TTL_ERROR' }) >= 1);
    assert.ok(metricValue(metrics, 'citadel_server_csr_sign_err_count', { error: 'CSR_ERROR' }) >= 1);
    assert.ok(metricValue(metrics, 'citadel_server_authentication_failure_count') >= 5);
    assert.ok(metricValue(metrics, 'meshca_tokenreview_requests_total', { result: 'error' }) >= 2);
    const rootNotAfter = opensslFacts(ca.rootPem).notAfter.getTime() / 1000;
    assert.equal(metricValue(metrics, 'citadel_server_root_cert_expiry_timestamp'), rootNotAfter);
  });

  test('SIGTERM lets an in-flight call finish, then exits 0', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'last-call' });
    const mark = kube.state.requests.length;
    kube.state.delayMs = 700;
    try {
      const call = createCertificate(client, { csr: workload.csrPem, token });
      while (!kube.state.requests.slice(mark).some((r) => r.path.endsWith('/tokenreviews'))) await new Promise((r) => setTimeout(r, 20));
      const exited = ca.proc.stop('SIGTERM', 15_000);
      assertOk(await call);
      assert.equal(await exited, 0);
      await ca.proc.waitForLog(/^CA server stopped$/, 1000);
    } finally {
      kube.state.delayMs = 0;
    }
  });
});
