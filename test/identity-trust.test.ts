/**
 * Identities are built in one place and only from valid Kubernetes names (SECURITY.md: "Identities cannot be
 * forged by formatting"): a '/' or ':' in a namespace or service account never adds SPIFFE path segments, by
 * TokenReview username, JWT `sub` or `kubernetes.io` claims; a client certificate is renewed only for this CA's
 * own trust domain (one of a trust-domain alias is renewed in it) and never for longer than DEFAULT_WORKLOAD_CERT_TTL; a JWT must expire, and soon enough.
 * The end-to-end part runs the real `meshca ca` binary against the Kubernetes API stand-in and checks what it
 * issues with openssl.
 */
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import * as jose from 'jose';
import { ClientCertAuthenticator, JwtAuthenticator, parseJwtRules, parseServiceAccountUsername, type AuthOutcome, type JwtRule } from '../src/authn/index.js';
import { DEV_ISSUER, DevTokenIssuer } from '../src/authn/dev-issuer.js';
import {
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  generateKeyPairFor,
  isPkiError,
  LeafIssuer,
  parseCertificate,
  parseSpiffeId,
  spkiDer,
  WorkloadId,
} from '../src/pki/index.js';
import { decodeReviewOutcome, encodeReviewOutcome } from '../src/server/cluster-worker.js';
import type { IstioCaClient } from '../src/wire/protos.js';
import { caClient, createCertificate, getText, opensslFacts, opensslKeyAndCsr, startCa, type CallResult, type KeyAndCsr, type RunningCa, waitForRecord } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const TD = 'cluster.local';
const INJECTED_SA = 'x/ns/kube-system/sa/admin';
const INJECTED_SUB = `system:serviceaccount:default:${INJECTED_SA}`;

function refusesAsSpiffeError(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (error) {
    assert.ok(isPkiError(error) && error.code === 'ERR_SPIFFE_ID', `expected PkiError ERR_SPIFFE_ID, got ${String(error)}`);
    return true;
  }
}

// Strings built mostly from the characters that matter (separators, case, dots), so valid names come up often.
const nameChars = fc.constantFrom('a', 'b', 'z', '0', '9', '-', '.', '/', ':', '_', 'A', '%', '@', '?', '#', ' ', 'é', '\u0000');
const interestingName = fc.oneof(
  fc.array(nameChars, { maxLength: 12 }).map((chars) => chars.join('')),
  fc.string({ maxLength: 40 }),
  fc.constantFrom('default', 'kube-system', INJECTED_SA, 'a'.repeat(63), 'a'.repeat(64), `${'a'.repeat(63)}.${'b'.repeat(63)}`, 'a'.repeat(254), '..', '.', ''),
);
const interestingTrustDomain = fc.oneof(interestingName, fc.constantFrom(TD, 'other.td', 'example.org', 'Cluster.Local', 'td:8080', 'td/ns'));

