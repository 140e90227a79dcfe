/**
 * The authenticators on their own, against the Kubernetes API stand-in over real HTTPS (through
 * @kubernetes/client-node) and real JWKS files/URLs: caching and coalescing of TokenReviews, failure kinds,
 * JWT rules, node impersonation, the dev issuer, and the `ca` configuration readers.
 */
import assert from 'node:assert/strict';
import { statSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Command } from 'commander';
import * as jose from 'jose';
import {
  AuthenticatorChain,
  JwtAuthenticator,
  KubeClusters,
  NodeImpersonation,
  parseJwtRules,
  TokenReviewAuthenticator,
  type AuthOutcome,
  type AuthRequest,
  type Authenticator,
  type Caller,
} from '../src/authn/index.js';
import { DEV_ISSUER, DevIssuerError, DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { addCaServerOptions, readCaServerConfig, type CaServerFlags } from '../src/config/ca.js';
import { ConfigError } from '../src/config/env.js';
import { loadKubeConfig } from '../src/kube/config.js';
import { WorkloadId } from '../src/pki/index.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { makeTempDir } from './support/process.js';

const temp = makeTempDir('meshca-authn-');
after(() => temp.cleanup());

function bearer(token: string | undefined, headers: Record<string, string> = {}): AuthRequest {
  const all: Record<string, string> = { ...headers, ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) };
  return { header: (name) => all[name] };
}

function okCaller(outcome: AuthOutcome): Caller {
  if (outcome.kind !== 'ok') assert.fail(`expected ok, got ${outcome.kind}: ${outcome.reason}`);
  return outcome.caller;
}