describe('WorkloadId refuses or round-trips exactly (property)', () => {
  test('for any namespace, service account and trust domain: refused, or the URI parses back to exactly that triple', () => {
    fc.assert(
      fc.property(interestingTrustDomain, interestingName, interestingName, (trustDomain, namespace, serviceAccount) => {
        let id: WorkloadId | undefined;
        if (refusesAsSpiffeError(() => (id = WorkloadId.of({ trustDomain, namespace, serviceAccount })))) return;
        const back = WorkloadId.parse(id!.uri);
        assert.deepEqual([back.trustDomain, back.namespace, back.serviceAccount], [trustDomain, namespace, serviceAccount]);
        assert.ok(back.equals(id!));
        // Exactly four path segments: nothing in a name can add one.
        assert.deepEqual(parseSpiffeId(id!.uri).path.split('/'), ['', 'ns', namespace, 'sa', serviceAccount]);
      }),
      { numRuns: 3000 },
    );
  });

  test('for any URI: WorkloadId.parse refuses, or rebuilding from its parts gives the same URI', () => {
    const uri = fc.oneof(
      fc.tuple(interestingTrustDomain, interestingName, interestingName).map(([td, ns, sa]) => `spiffe://${td}/ns/${ns}/sa/${sa}`),
      fc.string({ maxLength: 80 }).map((rest) => `spiffe://${rest}`),
    );
    fc.assert(
      fc.property(uri, (text) => {
        let id: WorkloadId | undefined;
        if (refusesAsSpiffeError(() => (id = WorkloadId.parse(text)))) return;
        assert.equal(WorkloadId.of({ trustDomain: id!.trustDomain, namespace: id!.namespace, serviceAccount: id!.serviceAccount }).uri, text);
      }),
      { numRuns: 3000 },
    );
  });

  test('parseServiceAccountUsername returns only valid Kubernetes names, exactly as written', () => {
    fc.assert(
      fc.property(interestingName, interestingName, (namespace, serviceAccount) => {
        const parsed = parseServiceAccountUsername(`system:serviceaccount:${namespace}:${serviceAccount}`);
        if (parsed === null) return;
        assert.deepEqual(parsed, { namespace, serviceAccount });
        assert.equal(WorkloadId.of({ trustDomain: TD, ...parsed }).uri, `spiffe://${TD}/ns/${namespace}/sa/${serviceAccount}`);
      }),
      { numRuns: 3000 },
    );
    assert.equal(parseServiceAccountUsername(INJECTED_SUB), null);
    assert.equal(parseServiceAccountUsername('system:serviceaccount:default:a:b'), null);
    assert.equal(parseServiceAccountUsername('system:serviceaccount:Default:web'), null);
    assert.equal(parseServiceAccountUsername('system:serviceaccount::web'), null);
    assert.deepEqual(parseServiceAccountUsername('system:serviceaccount:default:web.v1'), { namespace: 'default', serviceAccount: 'web.v1' });
  });
});

describe('client certificate renewal: only this trust domain, only ns/<ns>/sa/<sa>, exactly one URI SAN', () => {
  const rootKey = generateKeyPairFor('ec-p256').privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: 'shared-root' }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
  const issuer = new LeafIssuer({ certificate: root, privateKey: rootKey });
  const leafKey = generateKeyPairFor('ec-p256').privateKey;
  const present = (uris: string[]): Promise<AuthOutcome> =>
    new ClientCertAuthenticator({ trustDomain: TD }).authenticate({
      header: () => undefined,
      peerCertificateDer: issuer.issue({ spkiDer: spkiDer(leafKey), uris, ttlSeconds: 3600 }).der,
    });

  test('a certificate of this trust domain authenticates as exactly its WorkloadId', async () => {
    const outcome = await present([`spiffe://${TD}/ns/default/sa/web`]);
    assert.equal(outcome.kind, 'ok');
    if (outcome.kind === 'ok') {
      assert.ok(outcome.caller.identity instanceof WorkloadId);
      assert.equal(outcome.caller.identity.uri, `spiffe://${TD}/ns/default/sa/web`);
    }
  });

  test('other trust domains, other path shapes and several URI SANs are refused with the reason', async () => {
    assert.deepEqual(await present(['spiffe://other.td/anything']), {
      kind: 'denied',
      reason: 'client certificate URI SAN is not a workload identity: "spiffe://other.td/anything" is not of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>',
    });
    assert.deepEqual(await present(['spiffe://other.td/ns/default/sa/web']), {
      kind: 'denied',
      reason:
        `client certificate is for trust domain "other.td"; this CA accepts only spiffe://${TD}/ns/<namespace>/sa/<service account>; ` +
        'if "other.td" is this mesh\'s former trust domain, add it to --trust-domain-aliases (MESHCA_TRUST_DOMAIN_ALIASES)',
    });
    const path = await present([`spiffe://${TD}/ns/default/sa/web/extra`]);
    assert.equal(path.kind, 'denied');
    if (path.kind === 'denied') assert.match(path.reason, /is not of the form spiffe:\/\/<trust domain>\/ns\/<namespace>\/sa\/<service account>/);
    assert.deepEqual(await present([`spiffe://${TD}/ns/default/sa/web`, `spiffe://${TD}/ns/kube-system/sa/admin`]), {
      kind: 'denied',
      reason: 'client certificate has 2 URI SANs; a workload certificate carries exactly one SPIFFE ID',
    });
    assert.deepEqual(await present([]), { kind: 'denied', reason: 'client certificate has no SPIFFE ID URI SAN' });
    assert.throws(() => new ClientCertAuthenticator({ trustDomain: 'Not/A/Domain' }), /trust domain/);
  });

  test('a certificate of a trust-domain alias renews as the same workload in the current trust domain; other domains are still refused', async () => {
    const authenticator = new ClientCertAuthenticator({ trustDomain: TD, trustDomainAliases: ['old.td', 'older.td'] });
    const presentTo = (uri: string): Promise<AuthOutcome> =>
      authenticator.authenticate({ header: () => undefined, peerCertificateDer: issuer.issue({ spkiDer: spkiDer(leafKey), uris: [uri], ttlSeconds: 3600 }).der });
    const migrated = await presentTo('spiffe://older.td/ns/shop/sa/cart');
    assert.equal(migrated.kind, 'ok');
    if (migrated.kind === 'ok') {
      assert.equal(migrated.caller.identity.uri, `spiffe://${TD}/ns/shop/sa/cart`);
      assert.equal(migrated.caller.migratedFrom, 'spiffe://older.td/ns/shop/sa/cart');
      assert.equal(migrated.caller.subject, 'spiffe://older.td/ns/shop/sa/cart', 'the audit names the certificate presented');
    }
    const current = await presentTo(`spiffe://${TD}/ns/shop/sa/cart`);
    assert.ok(current.kind === 'ok' && current.caller.migratedFrom === undefined);
    assert.deepEqual(await presentTo('spiffe://other.td/ns/shop/sa/cart'), {
      kind: 'denied',
      reason:
        `client certificate is for trust domain "other.td"; this CA accepts only spiffe://${TD}/ns/<namespace>/sa/<service account> (or its aliases "old.td", "older.td"); ` +
        'if "other.td" is this mesh\'s former trust domain, add it to --trust-domain-aliases (MESHCA_TRUST_DOMAIN_ALIASES)',
    });
    assert.throws(() => new ClientCertAuthenticator({ trustDomain: TD, trustDomainAliases: ['Old.TD'] }), /SPIFFE trust domain "Old.TD" may contain only/);
  });
});