describe('TokenReview authenticator', () => {
  let kube: KubeStandin;
  let clusters: KubeClusters;
  before(async () => {
    kube = await startKubeStandin();
    clusters = KubeClusters.fromKubeConfigs('Kubernetes', [{ clusterId: 'Kubernetes', kubeConfig: await loadKubeConfig(kube.kubeconfigPath, {}) }]);
  });
  after(() => kube.close());

  function authenticator(options: { cacheTtlSeconds?: number; timeoutSeconds?: number; now?: () => number; hits?: { count: number } } = {}): TokenReviewAuthenticator {
    return new TokenReviewAuthenticator({
      clusters,
      audiences: ['istio-ca'],
      trustDomain: 'cluster.local',
      cacheTtlSeconds: options.cacheTtlSeconds ?? 60,
      timeoutSeconds: options.timeoutSeconds ?? 5,
      ...(options.now ? { now: options.now } : {}),
      observer: { onCacheHit: () => options.hits && options.hits.count++ },
    });
  }

  test('identity, pod facts from `extra`, and concurrent identical reviews coalesced into one API call', async () => {
    kube.state.addPod({ namespace: 'default', name: 'web-1', serviceAccount: 'web', nodeName: 'node-a' });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'web', podName: 'web-1' });
    const hits = { count: 0 };
    const auth = authenticator({ hits });
    const before = kube.state.tokenReviewCount;
    const outcomes = await Promise.all(Array.from({ length: 20 }, () => auth.authenticate(bearer(token))));
    assert.equal(kube.state.tokenReviewCount - before, 1);
    assert.equal(hits.count, 19);
    const caller = okCaller(outcomes[0]!);
    assert.equal(caller.identity.uri, 'spiffe://cluster.local/ns/default/sa/web');
    assert.equal(caller.subject, 'system:serviceaccount:default:web');
    assert.equal(caller.kubernetes?.podName, 'web-1');
    assert.equal(caller.kubernetes?.podUid, kube.state.get('pods', 'default', 'web-1')!.metadata.uid);
  });

  test('a cached review lasts until the earlier of the cache TTL and the token expiry', async () => {
    let now = Date.now();
    const auth = authenticator({ cacheTtlSeconds: 600, now: () => now });
    const shortLived = await kube.mintToken({ namespace: 'default', serviceAccount: 'short', ttlSeconds: 120 });
    const count = (): number => kube.state.tokenReviewCount;
    const start = count();
    okCaller(await auth.authenticate(bearer(shortLived)));
    now += 100_000;
    okCaller(await auth.authenticate(bearer(shortLived)));
    assert.equal(count() - start, 1, 'still cached before the token expires');
    now += 30_000;
    // Past the token's exp the cache must not answer (the stand-in's 60 s leeway still accepts it).
    okCaller(await auth.authenticate(bearer(shortLived)));
    assert.equal(count() - start, 2);

    const shortCache = authenticator({ cacheTtlSeconds: 10, now: () => now });
    const longLived = await kube.mintToken({ namespace: 'default', serviceAccount: 'long', ttlSeconds: 3600 });
    const start2 = count();
    okCaller(await shortCache.authenticate(bearer(longLived)));
    now += 9_000;
    okCaller(await shortCache.authenticate(bearer(longLived)));
    now += 2_000;
    okCaller(await shortCache.authenticate(bearer(longLived)));
    assert.equal(count() - start2, 2);
  });

  test('failures are never cached', async () => {
    const auth = authenticator();
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'web', audiences: ['other'] });
    const start = kube.state.tokenReviewCount;
    for (let i = 0; i < 2; i++) {
      const outcome = await auth.authenticate(bearer(token));
      assert.equal(outcome.kind, 'denied');
      if (outcome.kind === 'denied') {
        assert.equal(
          outcome.reason,
          `cluster "Kubernetes" did not authenticate the token: the token's audiences ["other"] include none of the audiences the CA accepts ["istio-ca"]: mint the token for one of them (a projected service-account token's audience) or add its audience to TOKEN_AUDIENCES`,
        );
      }
    }
    assert.equal(kube.state.tokenReviewCount - start, 2);
  });

  test('requests without a usable bearer token are skipped; unknown clusters are denied', async () => {
    const auth = authenticator();
    assert.equal((await auth.authenticate({ header: () => undefined })).kind, 'skip');
    assert.equal((await auth.authenticate({ header: (n) => (n === 'authorization' ? 'bearer abc' : undefined) })).kind, 'skip');
    assert.equal((await auth.authenticate({ header: (n) => (n === 'authorization' ? 'Bearer ' : undefined) })).kind, 'skip');
    const outcome = await auth.authenticate(bearer('x.y.z', { clusterid: 'mars' }));
    assert.deepEqual(outcome, { kind: 'denied', reason: 'unknown cluster ID "mars" in the clusterid header (this CA trusts "Kubernetes")' });
  });

  test('a reviewer whose own credentials are refused, and a slow API server, are unavailable (not denied)', async () => {
    const badConfig = path.join(temp.dir, 'bad-reviewer.yaml');
    writeFileSync(badConfig, kube.kubeconfigYaml.replace(kube.reviewerToken, 'not-the-reviewer-token'));
    const badClusters = KubeClusters.fromKubeConfigs('Kubernetes', [{ clusterId: 'Kubernetes', kubeConfig: await loadKubeConfig(badConfig, {}) }]);
    const auth = new TokenReviewAuthenticator({ clusters: badClusters, audiences: ['istio-ca'], trustDomain: 'cluster.local', cacheTtlSeconds: 60, timeoutSeconds: 5 });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'web' });
    const outcome = await auth.authenticate(bearer(token));
    assert.equal(outcome.kind, 'unavailable');
    if (outcome.kind === 'unavailable') assert.match(outcome.reason, /did not accept the CA's own credentials \(HTTP 401\)/);

    kube.state.delayMs = 1000;
    try {
      const slow = await authenticator({ timeoutSeconds: 0.2 }).authenticate(bearer(token));
      assert.equal(slow.kind, 'unavailable');
      if (slow.kind === 'unavailable') assert.match(slow.reason, /could not reach the Kubernetes API server .* no answer within 0\.2s/);
    } finally {
      kube.state.delayMs = 0;
    }
  });

  test('node impersonation checks the caller pod and the target pod on the same node', async () => {
    kube.state.addPod({ namespace: 'kube-system', name: 'agent-a', serviceAccount: 'agent', nodeName: 'node-a' });
    kube.state.addPod({ namespace: 'shop', name: 'cart-1', serviceAccount: 'cart', nodeName: 'node-a' });
    kube.state.addPod({ namespace: 'shop', name: 'pay-1', serviceAccount: 'pay', nodeName: 'node-b' });
    const impersonation = new NodeImpersonation({
      clusters,
      trustedNodeAccounts: [{ namespace: 'kube-system', serviceAccount: 'agent' }],
      trustDomain: 'cluster.local',
      // How long a request waits for a pod cache that is not ready.
      timeoutSeconds: 0.5,
      // Cut off from its API server for longer than this, the pod cache stops answering.
      caches: { maxStaleSeconds: 0.3 },
    });
    try {
      assert.deepEqual(await impersonation.podCaches?.cache('Kubernetes')?.whenReady(10_000), { ready: true }, 'the pod cache syncs');
      const agentUid = kube.state.get('pods', 'kube-system', 'agent-a')!.metadata.uid!;
      const caller = (podUid: string | undefined): Caller => ({
        authenticator: 'tokenreview',
        identity: WorkloadId.parse('spiffe://cluster.local/ns/kube-system/sa/agent'),
        subject: 'system:serviceaccount:kube-system:agent',
        kubernetes: { clusterId: 'Kubernetes', namespace: 'kube-system', serviceAccount: 'agent', podName: 'agent-a', ...(podUid ? { podUid } : {}) },
      });
      const allowed = await impersonation.authorize(caller(agentUid), 'spiffe://cluster.local/ns/shop/sa/cart');
      assert.equal(allowed.kind, 'ok');
      if (allowed.kind === 'ok') {
        assert.ok(allowed.identity.equals(WorkloadId.of({ trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'cart' })));
        assert.equal(allowed.node, 'node-a');
      }
      const elsewhere = await impersonation.authorize(caller(agentUid), 'spiffe://cluster.local/ns/shop/sa/pay');
      assert.equal(elsewhere.kind, 'denied');
      const staleUid = await impersonation.authorize(caller('00000000-0000-0000-0000-000000000000'), 'spiffe://cluster.local/ns/shop/sa/cart');
      assert.equal(staleUid.kind, 'denied');
      if (staleUid.kind === 'denied') assert.match(staleUid.reason, /does not match its token/);
      const unbound = await impersonation.authorize(caller(undefined), 'spiffe://cluster.local/ns/shop/sa/cart');
      assert.equal(unbound.kind, 'denied');
      const otherDomain = await impersonation.authorize(caller(agentUid), 'spiffe://evil.example/ns/shop/sa/cart');
      assert.equal(otherDomain.kind, 'denied');
      kube.state.down = true;
      try {
        // Polled, not slept on: the verdict changes once the cache notices its watch is gone.
        let down = await impersonation.authorize(caller(agentUid), 'spiffe://cluster.local/ns/shop/sa/cart');
        for (const deadline = Date.now() + 10_000; down.kind !== 'unavailable' && Date.now() < deadline; ) {
          await new Promise((resolve) => setTimeout(resolve, 20));
          down = await impersonation.authorize(caller(agentUid), 'spiffe://cluster.local/ns/shop/sa/cart');
        }
        assert.equal(down.kind, 'unavailable');
        if (down.kind === 'unavailable') assert.match(down.reason, /lost its watch .* out of date/);
      } finally {
        kube.state.down = false;
      }
    } finally {
      impersonation.close();
    }
  });
});

describe('Kubernetes API connections', () => {
  let kube: KubeStandin;
  before(async () => {
    kube = await startKubeStandin();
  });
  after(() => kube.close());

  async function clustersWith(maxConnections: number): Promise<KubeClusters> {
    return KubeClusters.fromKubeConfigs('Kubernetes', [{ clusterId: 'Kubernetes', kubeConfig: await loadKubeConfig(kube.kubeconfigPath, {}) }], {
      maxConnectionsPerCluster: maxConnections,
    });
  }

  function reviewer(clusters: KubeClusters, timeoutSeconds: number): TokenReviewAuthenticator {
    return new TokenReviewAuthenticator({ clusters, audiences: ['istio-ca'], trustDomain: 'cluster.local', cacheTtlSeconds: 60, timeoutSeconds, maxInFlight: 1000 });
  }

  const tokens = (count: number, prefix: string): Promise<string[]> =>
    Promise.all(Array.from({ length: count }, (_, i) => kube.mintToken({ namespace: 'default', serviceAccount: `${prefix}-${i}` })));

  test('many reviews share a few kept-alive connections, with the kubeconfig credentials', async () => {
    const clusters = await clustersWith(4);
    try {
      const auth = reviewer(clusters, 5);
      const burst = await tokens(40, 'burst');
      const connectionsBefore = kube.state.connections;
      const reviewsBefore = kube.state.tokenReviewCount;
      const outcomes = await Promise.all(burst.map((token) => auth.authenticate(bearer(token))));
      for (const [i, outcome] of outcomes.entries()) assert.equal(outcome.kind, 'ok', `review ${i} of the burst: ${JSON.stringify(outcome)}`);
      assert.equal(kube.state.tokenReviewCount - reviewsBefore, 40, 'one API call per distinct token');
      const opened = kube.state.connections - connectionsBefore;
      assert.ok(opened >= 1 && opened <= 4, `40 concurrent reviews opened ${opened} connections, expected 1 to 4 (the bound)`);
      // Later calls, one at a time, go over the connections already open.
      for (const token of await tokens(10, 'later')) assert.equal((await auth.authenticate(bearer(token))).kind, 'ok', 'a later review succeeds');
      assert.equal(kube.state.connections - connectionsBefore, opened, 'sequential reviews opened no new connection');
      const pool = clusters.resolve(undefined);
      assert.ok('cluster' in pool && pool.cluster.connections, 'clusters built from kubeconfigs have a connection pool');
      await new Promise((resolve) => setImmediate(resolve)); // slots come back right after the connection is put back
      assert.equal(pool.cluster.connections.callsActive, 0, 'no call holds a connection slot once all have answered');
    } finally {
      clusters.close();
    }
  });

  test('a call past its deadline ends, frees its slot and tears down only its own connection', async () => {
    const clusters = await clustersWith(2);
    const pool = (() => {
      const resolved = clusters.resolve(undefined);
      assert.ok('cluster' in resolved && resolved.cluster.connections, 'the cluster has a connection pool');
      return resolved.cluster.connections;
    })();
    try {
      const patient = reviewer(clusters, 5);
      const hasty = reviewer(clusters, 0.2);
      const [slowToken, fastToken, queuedToken, afterToken] = await tokens(4, 'deadline');
      // The server answers after 3 s; the hasty reviewer gives up after 0.2 s (wide margins: a busy machine).
      kube.state.delayMs = 3000;
      const slow = patient.authenticate(bearer(slowToken));
      const started = Date.now();
      const timedOut = await hasty.authenticate(bearer(fastToken));
      assert.equal(timedOut.kind, 'unavailable', `the hasty review times out: ${JSON.stringify(timedOut)}`);
      assert.ok(Date.now() - started < 2500, `the timed-out review answered after ${Date.now() - started} ms, before the server would have`);
      // Its underlying call has ended too: the slot and the in-flight count come back without waiting for the server.
      await until(() => hasty.apiCallsRunning === 0 && pool.callsActive === 1, 2000, 'the timed-out call settles and frees its slot while the slow one holds its own');
      assert.ok(Date.now() - started < 2500, 'its slot came back before the server answered');
      assert.equal((await slow).kind, 'ok', 'the slow call on the other connection was not torn down with it');

      // With both slots taken, a call whose deadline passes while it waits leaves the queue without connecting.
      const [holdToken] = await tokens(1, 'hold');
      // Counted on arrival: tokenReviewCount counts after the stand-in's delay, so the hasty call above, which
      // reached the server before it was torn down, could be counted after this line on a busy machine.
      const reviewsArrived = (): number => kube.state.requests.filter((r) => r.method === 'POST' && r.path === '/apis/authentication.k8s.io/v1/tokenreviews').length;
      const reviewsBefore = reviewsArrived();
      const hold = [patient.authenticate(bearer(afterToken)), patient.authenticate(bearer(holdToken))];
      await until(() => pool.callsActive === 2, 2000, 'both slots taken');
      const queued = await hasty.authenticate(bearer(queuedToken));
      assert.equal(queued.kind, 'unavailable', `the queued review times out: ${JSON.stringify(queued)}`);
      assert.equal(pool.callsWaiting, 0, 'the timed-out call left the queue');
      for (const outcome of await Promise.all(hold)) assert.equal(outcome.kind, 'ok', 'the calls holding the slots finish normally');
      assert.equal(reviewsArrived() - reviewsBefore, 2, 'the queued call never reached the API server');
      kube.state.delayMs = 0;
      assert.equal((await patient.authenticate(bearer(queuedToken))).kind, 'ok', 'the pool serves calls again afterwards');
      assert.ok(pool.openSockets <= 2, `at most 2 sockets open, found ${pool.openSockets}`);
    } finally {
      kube.state.delayMs = 0;
      clusters.close();
    }
  });
});