describe('JWT lifetime: exp is required and bounded', () => {
  const temp = makeTempDir('meshca-identity-jwt-');
  after(() => temp.cleanup());
  const ISSUER = 'https://issuer.identity.test';
  let privateKey: jose.CryptoKey;
  let jwksFile: string;
  const NOW = Date.UTC(2030, 0, 1);
  const nowSeconds = NOW / 1000;

  before(async () => {
    const pair = await jose.generateKeyPair('ES256');
    privateKey = pair.privateKey;
    jwksFile = path.join(temp.dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await jose.exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256' }] }));
  });

  const authenticator = (rule: Partial<JwtRule> = {}): Promise<JwtAuthenticator> =>
    JwtAuthenticator.create({
      rules: [{ issuer: ISSUER, jwksFile, audiences: ['istio-ca'], ...rule }],
      defaultAudiences: ['istio-ca'],
      trustDomain: TD,
      localClusterId: 'Kubernetes',
      now: () => NOW,
    });
  const sign = (claims: jose.JWTPayload): Promise<string> =>
    new jose.SignJWT({ iss: ISSUER, aud: 'istio-ca', sub: 'system:serviceaccount:default:web', ...claims }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(privateKey);
  const check = async (auth: JwtAuthenticator, claims: jose.JWTPayload): Promise<AuthOutcome> => {
    const token = await sign(claims);
    return auth.authenticate({ header: (name) => (name === 'authorization' ? `Bearer ${token}` : undefined) });
  };

  test('a token without exp is refused, saying so', async () => {
    assert.deepEqual(await check(await authenticator(), { iat: nowSeconds }), {
      kind: 'denied',
      reason: 'the token has no exp claim; tokens that never expire are not accepted',
    });
  });

  test('an absurd lifetime is refused, by exp - iat or (without iat) by exp - now', async () => {
    const auth = await authenticator();
    const tenYears = 10 * 365 * 86400;
    assert.deepEqual(await check(auth, { iat: nowSeconds, exp: nowSeconds + tenYears }), {
      kind: 'denied',
      reason: `the token's lifetime (exp - iat) is 3650d; at most 366d is accepted for issuer ${ISSUER} (max_token_lifetime in JWT_RULE)`,
    });
    const noIat = await check(auth, { exp: nowSeconds + tenYears });
    assert.equal(noIat.kind, 'denied');
    if (noIat.kind === 'denied') assert.match(noIat.reason, /^the token is still valid for 3650d \(exp - now\); at most 366d/);
    // An iat in the future does not shorten the lifetime that counts.
    const futureIat = await check(auth, { iat: nowSeconds + tenYears - 3600, exp: nowSeconds + tenYears });
    assert.equal(futureIat.kind, 'denied');
  });

  test("Kubernetes' extended 365-day projected tokens and ordinary ones still work", async () => {
    const auth = await authenticator();
    const extended = await check(auth, { iat: nowSeconds, nbf: nowSeconds, exp: nowSeconds + 365 * 86400, 'kubernetes.io': { namespace: 'default', serviceaccount: { name: 'web' }, warnafter: nowSeconds + 3607 } });
    assert.equal(extended.kind, 'ok', JSON.stringify(extended));
    const hour = await check(auth, { iat: nowSeconds, exp: nowSeconds + 3600 });
    assert.equal(hour.kind, 'ok');
    if (hour.kind === 'ok') assert.equal(hour.caller.identity.uri, `spiffe://${TD}/ns/default/sa/web`);
  });

  test('max_token_lifetime in JWT_RULE lowers the bound; bad values are refused at start-up', async () => {
    const [rule] = parseJwtRules(JSON.stringify({ issuer: ISSUER, jwks_file: jwksFile, audiences: ['istio-ca'], max_token_lifetime: '1h' }));
    assert.equal(rule!.maxTokenLifetimeSeconds, 3600);
    const auth = await authenticator({ maxTokenLifetimeSeconds: rule!.maxTokenLifetimeSeconds! });
    assert.equal((await check(auth, { iat: nowSeconds, exp: nowSeconds + 3600 })).kind, 'ok');
    const twoHours = await check(auth, { iat: nowSeconds, exp: nowSeconds + 7200 });
    assert.equal(twoHours.kind, 'denied');
    if (twoHours.kind === 'denied') assert.match(twoHours.reason, /lifetime \(exp - iat\) is 7200s; at most 3600s is accepted/);
    assert.throws(() => parseJwtRules(JSON.stringify({ issuer: ISSUER, jwks_file: jwksFile, max_token_lifetime: 'forever' })), /"max_token_lifetime" must be a duration/);
    assert.throws(() => parseJwtRules(JSON.stringify({ issuer: ISSUER, jwks_file: jwksFile, max_token_lifetime: 3600 })), /"max_token_lifetime" must be a duration/);
  });

  test('sub and kubernetes.io claims: malformed names and disagreements are refused, never formatted', async () => {
    const auth = await authenticator();
    const exp = nowSeconds + 600;
    const bySub = await check(auth, { exp, sub: INJECTED_SUB });
    assert.deepEqual(bySub, { kind: 'denied', reason: `sub "${INJECTED_SUB}" is not system:serviceaccount:<namespace>:<service account> with valid Kubernetes names` });
    const colons = await check(auth, { exp, sub: 'system:serviceaccount:default:a:b' });
    assert.equal(colons.kind, 'denied');
    const byClaims = await check(auth, { exp, sub: undefined, 'kubernetes.io': { namespace: 'default', serviceaccount: { name: INJECTED_SA } } });
    assert.equal(byClaims.kind, 'denied');
    if (byClaims.kind === 'denied') assert.match(byClaims.reason, /^the kubernetes.io claims name no valid service account: service account "x\/ns\/kube-system\/sa\/admin" is not a Kubernetes service-account name/);
    const byNamespace = await check(auth, { exp, sub: undefined, 'kubernetes.io': { namespace: 'default/sa/admin/ns/kube-system', serviceaccount: { name: 'web' } } });
    assert.equal(byNamespace.kind, 'denied');
    const disagree = await check(auth, { exp, 'kubernetes.io': { namespace: 'kube-system', serviceaccount: { name: 'admin' } } });
    assert.deepEqual(disagree, { kind: 'denied', reason: 'sub and the kubernetes.io claims name different service accounts' });
  });
});

describe('--workers: a reviewed identity crosses processes as a URI and is parsed again', () => {
  const identity = WorkloadId.of({ trustDomain: TD, namespace: 'default', serviceAccount: 'web' });
  const ok: AuthOutcome = { kind: 'ok', caller: { authenticator: 'tokenreview', identity, subject: 'system:serviceaccount:default:web', kubernetes: { clusterId: 'Kubernetes', namespace: 'default', serviceAccount: 'web', podName: 'p' } } };

  test('round trip through a structured clone gives a real WorkloadId', () => {
    const decoded = decodeReviewOutcome(structuredClone(encodeReviewOutcome(ok)), TD);
    assert.equal(decoded.kind, 'ok');
    if (decoded.kind === 'ok') {
      assert.ok(decoded.caller.identity instanceof WorkloadId);
      assert.ok(decoded.caller.identity.equals(identity));
      assert.deepEqual(decoded.caller.kubernetes, ok.caller.kubernetes);
    }
    assert.deepEqual(decodeReviewOutcome({ kind: 'denied', reason: 'r' }, TD), { kind: 'denied', reason: 'r' });
  });

  test('a malformed, injected or foreign identity from the other side fails closed', () => {
    const encoded = encodeReviewOutcome(ok);
    if (encoded.kind !== 'ok') throw new Error('unreachable');
    const variants: unknown[] = [
      { ...encoded, caller: { ...encoded.caller, identity: `spiffe://${TD}/ns/default/sa/${INJECTED_SA}` } },
      { ...encoded, caller: { ...encoded.caller, identity: 'spiffe://other.td/ns/default/sa/web' } },
      // What a WorkloadId becomes when cloned without encoding: its fields, not an identity.
      { ...encoded, caller: { ...encoded.caller, identity: structuredClone({ ...identity }) } },
      { ...encoded, caller: { ...encoded.caller, authenticator: 'root' } },
      { kind: 'ok' },
      'ok',
    ];
    for (const variant of variants) assert.equal(decodeReviewOutcome(variant, TD).kind, 'unavailable', JSON.stringify(variant));
  });
});

function assertOk(result: CallResult): string[] {
  if (!result.ok) assert.fail(`expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

function assertRefused(result: CallResult, pattern: RegExp): string {
  if (result.ok) assert.fail(`expected UNAUTHENTICATED, got a certificate for ${opensslFacts(result.chain[0]!).text.match(/URI:\S+/)?.[0]}`);
  assert.equal(grpc.status[result.code], 'UNAUTHENTICATED', result.details);
  assert.match(result.details, pattern);
  return result.details;
}

describe('meshca ca end to end: injected names, foreign renewals, long renewals and unbounded JWTs are refused', () => {
  const temp = makeTempDir('meshca-identity-trust-');
  const LENIENT_ISSUER = 'https://lenient-issuer.test';
  let kube: KubeStandin;
  let ca: RunningCa;
  let client: IstioCaClient;
  let workload: KeyAndCsr;
  let devIssuer: DevTokenIssuer;
  let lenientKey: jose.CryptoKey;

  // An issuer that signs whatever it is asked (a misconfigured OIDC provider): the CA must still refuse.
  const lenientToken = (claims: jose.JWTPayload): Promise<string> =>
    new jose.SignJWT({ iss: LENIENT_ISSUER, aud: 'istio-ca', ...claims }).setProtectedHeader({ alg: 'ES256', kid: 'lenient' }).sign(lenientKey);
  const nowSeconds = (): number => Math.floor(Date.now() / 1000);
  const issuedRecords = (): Record<string, unknown>[] => ca.proc.records.filter((r) => r.msg === 'certificate issued');

  before(async () => {
    kube = await startKubeStandin();
    devIssuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'dev-issuer'));
    const pair = await jose.generateKeyPair('ES256');
    lenientKey = pair.privateKey;
    const lenientJwks = path.join(temp.dir, 'lenient-jwks.json');
    writeFileSync(lenientJwks, JSON.stringify({ keys: [{ ...(await jose.exportJWK(pair.publicKey)), kid: 'lenient', alg: 'ES256' }] }));
    const jwtRule = JSON.stringify([
      { issuer: DEV_ISSUER, jwks_file: devIssuer.jwksPath, audiences: ['istio-ca'] },
      { issuer: LENIENT_ISSUER, jwks_file: lenientJwks, audiences: ['istio-ca'] },
    ]);
    ca = await startCa(path.join(temp.dir, 'state'), ['--kubeconfig', kube.kubeconfigPath, '--trust-domain-aliases', 'old.td'], { JWT_RULE: jwtRule });
    client = caClient(ca.grpcAddress, ca.rootPem);
    workload = opensslKeyAndCsr(temp.dir, 'workload', { spiffeId: `spiffe://${TD}/ns/kube-system/sa/admin` });
  });

  after(async () => {
    client?.close();
    await ca?.proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  test('a "/" in the service account is refused by JWT sub, kubernetes.io claims and TokenReview username; nothing is issued', async () => {
    const issuedBefore = issuedRecords().length;
    const exp = nowSeconds() + 600;
    assertRefused(
      await createCertificate(client, { csr: workload.csrPem, token: await lenientToken({ sub: INJECTED_SUB, iat: nowSeconds(), exp }) }),
      /jwt: sub "system:serviceaccount:default:x\/ns\/kube-system\/sa\/admin" is not system:serviceaccount:<namespace>:<service account> with valid Kubernetes names/,
    );
    assertRefused(
      await createCertificate(client, {
        csr: workload.csrPem,
        token: await lenientToken({ 'kubernetes.io': { namespace: 'default', serviceaccount: { name: INJECTED_SA } }, iat: nowSeconds(), exp }),
      }),
      /jwt: the kubernetes.io claims name no valid service account: service account "x\/ns\/kube-system\/sa\/admin" is not a Kubernetes service-account name/,
    );
    assertRefused(
      await createCertificate(client, {
        csr: workload.csrPem,
        token: await lenientToken({ 'kubernetes.io': { namespace: 'default/sa/admin/ns/kube-system', serviceaccount: { name: 'x' } }, iat: nowSeconds(), exp }),
      }),
      /jwt: the kubernetes.io claims name no valid service account: namespace "default\/sa\/admin\/ns\/kube-system" is not a Kubernetes namespace name/,
    );
    // The API server's verdict names the user; the CA still refuses a username that is not made of Kubernetes names.
    const reviewed = await kube.mintToken({ namespace: 'default', serviceAccount: INJECTED_SA });
    assertRefused(
      await createCertificate(client, { csr: workload.csrPem, token: reviewed }),
      /tokenreview: the token's user "system:serviceaccount:default:x\/ns\/kube-system\/sa\/admin" is not system:serviceaccount:<namespace>:<service account> with valid Kubernetes names/,
    );
    const colons = await kube.mintToken({ namespace: 'default', serviceAccount: 'x:kube-system:admin' });
    assertRefused(await createCertificate(client, { csr: workload.csrPem, token: colons }), /tokenreview: the token's user "system:serviceaccount:default:x:kube-system:admin" is not/);
    // Give any late audit line a moment, then check none was written.
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(issuedRecords().length, issuedBefore, 'no certificate was issued');
    assert.ok(!ca.proc.lines.some((line) => line.includes('sa/x/ns/kube-system')), 'no injected SPIFFE ID appears in any log line');
  });

  test('JWT_RULE: no exp is refused, an absurd lifetime is refused, a good token is issued for its identity', async () => {
    assertRefused(
      await createCertificate(client, { csr: workload.csrPem, token: await lenientToken({ sub: 'system:serviceaccount:default:web', iat: nowSeconds() }) }),
      /jwt: the token has no exp claim; tokens that never expire are not accepted/,
    );
    assertRefused(
      await createCertificate(client, {
        csr: workload.csrPem,
        token: await lenientToken({ sub: 'system:serviceaccount:default:web', iat: nowSeconds(), exp: nowSeconds() + 100 * 365 * 86400 }),
      }),
      /jwt: the token's lifetime \(exp - iat\) is 36500d; at most 366d is accepted for issuer https:\/\/lenient-issuer\.test/,
    );
    const good = await lenientToken({ sub: 'system:serviceaccount:default:web', iat: nowSeconds(), exp: nowSeconds() + 3600 });
    const chain = assertOk(await createCertificate(client, { csr: workload.csrPem, token: good }));
    const verified = opensslVerifyResponseChain(chain);
    assert.ok(verified.ok, verified.output);
    assert.match(opensslFacts(chain[0]!).text, /X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/web\s*\n/);
    const devToken = await devIssuer.mint({ namespace: 'dev', serviceAccount: 'demo', audiences: ['istio-ca'], ttlSeconds: 600 });
    assert.match(opensslFacts(assertOk(await createCertificate(client, { csr: workload.csrPem, token: devToken }))[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/dev\/sa\/demo/);
  });

  test('renewal with a certificate for another trust domain, from a CA sharing our root, is refused; one of the alias is renewed in ours', async () => {
    // Another cluster's CA under the same root (the root key is in the CA's state directory).
    const stateDir = ca.stateDir;
    const rootKey = createPrivateKey(readFileSync(path.join(stateDir, 'ca-key.pem'), 'utf8'));
    const root = parseCertificate(certificatesFromPem(readFileSync(path.join(stateDir, 'ca-cert.pem'), 'utf8'))[0]!);
    const otherCaKey = generateKeyPairFor('ec-p256').privateKey;
    const otherCa = parseCertificate(
      createCaCertificate({ subject: { organization: 'other-cluster' }, subjectKey: otherCaKey, issuer: { certificate: root, privateKey: rootKey }, notAfter: new Date(Date.now() + 86400_000) }),
    );
    const leafKey = generateKeyPairFor('ec-p256').privateKey;
    const keyPem = leafKey.export({ format: 'pem', type: 'pkcs8' }) as string;
    const renewWith = async (uris: string[]): Promise<CallResult> => {
      const leaf = new LeafIssuer({ certificate: otherCa, privateKey: otherCaKey }).issue({ spkiDer: spkiDer(leafKey), uris, ttlSeconds: 3600 });
      const renewing = caClient(ca.grpcAddress, ca.rootPem, { keyPem, certChainPem: certificateToPem(leaf.der) + certificateToPem(otherCa.der) });
      try {
        return await createCertificate(renewing, { csr: workload.csrPem, validitySeconds: 90 * 86400 });
      } finally {
        renewing.close();
      }
    };
    assertRefused(await renewWith(['spiffe://other.td/anything']), /client-cert: client certificate URI SAN is not a workload identity: "spiffe:\/\/other\.td\/anything" is not of the form/);
    assertRefused(
      await renewWith(['spiffe://other.td/ns/default/sa/web']),
      /client-cert: client certificate is for trust domain "other\.td"; this CA accepts only spiffe:\/\/cluster\.local\/ns\/<namespace>\/sa\/<service account> \(or its aliases "old\.td"\); if "other\.td" is this mesh's former trust domain, add it to --trust-domain-aliases/,
    );
    // A certificate of the alias (the mesh's former trust domain) renews as the same workload in the current one.
    const migrated = assertOk(await renewWith(['spiffe://old.td/ns/default/sa/web']));
    assert.match(opensslFacts(migrated[0]!).text, /X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/web\s*\n/);
    const serial = parseCertificate(certificatesFromPem(migrated[0]!)[0]!).serialHex;
    const record = await waitForRecord(ca.proc, (r) => r.msg === 'certificate issued' && r.serial === serial);
    assert.equal(record.migratedFrom, 'spiffe://old.td/ns/default/sa/web');
    assert.equal(record.spiffeId, `spiffe://${TD}/ns/default/sa/web`);
    assert.equal(record.caller, 'spiffe://old.td/ns/default/sa/web');
    const debug = JSON.parse((await getText(`${ca.monitoringUrl}/debug/ca`)).body) as { trustDomain: string; trustDomainAliases: string[] };
    assert.deepEqual([debug.trustDomain, debug.trustDomainAliases], [TD, ['old.td']], '/debug/ca shows the aliases');
    assertRefused(await renewWith([`spiffe://${TD}/ns/default/sa/web`, `spiffe://${TD}/ns/kube-system/sa/admin`]), /client-cert: client certificate has 2 URI SANs/);
  });

  test('a same-trust-domain renewal asking for more than DEFAULT_WORKLOAD_CERT_TTL gets exactly the default (24h)', async () => {
    const agent = opensslKeyAndCsr(temp.dir, 'renewer', { spiffeId: `spiffe://${TD}/ns/default/sa/renewer` });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'renewer' });
    // A token may ask for up to MAX_WORKLOAD_CERT_TTL (90d).
    const first = assertOk(await createCertificate(client, { csr: agent.csrPem, token, validitySeconds: 30 * 86400 }));
    const firstFacts = opensslFacts(first[0]!);
    assert.equal((firstFacts.notAfter.getTime() - firstFacts.notBefore.getTime()) / 1000, 30 * 86400 + 120);
    const renewing = caClient(ca.grpcAddress, ca.rootPem, { keyPem: agent.keyPem, certChainPem: first.slice(0, -1).join('') });
    try {
      const renewed = assertOk(await createCertificate(renewing, { csr: agent.csrPem, validitySeconds: 30 * 86400 }));
      const facts = opensslFacts(renewed[0]!);
      assert.match(facts.text, /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/renewer\s*\n/);
      // NotBefore is backdated 2 minutes; NotAfter is 24h after issuance, not 30 days.
      assert.equal((facts.notAfter.getTime() - facts.notBefore.getTime()) / 1000, 86400 + 120);
      const serial = parseCertificate(certificatesFromPem(renewed[0]!)[0]!).serialHex;
      const record = await waitForRecord(ca.proc, (r) => r.msg === 'certificate issued' && r.serial === serial);
      assert.equal(record.authenticator, 'client-cert');
      assert.equal(record.ttlSeconds, 86400);
      assert.equal(record.ttlCappedFromSeconds, 30 * 86400);
      // A shorter renewal is left as asked.
      const short = assertOk(await createCertificate(renewing, { csr: agent.csrPem, validitySeconds: 3600 }));
      const shortFacts = opensslFacts(short[0]!);
      assert.equal((shortFacts.notAfter.getTime() - shortFacts.notBefore.getTime()) / 1000, 3600 + 120);
    } finally {
      renewing.close();
    }
  });
});