/** Polls `check` until it holds; fails with `what` after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('JWT authenticator', () => {
  test('verifies against a JWKS file and picks up a new key when the file changes', async () => {
    const dir = path.join(temp.dir, 'jwks-rotation');
    const first = await DevTokenIssuer.loadOrCreate(dir);
    const auth = await JwtAuthenticator.create({ rules: [first.jwtRule(['istio-ca'])], defaultAudiences: ['istio-ca'], trustDomain: 'cluster.local', localClusterId: 'Kubernetes' });
    const oldToken = await first.mint({ namespace: 'a', serviceAccount: 'b', audiences: ['istio-ca'], ttlSeconds: 60 });
    assert.deepEqual(okCaller(await auth.authenticate(bearer(oldToken))).identity.uri, 'spiffe://cluster.local/ns/a/sa/b');

    await rm(first.keyPath);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const second = await DevTokenIssuer.loadOrCreate(dir);
    assert.notEqual(second.kid, first.kid);
    const newToken = await second.mint({ namespace: 'a', serviceAccount: 'c', audiences: ['istio-ca'], ttlSeconds: 60 });
    assert.deepEqual(okCaller(await auth.authenticate(bearer(newToken))).identity.uri, 'spiffe://cluster.local/ns/a/sa/c');
    const old = await auth.authenticate(bearer(oldToken));
    assert.equal(old.kind, 'denied');
  });

  test('remembers a verified token until its exp (at most the cache TTL), never a refusal or another token', async () => {
    const dir = path.join(temp.dir, 'jwks-cache');
    const issuer = await DevTokenIssuer.loadOrCreate(dir);
    let now = Date.now();
    const auth = await JwtAuthenticator.create({ rules: [issuer.jwtRule(['istio-ca'])], defaultAudiences: ['istio-ca'], trustDomain: 'cluster.local', localClusterId: 'Kubernetes', now: () => now });
    const token = await issuer.mint({ namespace: 'a', serviceAccount: 'b', audiences: ['istio-ca'], ttlSeconds: 30, now });
    const first = okCaller(await auth.authenticate(bearer(token)));
    assert.equal(auth.cacheSize, 1);
    assert.equal(okCaller(await auth.authenticate(bearer(token))), first, 'the second call is answered from the cache');
    // Another token of another account is verified on its own, and a refused token is not remembered.
    const other = await issuer.mint({ namespace: 'a', serviceAccount: 'c', audiences: ['istio-ca'], ttlSeconds: 30, now });
    assert.equal(okCaller(await auth.authenticate(bearer(other))).identity.uri, 'spiffe://cluster.local/ns/a/sa/c');
    const wrongAudience = await issuer.mint({ namespace: 'a', serviceAccount: 'd', audiences: ['elsewhere'], ttlSeconds: 30, now });
    assert.equal((await auth.authenticate(bearer(wrongAudience))).kind, 'denied');
    assert.equal((await auth.authenticate(bearer(wrongAudience))).kind, 'denied');
    assert.equal(auth.cacheSize, 2);
    // Past exp (and jose's 5 s of leeway) the token is verified again, and refused as expired.
    now += 36_000;
    assert.deepEqual(await auth.authenticate(bearer(token)), { kind: 'denied', reason: 'the token has expired' });
    // A long-lived token is remembered for the cache TTL only.
    const long = await issuer.mint({ namespace: 'a', serviceAccount: 'e', audiences: ['istio-ca'], ttlSeconds: 3600, now });
    const cachedCaller = okCaller(await auth.authenticate(bearer(long)));
    now += 61_000;
    const again = okCaller(await auth.authenticate(bearer(long)));
    assert.notEqual(again, cachedCaller, 'verified afresh after the TTL');
    assert.equal(again.identity.uri, cachedCaller.identity.uri);
    // A changed JWKS file (the key rotated away) is noticed on the cached path within a second, and forgets all.
    await rm(issuer.keyPath);
    await new Promise((resolve) => setTimeout(resolve, 20));
    await DevTokenIssuer.loadOrCreate(dir);
    now += 1000;
    assert.deepEqual(await auth.authenticate(bearer(long)), { kind: 'denied', reason: "no key of the issuer's JWKS matches the token" });
    assert.equal(auth.cacheSize, 0);
  });

  test('identity from kubernetes.io claims; refusals say why; an unreachable JWKS URL is unavailable', async () => {
    const { privateKey, publicKey } = await jose.generateKeyPair('ES256');
    const jwksFile = path.join(temp.dir, 'claims-jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await jose.exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }] }));
    const auth = await JwtAuthenticator.create({
      rules: [
        { issuer: 'https://issuer.test', jwksFile, audiences: ['mesh'] },
        { issuer: 'https://offline.test', jwksUri: 'http://127.0.0.1:1/jwks', audiences: [] },
      ],
      defaultAudiences: ['istio-ca'],
      trustDomain: 'example.org',
      localClusterId: 'Kubernetes',
    });
    const sign = (claims: jose.JWTPayload, issuer = 'https://issuer.test', audience = 'mesh'): Promise<string> =>
      new jose.SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(issuer).setAudience(audience).setIssuedAt().setExpirationTime('5m').sign(privateKey);

    const caller = okCaller(await auth.authenticate(bearer(await sign({ 'kubernetes.io': { namespace: 'ns1', serviceaccount: { name: 'sa1' }, pod: { name: 'p', uid: 'u' } } }))));
    assert.equal(caller.identity.uri, 'spiffe://example.org/ns/ns1/sa/sa1');
    assert.equal(caller.kubernetes?.podName, 'p');

    const noAccount = await auth.authenticate(bearer(await sign({ sub: 'alice' })));
    assert.equal(noAccount.kind, 'denied');
    const wrongIssuer = await auth.authenticate(bearer(await sign({ sub: 'system:serviceaccount:a:b' }, 'https://other.test')));
    assert.deepEqual(wrongIssuer, { kind: 'denied', reason: 'issuer https://other.test is not trusted (JWT_RULE trusts https://issuer.test, https://offline.test)' });
    const notJwt = await auth.authenticate(bearer('opaque-token'));
    assert.deepEqual(notJwt, { kind: 'denied', reason: 'the bearer token is not a JWT' });
    // A wrong audience names both sides and the setting; a hostile list of audiences is cut short.
    const wrongAudience = await auth.authenticate(bearer(await sign({ sub: 'system:serviceaccount:a:b' }, 'https://issuer.test', 'istio-ca')));
    assert.deepEqual(wrongAudience, {
      kind: 'denied',
      reason: `the token's audiences ["istio-ca"] include none of the audiences the CA accepts ["mesh"]: mint the token for one of them (a projected service-account token's audience) or add its audience to the "audiences" of JWT_RULE issuer https://issuer.test`,
    });
    const hostile = await new jose.SignJWT({ sub: 'system:serviceaccount:a:b', aud: [...Array.from({ length: 10_000 }, (_, i) => `aud-${i}`), 'x'.repeat(100_000)] })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer('https://issuer.test')
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);
    const bounded = await auth.authenticate(bearer(hostile));
    assert.equal(bounded.kind, 'denied');
    if (bounded.kind === 'denied') {
      assert.ok(bounded.reason.length < 600, `${bounded.reason.length} characters`);
      assert.match(bounded.reason, /^the token's audiences \["aud-0", "aud-1", "aud-2", "aud-3", "aud-4", \.\.\. \(9996 more\)\] include none of the audiences the CA accepts \["mesh"\]/);
    }
    // Rules without audiences use TOKEN_AUDIENCES; the key source being down is not the caller's fault.
    const offline = await auth.authenticate(bearer(await sign({ sub: 'system:serviceaccount:a:b' }, 'https://offline.test', 'istio-ca')));
    assert.equal(offline.kind, 'unavailable');
  });

  test('JWT_RULE parsing accepts an object or a list and names what is wrong', () => {
    assert.deepEqual(parseJwtRules('{"issuer":"https://a","jwks_uri":"https://a/jwks","audiences":["x"]}'), [{ issuer: 'https://a', jwksUri: 'https://a/jwks', audiences: ['x'] }]);
    assert.equal(parseJwtRules('[{"issuer":"https://a","jwks_file":"/f"},{"issuer":"https://b","jwks_file":"/g"}]').length, 2);
    assert.throws(() => parseJwtRules('nope'), /invalid JWT_RULE: not JSON/);
    assert.throws(() => parseJwtRules('{"issuer":"https://a"}'), /give exactly one of "jwks_uri" or "jwks_file"/);
    assert.throws(() => parseJwtRules('{"issuer":"https://a","jwks_uri":"ftp://x"}'), /must be http\(s\)/);
    assert.throws(() => parseJwtRules('[{"issuer":"https://a","jwks_file":"/f","audiences":"x"}]', '--jwt-rule'), /invalid --jwt-rule: "audiences" must be a list/);
  });
});

describe('authenticator chain', () => {
  const fixed = (name: Authenticator['name'], outcome: AuthOutcome, calls: string[]): Authenticator => ({
    name,
    authenticate: async () => {
      calls.push(name);
      return outcome;
    },
  });
  const caller: Caller = { authenticator: 'jwt', identity: WorkloadId.parse('spiffe://td/ns/a/sa/b'), subject: 's' };

  test('first success wins, in order', async () => {
    const calls: string[] = [];
    const chain = new AuthenticatorChain([fixed('client-cert', { kind: 'skip', reason: 'none' }, calls), fixed('jwt', { kind: 'ok', caller }, calls), fixed('tokenreview', { kind: 'ok', caller }, calls)]);
    assert.equal(await chain.authenticate({ header: () => undefined }), caller);
    assert.deepEqual(calls, ['client-cert', 'jwt']);
  });

  test('denials are listed; an unavailable dependency makes the whole failure unavailable', async () => {
    const calls: string[] = [];
    const denied = new AuthenticatorChain([fixed('client-cert', { kind: 'skip', reason: 'none' }, calls), fixed('tokenreview', { kind: 'denied', reason: 'bad audience' }, calls), fixed('jwt', { kind: 'denied', reason: 'unknown issuer' }, calls)]);
    await assert.rejects(denied.authenticate({ header: () => undefined }), { kind: 'denied', message: 'request authenticate failure: tokenreview: bad audience; jwt: unknown issuer' });
    const unavailable = new AuthenticatorChain([fixed('tokenreview', { kind: 'unavailable', reason: 'could not reach the Kubernetes API server' }, calls), fixed('jwt', { kind: 'denied', reason: 'unknown issuer' }, calls)]);
    await assert.rejects(unavailable.authenticate({ header: () => undefined }), { kind: 'unavailable', message: /^authentication could not be completed: tokenreview: could not reach the Kubernetes API server; jwt: unknown issuer$/ });
  });
});

describe('dev token issuer', () => {
  test('keeps one ES256 key (0600) and its JWKS in the state directory', async () => {
    const dir = path.join(temp.dir, 'dev-issuer');
    const issuer = await DevTokenIssuer.loadOrCreate(dir);
    assert.equal(statSync(issuer.keyPath).mode & 0o777, 0o600);
    const again = await DevTokenIssuer.loadOrCreate(dir);
    assert.equal(again.kid, issuer.kid);
    const token = await again.mint({ namespace: 'default', serviceAccount: 'demo', audiences: ['istio-ca'], ttlSeconds: 60, pod: { name: 'demo-1', uid: 'uid-1' } });
    const claims = jose.decodeJwt(token);
    assert.equal(claims.iss, DEV_ISSUER);
    assert.deepEqual((claims['kubernetes.io'] as { pod: unknown }).pod, { name: 'demo-1', uid: 'uid-1' });
    await assert.rejects(again.mint({ namespace: 'default', serviceAccount: 'Demo!', audiences: ['x'], ttlSeconds: 60 }), DevIssuerError);

    writeFileSync(issuer.keyPath, 'garbage');
    await assert.rejects(DevTokenIssuer.loadOrCreate(dir), /dev-jwt-key\.pem is not a readable PEM private key; delete it/);
  });
});

describe('ca configuration', () => {
  function parse(argv: string[], env: Record<string, string> = {}): ReturnType<typeof readCaServerConfig> {
    const command = addCaServerOptions(new Command('ca').exitOverride());
    command.parse(argv, { from: 'user' });
    return readCaServerConfig(command.opts<CaServerFlags>(), env);
  }

  test('defaults follow Istio', () => {
    const config = parse([]);
    assert.equal(config.grpcAddress.text, '0.0.0.0:15012');
    assert.equal(config.monitoringAddress.text, '0.0.0.0:15014');
    assert.equal(config.plaintext, false);
    assert.deepEqual(config.tokenAudiences, ['istio-ca']);
    assert.equal(config.trustDomain, 'cluster.local');
    assert.equal(config.clusterId, 'Kubernetes');
    assert.equal(config.defaultWorkloadCertTtlSeconds, 86400);
    assert.equal(config.maxWorkloadCertTtlSeconds, 90 * 86400);
    assert.equal(config.tokenReviewCacheTtlSeconds, 60);
    assert.equal(config.tokenReviewTimeoutSeconds, 5);
    assert.deepEqual(config.serverDnsNames, ['meshca.istio-system.svc', 'istiod.istio-system.svc']);
    assert.deepEqual(config.kubeconfigs, []);
  });

  test('the default serving names follow POD_NAMESPACE; --server-dns replaces them', () => {
    assert.deepEqual(parse([], { POD_NAMESPACE: 'mesh-ops' }).serverDnsNames, ['meshca.mesh-ops.svc', 'istiod.mesh-ops.svc']);
    assert.deepEqual(parse([], { POD_NAMESPACE: 'mesh-ops', ISTIOD_CUSTOM_HOST: 'ca.example' }).serverDnsNames, ['meshca.mesh-ops.svc', 'istiod.mesh-ops.svc', 'ca.example']);
    assert.deepEqual(parse(['--server-dns', 'ca.example'], { POD_NAMESPACE: 'mesh-ops' }).serverDnsNames, ['ca.example']);
  });

  test('flags and Istio env vars', () => {
    const config = parse(
      ['--kubeconfig', '/k/local.yaml', '--kubeconfig', 'west=/k/west.yaml', '--server-dns', 'a.example,b.example', '--trusted-node-accounts', 'kube-system/ztunnel'],
      { TOKEN_AUDIENCES: 'istio-ca,mesh', CLUSTER_ID: 'east', ISTIOD_CUSTOM_HOST: 'c.example', MAX_WORKLOAD_CERT_TTL: '48h', DEFAULT_WORKLOAD_CERT_TTL: '12h', TRUST_DOMAIN: 'corp.example' },
    );
    assert.deepEqual(config.kubeconfigs, [
      { clusterId: 'east', path: '/k/local.yaml' },
      { clusterId: 'west', path: '/k/west.yaml' },
    ]);
    assert.deepEqual(config.tokenAudiences, ['istio-ca', 'mesh']);
    assert.deepEqual(config.serverDnsNames, ['a.example', 'b.example', 'c.example']);
    assert.deepEqual(config.trustedNodeAccounts, [{ namespace: 'kube-system', serviceAccount: 'ztunnel' }]);
    assert.equal(config.maxWorkloadCertTtlSeconds, 48 * 3600);
    assert.equal(config.defaultWorkloadCertTtlSeconds, 12 * 3600);
    assert.equal(config.trustDomain, 'corp.example');
  });

  test('bad values are ConfigErrors naming the flag or variable', () => {
    assert.throws(() => parse(['--kubeconfig', '/a', '--kubeconfig', '/b']), /--kubeconfig names cluster "Kubernetes" twice/);
    assert.throws(() => parse([], { DEFAULT_WORKLOAD_CERT_TTL: '100d' }), /DEFAULT_WORKLOAD_CERT_TTL .* is longer than MAX_WORKLOAD_CERT_TTL/);
    assert.throws(() => parse(['--tokenreview-timeout', 'soon']), /invalid --tokenreview-timeout \(env MESHCA_TOKENREVIEW_TIMEOUT\)="soon"/);
    assert.throws(() => parse(['--server-dns', 'bad name']), /invalid --server-dns \(env ISTIOD_CUSTOM_HOST\)="bad name"/);
    assert.throws(() => parse([], { POD_NAMESPACE: 'Mesh_Ops' }), /invalid POD_NAMESPACE="Mesh_Ops": expected a Kubernetes namespace name/);
    assert.throws(() => parse(['--grpc-addr', 'nowhere']), ConfigError);
  });

  test('kubeconfig: explicit path, then KUBECONFIG, else a clear error', async () => {
    await assert.rejects(loadKubeConfig(path.join(temp.dir, 'nope.yaml'), {}), /kubeconfig .*nope\.yaml does not exist/);
    await assert.rejects(loadKubeConfig(undefined, {}), /no Kubernetes configuration: pass --kubeconfig FILE, set KUBECONFIG, or run inside a cluster/);
    const file = path.join(temp.dir, 'kubeconfig.yaml');
    writeFileSync(
      file,
      ['apiVersion: v1', 'kind: Config', 'clusters:', '- name: c', '  cluster:', '    server: https://10.0.0.1:6443', 'users:', '- name: u', '  user:', '    token: t', 'contexts:', '- name: x', '  context:', '    cluster: c', '    user: u', 'current-context: x', ''].join('\n'),
    );
    assert.equal((await loadKubeConfig(undefined, { KUBECONFIG: file })).getCurrentCluster()?.server, 'https://10.0.0.1:6443');
    assert.equal((await loadKubeConfig(file, { KUBECONFIG: '/does/not/matter' })).getCurrentCluster()?.server, 'https://10.0.0.1:6443');
  });
});
