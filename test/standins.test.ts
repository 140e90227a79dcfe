/**
 * Exercises the Kubernetes and Vault stand-ins through the real client libraries the product uses
 * (@kubernetes/client-node 1.x and node-vault 0.12), plus `openssl verify` on issued certificates.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  KubeConfig,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type V1ConfigMap,
  type V1Secret,
  type V1TokenReview,
  Watch,
} from '@kubernetes/client-node';
import * as jose from 'jose';
import vault from 'node-vault';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { makeCsr } from './standins/pki.js';
import { startVaultStandin, type VaultStandin } from './standins/vault.js';

// ---------------------------------------------------------------------------------------------------------------
// helpers

const tmp = mkdtempSync(join(tmpdir(), 'standins-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

let fileCounter = 0;
function writeTmp(content: string): string {
  const p = join(tmp, `f${fileCounter++}.pem`);
  writeFileSync(p, content.endsWith('\n') ? content : `${content}\n`);
  return p;
}

/** `openssl verify -CAfile root [-untrusted intermediates] leaf` → { ok, output }. */
function opensslVerify(rootPem: string, leafPem: string, intermediates: string[] = []): { ok: boolean; output: string } {
  const args = ['verify', '-CAfile', writeTmp(rootPem)];
  if (intermediates.length > 0) args.push('-untrusted', writeTmp(intermediates.join('\n')));
  args.push(writeTmp(leafPem));
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { ok: r.status === 0, output: `${r.stdout}${r.stderr}` };
}

async function waitFor(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('waitFor: timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function expectApiException(p: Promise<unknown>, code: number): Promise<ApiException<unknown>> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ApiException, `expected ApiException, got ${String(e)}`);
    assert.equal(e.code, code);
    return e;
  }
  assert.fail(`expected ApiException ${code}`);
}

interface VaultApiError {
  message: string;
  response: { statusCode: number; body: { errors?: string[] } };
}

async function expectVaultError(p: Promise<unknown>, status: number, message?: string): Promise<VaultApiError> {
  try {
    await p;
  } catch (e) {
    const err = e as VaultApiError;
    assert.equal(err.response?.statusCode, status, `status: ${String(err.message)}`);
    if (message !== undefined) {
      assert.equal(err.message, message);
      assert.deepEqual(err.response.body.errors, [message]);
    }
    return err;
  }
  assert.fail(`expected Vault error ${status}`);
}

function httpsGet(url: string, ca: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const reviewBody = (token: string, audiences?: string[]): V1TokenReview => ({
  apiVersion: 'authentication.k8s.io/v1',
  kind: 'TokenReview',
  spec: { token, audiences },
});

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes

describe('kube stand-in via @kubernetes/client-node', () => {
  let kube: KubeStandin;
  let kc: KubeConfig;
  let authApi: AuthenticationV1Api;
  let core: CoreV1Api;

  before(async () => {
    kube = await startKubeStandin();
    kc = new KubeConfig();
    kc.loadFromFile(kube.kubeconfigPath);
    authApi = kc.makeApiClient(AuthenticationV1Api);
    core = kc.makeApiClient(CoreV1Api);
  });
  after(async () => {
    await kube.close();
  });

  it('writes a kubeconfig with verified TLS (CA data) and a bearer token', () => {
    const cluster = kc.getCurrentCluster();
    assert.equal(cluster?.server, kube.url);
    assert.equal(cluster?.skipTLSVerify, false);
    assert.ok(cluster?.caData);
    assert.equal(kc.getCurrentUser()?.token, kube.reviewerToken);
  });

  it('TokenReview authenticates a pod-bound projected token (201, user, extra, audiences)', async () => {
    const pod = kube.state.addPod({ namespace: 'default', name: 'httpbin-1', serviceAccount: 'httpbin', nodeName: 'worker-1' });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', podName: 'httpbin-1' });
    const claims = jose.decodeJwt(token);
    assert.deepEqual(claims.aud, ['istio-ca']);
    assert.equal(claims.iss, 'https://kubernetes.default.svc.cluster.local');
    assert.equal(claims.sub, 'system:serviceaccount:default:httpbin');
    const k8s = claims['kubernetes.io'] as Record<string, Record<string, string>>;
    assert.equal(k8s.pod?.uid, pod.metadata.uid);
    assert.equal(k8s.node?.name, 'worker-1');
    assert.equal(jose.decodeProtectedHeader(token).alg, 'RS256');

    const before = kube.state.tokenReviewCount;
    const res = await authApi.createTokenReview({ body: reviewBody(token, ['istio-ca']) });
    assert.equal(kube.state.tokenReviewCount, before + 1);
    assert.equal(res.status?.authenticated, true);
    assert.equal(res.status?.user?.username, 'system:serviceaccount:default:httpbin');
    assert.deepEqual(res.status?.user?.groups, ['system:serviceaccounts', 'system:serviceaccounts:default', 'system:authenticated']);
    assert.deepEqual(res.status?.user?.extra?.['authentication.kubernetes.io/pod-name'], ['httpbin-1']);
    assert.deepEqual(res.status?.user?.extra?.['authentication.kubernetes.io/pod-uid'], [pod.metadata.uid]);
    assert.deepEqual(res.status?.user?.extra?.['authentication.kubernetes.io/node-name'], ['worker-1']);
    assert.deepEqual(res.status?.audiences, ['istio-ca']);
    const sa = kube.state.get('serviceaccounts', 'default', 'httpbin');
    assert.equal(res.status?.user?.uid, sa?.metadata.uid);
    assert.equal(kube.state.requests.at(-1)?.method, 'POST');
    assert.equal(kube.state.requests.at(-1)?.path, '/apis/authentication.k8s.io/v1/tokenreviews');
  });

  it('TokenReview failures are 201 with status.error and an empty user', async () => {
    const ns = 'default';
    const cases: [string, string, string[] | undefined, RegExp][] = [
      ['audience', await kube.mintToken({ namespace: ns, serviceAccount: 'a', audiences: ['telemetry'] }), ['istio-ca'], /token audiences \["telemetry"\] is invalid for the target audiences \["istio-ca"\]/],
      ['expired', await kube.mintToken({ namespace: ns, serviceAccount: 'a', expired: true }), ['istio-ca'], /has expired/],
      ['not yet valid', await kube.mintToken({ namespace: ns, serviceAccount: 'a', notBefore: Math.floor(Date.now() / 1000) + 3600 }), ['istio-ca'], /not valid yet/],
      ['foreign key', await kube.mintForeignToken({ namespace: ns, serviceAccount: 'a' }), ['istio-ca'], /invalid bearer token/],
      ['legacy + audience', await kube.mintToken({ namespace: ns, serviceAccount: 'a', legacy: true }), ['istio-ca'], /is invalid for the target audiences/],
      ['default audience', await kube.mintToken({ namespace: ns, serviceAccount: 'a' }), undefined, /is invalid for the target audiences \["https:\/\/kubernetes.default.svc.cluster.local"\]/],
      ['garbage', 'not-a-jwt', ['istio-ca'], /invalid bearer token/],
    ];
    const revoked = await kube.mintToken({ namespace: ns, serviceAccount: 'a' });
    kube.state.revoke(revoked);
    cases.push(['revoked', revoked, ['istio-ca'], /has been invalidated/]);
    for (const [name, token, auds, re] of cases) {
      const res = await authApi.createTokenReview({ body: reviewBody(token, auds) });
      assert.ok(!res.status?.authenticated, name);
      assert.match(res.status?.error ?? '', re, name);
      assert.deepEqual({ ...res.status?.user }, {}, name);
    }
  });

  it('legacy tokens pass with the API server audiences; projected tokens with the API audience too', async () => {
    const legacy = await kube.mintToken({ namespace: 'istio-system', serviceAccount: 'istiod', legacy: true });
    const claims = jose.decodeJwt(legacy);
    assert.equal(claims.iss, 'kubernetes/serviceaccount');
    assert.equal(claims.exp, undefined);
    assert.equal(claims.aud, undefined);
    const res = await authApi.createTokenReview({ body: reviewBody(legacy) });
    assert.equal(res.status?.authenticated, true);
    assert.deepEqual(res.status?.audiences, ['https://kubernetes.default.svc.cluster.local']);
    assert.equal(res.status?.user?.extra, undefined);

    const apiTok = await kube.mintToken({ namespace: 'default', serviceAccount: 'x', audiences: ['https://kubernetes.default.svc.cluster.local'] });
    const res2 = await authApi.createTokenReview({ body: reviewBody(apiTok, []) });
    assert.equal(res2.status?.authenticated, true);
  });

  it('validateBoundObjects rejects tokens of deleted pods', async () => {
    kube.state.addPod({ namespace: 'default', name: 'gone', serviceAccount: 'sa1' });
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'sa1', podName: 'gone' });
    kube.state.validateBoundObjects = true;
    try {
      assert.equal((await kube.state.review(token, ['istio-ca'])).authenticated, true);
      kube.state.deletePod('default', 'gone');
      const r = await authApi.createTokenReview({ body: reviewBody(token, ['istio-ca']) });
      assert.ok(!r.status?.authenticated);
      assert.match(r.status?.error ?? '', /invalidated/);
    } finally {
      kube.state.validateBoundObjects = false;
    }
  });

  it('403 Forbidden Status when the reviewer lacks RBAC; 401 on a bad reviewer token', async () => {
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'a' });
    kube.state.forbidReviews = true;
    try {
      const e = await expectApiException(authApi.createTokenReview({ body: reviewBody(token, ['istio-ca']) }), 403);
      // client-node 1.x: for undeclared status codes, ApiException.body is the raw response text.
      assert.equal(typeof e.body, 'string');
      assert.deepEqual(JSON.parse(e.body as string), {
        kind: 'Status',
        apiVersion: 'v1',
        metadata: {},
        status: 'Failure',
        message:
          'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:meshca-system:meshca" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
        reason: 'Forbidden',
        details: { group: 'authentication.k8s.io', kind: 'tokenreviews' },
        code: 403,
      });
    } finally {
      kube.state.forbidReviews = false;
    }
    const bad = new KubeConfig();
    bad.loadFromString(kube.kubeconfigYaml.replace(kube.reviewerToken, 'wrong-token'));
    const e401 = await expectApiException(bad.makeApiClient(AuthenticationV1Api).createTokenReview({ body: reviewBody(token) }), 401);
    // 401 is a declared response of every operation: client-node throws it with body undefined.
    assert.equal(e401.body, undefined);
  });

  it('a service-account token works as API credential; down ⇒ connection errors; delayMs', async () => {
    const saTok = await kube.mintToken({ namespace: 'istio-system', serviceAccount: 'istiod', audiences: ['https://kubernetes.default.svc.cluster.local'] });
    const kc2 = new KubeConfig();
    kc2.loadFromString(kube.kubeconfigYaml.replace(kube.reviewerToken, saTok));
    const list = await kc2.makeApiClient(CoreV1Api).listNamespace();
    assert.ok(list.items.some((n) => n.metadata?.name === 'istio-system'));
    assert.equal(kube.state.requests.at(-1)?.user, 'system:serviceaccount:istio-system:istiod');

    kube.state.down = true;
    await assert.rejects(core.listNamespace(), (e: Error) => !(e instanceof ApiException) && /ECONNRESET|socket hang up|ECONNREFUSED/.test(`${e.message} ${String((e as { code?: string }).code)}`));
    kube.state.down = false;
    kube.state.delayMs = 150;
    const t0 = Date.now();
    await core.listNamespace();
    assert.ok(Date.now() - t0 >= 140);
    kube.state.delayMs = 0;
  });

  it('pods: read, 404 Status, list by spec.nodeName (all namespaces and namespaced)', async () => {
    kube.state.addPod({ namespace: 'ns-a', name: 'p1', serviceAccount: 'sa', nodeName: 'node-x' });
    kube.state.addPod({ namespace: 'ns-b', name: 'p2', serviceAccount: 'sa', nodeName: 'node-x' });
    kube.state.addPod({ namespace: 'ns-b', name: 'p3', serviceAccount: 'sa', nodeName: 'node-y' });
    const pod = await core.readNamespacedPod({ name: 'p1', namespace: 'ns-a' });
    assert.equal(pod.spec?.serviceAccountName, 'sa');
    assert.equal(pod.spec?.nodeName, 'node-x');
    assert.equal(pod.kind, 'Pod');

    const e = await expectApiException(core.readNamespacedPod({ name: 'x', namespace: 'ns-a' }), 404);
    assert.deepEqual(JSON.parse(e.body as string), {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: 'pods "x" not found',
      reason: 'NotFound',
      details: { name: 'x', kind: 'pods' },
      code: 404,
    });

    const all = await core.listPodForAllNamespaces({ fieldSelector: 'spec.nodeName=node-x' });
    assert.deepEqual(all.items.map((p) => `${p.metadata?.namespace}/${p.metadata?.name}`), ['ns-a/p1', 'ns-b/p2']);
    const nsb = await core.listNamespacedPod({ namespace: 'ns-b', fieldSelector: 'spec.nodeName=node-x' });
    assert.deepEqual(nsb.items.map((p) => p.metadata?.name), ['p2']);
    assert.ok(Number(all.metadata?.resourceVersion) > 0);
  });

  it('secrets: create, 409 AlreadyExists, replace, 409 Conflict on stale resourceVersion, delete', async () => {
    const body = {
      metadata: { name: 'cacerts', namespace: 'istio-system' },
      type: 'Opaque',
      stringData: { 'root-cert.pem': 'ROOT' },
      data: { 'ca-cert.pem': Buffer.from('CA').toString('base64') },
    };
    const created = await core.createNamespacedSecret({ namespace: 'istio-system', body });
    assert.equal(created.metadata?.resourceVersion !== undefined, true);
    assert.equal(Buffer.from(created.data?.['root-cert.pem'] ?? '', 'base64').toString(), 'ROOT');
    assert.equal(created.stringData, undefined);

    const dup = await expectApiException(core.createNamespacedSecret({ namespace: 'istio-system', body }), 409);
    const dupStatus = JSON.parse(dup.body as string) as Record<string, unknown>;
    assert.equal(dupStatus.reason, 'AlreadyExists');
    assert.equal(dupStatus.message, 'secrets "cacerts" already exists');

    const rv1 = created.metadata!.resourceVersion!;
    const updated = await core.replaceNamespacedSecret({
      name: 'cacerts',
      namespace: 'istio-system',
      body: { ...created, data: { ...created.data, 'ca-key.pem': Buffer.from('KEY').toString('base64') } },
    });
    assert.ok(Number(updated.metadata?.resourceVersion) > Number(rv1));
    assert.equal(updated.metadata?.uid, created.metadata?.uid);

    const stale = await expectApiException(
      core.replaceNamespacedSecret({ name: 'cacerts', namespace: 'istio-system', body: { ...created, data: {} } }),
      409,
    );
    const st = JSON.parse(stale.body as string) as Record<string, unknown>;
    assert.equal(st.reason, 'Conflict');
    assert.match(String(st.message), /^Operation cannot be fulfilled on secrets "cacerts": the object has been modified/);

    const read = await core.readNamespacedSecret({ name: 'cacerts', namespace: 'istio-system' });
    assert.equal(read.metadata?.resourceVersion, updated.metadata?.resourceVersion);

    const tls = await expectApiException(
      core.createNamespacedSecret({ namespace: 'istio-system', body: { metadata: { name: 't' }, type: 'kubernetes.io/tls', data: {} } }),
      422,
    );
    assert.equal((JSON.parse(tls.body as string) as Record<string, unknown>).reason, 'Invalid');

    const del = await core.deleteNamespacedSecret({ name: 'cacerts', namespace: 'istio-system' });
    assert.equal(del.status, 'Success');
    await expectApiException(core.readNamespacedSecret({ name: 'cacerts', namespace: 'istio-system' }), 404);
    const noNs = await expectApiException(core.createNamespacedSecret({ namespace: 'nope', body: { metadata: { name: 'x' } } }), 404);
    assert.equal((JSON.parse(noNs.body as string) as Record<string, unknown>).message, 'namespaces "nope" not found');
  });

  it('configmaps: Watch receives ADDED / MODIFIED / DELETED', async () => {
    const list = await core.listNamespacedConfigMap({ namespace: 'default' });
    const events: string[] = [];
    let doneErr: unknown = 'not-done';
    const ctrl = await new Watch(kc).watch(
      '/api/v1/namespaces/default/configmaps',
      { resourceVersion: list.metadata?.resourceVersion },
      (type: string, obj: V1ConfigMap) => events.push(`${type}:${obj.metadata?.name}:${obj.data?.['root-cert.pem'] ?? ''}`),
      (err: unknown) => {
        doneErr = err;
      },
    );
    await core.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: 'istio-ca-root-cert' }, data: { 'root-cert.pem': 'R1' } } });
    await core.patchNamespacedConfigMap(
      { name: 'istio-ca-root-cert', namespace: 'default', body: [{ op: 'replace', path: '/data/root-cert.pem', value: 'R2' }] },
    );
    await core.deleteNamespacedConfigMap({ name: 'istio-ca-root-cert', namespace: 'default' });
    await waitFor(() => events.length >= 3);
    assert.deepEqual(events, ['ADDED:istio-ca-root-cert:R1', 'MODIFIED:istio-ca-root-cert:R2', 'DELETED:istio-ca-root-cert:R2']);
    // server-side close ⇒ done(null)
    kube.state.closeWatches();
    await waitFor(() => doneErr !== 'not-done');
    assert.equal(doneErr, null);
    ctrl.abort();

    // a watch without resourceVersion starts with synthetic ADDED events for existing objects
    await core.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: 'pre', labels: { app: 'x' } } } });
    const seen: string[] = [];
    const ctrl2 = await new Watch(kc).watch(
      '/api/v1/namespaces/default/configmaps',
      { labelSelector: 'app=x' },
      (type: string, obj: V1ConfigMap) => seen.push(`${type}:${obj.metadata?.name}`),
      () => undefined,
    );
    await waitFor(() => seen.length >= 1);
    assert.deepEqual(seen, ['ADDED:pre']);
    ctrl2.abort();

    // after compaction an old resourceVersion gets a 410 ERROR event
    kube.state.compact();
    const errs: unknown[] = [];
    const ctrl3 = await new Watch(kc).watch(
      '/api/v1/namespaces/default/configmaps',
      { resourceVersion: '1' },
      (type: string, obj: unknown) => errs.push([type, (obj as { code?: number }).code]),
      () => undefined,
    );
    await waitFor(() => errs.length >= 1);
    assert.deepEqual(errs, [['ERROR', 410]]);
    ctrl3.abort();
  });

  it('an informer (list + watch) sees add / update / delete; merge-patch via setHeaderOptions', async () => {
    const informer = makeInformer<V1Secret>(kc, '/api/v1/namespaces/istio-system/secrets', () =>
      core.listNamespacedSecret({ namespace: 'istio-system' }),
    );
    const seen: string[] = [];
    informer.on('add', (o) => seen.push(`add:${o.metadata?.name}`));
    informer.on('update', (o) => seen.push(`update:${o.metadata?.name}:${o.metadata?.labels?.v ?? ''}`));
    informer.on('delete', (o) => seen.push(`delete:${o.metadata?.name}`));
    await core.createNamespacedSecret({ namespace: 'istio-system', body: { metadata: { name: 'before' } } });
    await informer.start();
    await waitFor(() => seen.length >= 1);
    await core.createNamespacedSecret({ namespace: 'istio-system', body: { metadata: { name: 'istio-ca-secret' }, type: 'istio.io/ca-root' } });
    await core.patchNamespacedSecret(
      { name: 'istio-ca-secret', namespace: 'istio-system', body: { metadata: { labels: { v: '2' } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    // a no-op replace does not bump the resourceVersion nor emit an event
    const cur = await core.readNamespacedSecret({ name: 'istio-ca-secret', namespace: 'istio-system' });
    const same = await core.replaceNamespacedSecret({ name: 'istio-ca-secret', namespace: 'istio-system', body: cur });
    assert.equal(same.metadata?.resourceVersion, cur.metadata?.resourceVersion);
    await core.deleteNamespacedSecret({ name: 'istio-ca-secret', namespace: 'istio-system' });
    await waitFor(() => seen.length >= 4);
    await informer.stop();
    assert.deepEqual(seen, ['add:before', 'add:istio-ca-secret', 'update:istio-ca-secret:2', 'delete:istio-ca-secret']);
  });

  it('serves OIDC discovery + JWKS that verify minted tokens', async () => {
    const cfg = await httpsGet(`${kube.url}/.well-known/openid-configuration`, kube.caPem);
    assert.equal(cfg.status, 200);
    assert.equal(cfg.headers['cache-control'], 'public, max-age=3600');
    const doc = JSON.parse(cfg.body) as { issuer: string; jwks_uri: string; id_token_signing_alg_values_supported: string[] };
    assert.equal(doc.issuer, 'https://kubernetes.default.svc.cluster.local');
    assert.equal(doc.jwks_uri, `${kube.url}/openid/v1/jwks`);
    const jwksRes = await httpsGet(doc.jwks_uri, kube.caPem);
    assert.equal(jwksRes.headers['content-type'], 'application/jwk-set+json');
    const jwks = JSON.parse(jwksRes.body) as jose.JSONWebKeySet;
    assert.equal(jwks.keys[0]?.use, 'sig');
    assert.equal(jwks.keys[0]?.alg, 'RS256');
    const keySet = jose.createLocalJWKSet(jwks);
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'oidc' });
    const { payload } = await jose.jwtVerify(token, keySet, { issuer: doc.issuer, audience: 'istio-ca' });
    assert.equal(payload.sub, 'system:serviceaccount:default:oidc');
    const foreign = await kube.mintForeignToken({ namespace: 'default', serviceAccount: 'oidc' });
    await assert.rejects(jose.jwtVerify(foreign, keySet, { issuer: doc.issuer, audience: 'istio-ca' }));
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Vault

describe('vault stand-in via node-vault', () => {
  let v: VaultStandin;
  let client: vault.client;
  const spiffe = 'spiffe://cluster.local/ns/default/sa/httpbin';

  before(async () => {
    v = await startVaultStandin();
    client = vault({ endpoint: v.url, token: v.rootToken });
    await client.write('pki_int/roles/istio', {
      allowed_uri_sans: 'spiffe://cluster.local/*',
      require_cn: false,
      use_csr_sans: true,
      key_type: 'any',
      ttl: '24h',
      max_ttl: '72h',
      allow_ip_sans: false,
    });
  });
  after(async () => {
    await v.close();
  });

  it('signs a SAN-only CSR: response shape and a chain that openssl verifies', async () => {
    const { csrPem } = await makeCsr({ uris: [spiffe] });
    const res = (await client.write('pki_int/sign/istio', { csr: csrPem, format: 'pem' })) as {
      data: { certificate: string; issuing_ca: string; ca_chain: string[]; serial_number: string; expiration: unknown };
      warnings: unknown;
      lease_duration: number;
    };
    const d = res.data;
    assert.equal(typeof d.expiration, 'number');
    assert.match(d.serial_number, /^[0-9a-f]{2}(:[0-9a-f]{2}){19}$/);
    assert.equal(d.ca_chain.length, 2);
    assert.equal(d.ca_chain[0], d.issuing_ca);
    assert.equal(d.ca_chain[1], v.state.caPem('pki'));
    assert.equal(res.warnings, null);
    assert.equal(res.lease_duration, 0);
    assert.ok(!d.certificate.endsWith('\n'));

    const leaf = new X509Certificate(d.certificate);
    assert.ok(!leaf.subject, 'empty subject');
    assert.equal(leaf.subjectAltName, `URI:${spiffe}`);
    assert.deepEqual([...(leaf.keyUsage ?? [])].sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    assert.equal(leaf.serialNumber.toLowerCase(), d.serial_number.replace(/:/g, ''));
    assert.equal(Math.floor(new Date(leaf.validTo).getTime() / 1000), d.expiration);
    const hours = (new Date(leaf.validTo).getTime() - Date.now()) / 3600_000;
    assert.ok(hours > 23.9 && hours <= 24, `ttl ${hours}h`);
    assert.ok(leaf.checkIssued(new X509Certificate(d.issuing_ca)));

    const verify = opensslVerify(d.ca_chain[1]!, d.certificate, [d.issuing_ca]);
    assert.ok(verify.ok, verify.output);
    const purpose = spawnSync('openssl', ['verify', '-purpose', 'sslclient', '-CAfile', writeTmp(d.ca_chain[1]!), '-untrusted', writeTmp(d.issuing_ca), writeTmp(d.certificate)], { encoding: 'utf8' });
    assert.equal(purpose.status, 0, purpose.stderr);
    assert.equal(v.state.count('pki_int/sign/istio'), 1);
  });

  it('role policy errors: require_cn, unknown role, URI SAN checks, ttl capping warning', async () => {
    const { csrPem } = await makeCsr({ uris: [spiffe] });
    await client.write('pki_int/roles/strict', { allowed_uri_sans: ['spiffe://cluster.local/ns/*/sa/*'], max_ttl: '1h' });
    await expectVaultError(
      client.write('pki_int/sign/strict', { csr: csrPem }),
      400,
      'the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false',
    );
    await expectVaultError(client.write('pki_int/sign/nope', { csr: csrPem }), 400, 'unknown role: nope');

    await client.write('pki_int/roles/nouri', { require_cn: false });
    await expectVaultError(
      client.write('pki_int/sign/nouri', { csr: csrPem }),
      400,
      'URI Subject Alternative Names are not allowed in this role, but were provided via CSR',
    );
    const other = await makeCsr({ uris: ['spiffe://other.domain/ns/a/sa/b'] });
    await expectVaultError(
      client.write('pki_int/sign/istio', { csr: other.csrPem }),
      400,
      'URI Subject Alternative Names were provided via CSR which are not valid for this role',
    );
    await client.write('pki_int/roles/api-sans', { require_cn: false, use_csr_sans: false, allowed_uri_sans: 'spiffe://cluster.local/*' });
    const viaApi = (await client.write('pki_int/sign/api-sans', { csr: other.csrPem, uri_sans: spiffe })) as { data: { certificate: string } };
    assert.equal(new X509Certificate(viaApi.data.certificate).subjectAltName, `URI:${spiffe}`);

    const capped = (await client.write('pki_int/sign/istio', { csr: csrPem, ttl: '100h' })) as { warnings: string[]; data: { expiration: number } };
    assert.deepEqual(capped.warnings, ['TTL "100h0m0s" is longer than permitted maxTTL "72h0m0s", so maxTTL is being used']);
    assert.ok(Math.abs(capped.data.expiration - (Date.now() / 1000 + 72 * 3600)) < 5);

    const withCn = await makeCsr({ cn: 'not allowed', uris: [spiffe] });
    await expectVaultError(client.write('pki_int/sign/istio', { csr: withCn.csrPem }), 400, 'common name not allowed not allowed by this role');
    await expectVaultError(client.write('pki_int/sign/istio', { csr: 'garbage' }), 400, 'csr contains no data');
  });

  it('Kubernetes auth login (node-vault kubernetesLogin) and token expiry', async () => {
    v.state.setK8sRole('meshca', { bound_service_account_names: ['istiod'], bound_service_account_namespaces: ['istio-system'], token_ttl: 60 });
    const jwt = new jose.UnsecuredJWT({ 'kubernetes.io': { namespace: 'istio-system', serviceaccount: { name: 'istiod', uid: 'u-1' } } }).encode();
    v.state.acceptLoginJwt(jwt, 'meshca');
    const c = vault({ endpoint: v.url });
    const login = (await c.kubernetesLogin({ role: 'meshca', jwt, mount_point: 'kubernetes' })) as {
      auth: { client_token: string; lease_duration: number; metadata: Record<string, string>; policies: string[]; renewable: boolean };
    };
    assert.match(login.auth.client_token, /^hvs\./);
    assert.equal(login.auth.lease_duration, 60);
    assert.equal(login.auth.metadata.service_account_namespace, 'istio-system');
    assert.equal(login.auth.metadata.service_account_uid, 'u-1');
    // node-vault adopts auth.client_token for subsequent calls
    assert.equal(c.token, login.auth.client_token);
    const { csrPem } = await makeCsr({ uris: [spiffe] });
    await c.write('pki_int/sign/istio', { csr: csrPem });
    const self = (await c.tokenLookupSelf()) as { data: { ttl: number; policies: string[] } };
    assert.ok(self.data.ttl > 0 && self.data.ttl <= 60);

    v.state.expireToken(login.auth.client_token);
    await expectVaultError(c.write('pki_int/sign/istio', { csr: csrPem }), 403, 'permission denied');

    const anon = vault({ endpoint: v.url });
    await expectVaultError(anon.write('auth/kubernetes/login', { jwt }), 400, 'missing role');
    await expectVaultError(anon.write('auth/kubernetes/login', { role: 'meshca' }), 400, 'missing jwt');
    await expectVaultError(anon.kubernetesLogin({ role: 'nope', jwt, mount_point: 'kubernetes' }), 400, 'invalid role name "nope"');
    await expectVaultError(anon.kubernetesLogin({ role: 'meshca', jwt: `${jwt}x`, mount_point: 'kubernetes' }), 403, 'permission denied');
    // without mount_point node-vault 0.12 posts to /v1/auth//login
    await assert.rejects(anon.kubernetesLogin({ role: 'meshca', jwt }));
    assert.equal(v.state.requests.at(-1)?.path, '/v1/auth//login');

    const wrongNs = new jose.UnsecuredJWT({ 'kubernetes.io': { namespace: 'default', serviceaccount: { name: 'istiod', uid: 'u-2' } } }).encode();
    v.state.acceptLoginJwt(wrongNs);
    await expectVaultError(anon.kubernetesLogin({ role: 'meshca', jwt: wrongNs, mount_point: 'kubernetes' }), 403, 'namespace not authorized');
    await expectVaultError(vault({ endpoint: v.url, token: 'hvs.bogus' }).read('pki_int/roles/istio'), 403, 'permission denied');
  });

  it('login can be delegated to the kube stand-in TokenReview', async () => {
    const kube = await startKubeStandin();
    try {
      v.state.setK8sRole('istio-ca', { audience: 'vault' });
      v.state.loginVerifier = async (jwt, role) => {
        const r = await kube.state.review(jwt, role.audience ? [role.audience] : []);
        const m = r.authenticated ? r.user.username?.match(/^system:serviceaccount:([^:]+):(.+)$/) : null;
        return m ? { namespace: m[1]!, serviceAccount: m[2]!, uid: r.user.uid } : null;
      };
      const good = await kube.mintToken({ namespace: 'ns1', serviceAccount: 'sa1', audiences: ['vault'] });
      const bad = await kube.mintToken({ namespace: 'ns1', serviceAccount: 'sa1', audiences: ['istio-ca'] });
      const c = vault({ endpoint: v.url });
      const ok = (await c.kubernetesLogin({ role: 'istio-ca', jwt: good, mount_point: 'kubernetes' })) as { auth: { metadata: Record<string, string> } };
      assert.equal(ok.auth.metadata.service_account_name, 'sa1');
      await expectVaultError(c.kubernetesLogin({ role: 'istio-ca', jwt: bad, mount_point: 'kubernetes' }), 403, 'permission denied');
    } finally {
      v.state.loginVerifier = undefined;
      await kube.close();
    }
  });

  it('root/sign-intermediate (Flow A) issues a CA cert truncated to the root', async () => {
    const { csrPem } = await makeCsr({ cn: 'Istio Intermediate CA', ca: true });
    const res = (await client.write('pki/root/sign-intermediate', { csr: csrPem, common_name: 'Istio Intermediate CA', ttl: '876000h', format: 'pem' })) as {
      data: { certificate: string; issuing_ca: string; ca_chain: string[]; expiration: number };
      warnings: string[] | null;
    };
    const cert = new X509Certificate(res.data.certificate);
    const root = new X509Certificate(v.state.caPem('pki'));
    assert.equal(cert.ca, true);
    assert.equal(cert.subject, 'CN=Istio Intermediate CA');
    assert.equal(cert.validTo, root.validTo);
    assert.equal(res.data.issuing_ca, v.state.caPem('pki'));
    assert.deepEqual(res.data.ca_chain, [v.state.caPem('pki')]);
    const text = spawnSync('openssl', ['x509', '-noout', '-text', '-in', writeTmp(res.data.certificate)], { encoding: 'utf8' }).stdout;
    assert.match(text, /CA:TRUE/);
    assert.match(text, /Certificate Sign, CRL Sign/);
    const verify = opensslVerify(v.state.caPem('pki'), res.data.certificate);
    assert.ok(verify.ok, verify.output);
  });

  it('Flow B (generate/internal + set-signed on a new mount), issue/<role>, der format, cert/<serial>', async () => {
    await client.write('sys/mounts/pki_b', { type: 'pki' });
    const gen = (await client.write('pki_b/intermediate/generate/internal', { common_name: 'B Intermediate', key_type: 'ec' })) as {
      data: { csr: string; key_id: string; private_key?: string };
    };
    assert.match(gen.data.csr, /BEGIN CERTIFICATE REQUEST/);
    assert.equal(gen.data.private_key, undefined);
    const signed = (await client.write('pki/root/sign-intermediate', { csr: gen.data.csr, common_name: 'B Intermediate', format: 'pem_bundle' })) as {
      data: { certificate: string };
    };
    assert.equal(signed.data.certificate.match(/BEGIN CERTIFICATE/g)?.length, 2);
    const set = (await client.write('pki_b/intermediate/set-signed', { certificate: signed.data.certificate })) as {
      data: { imported_issuers: string[]; mapping: Record<string, string> };
    };
    assert.equal(set.data.mapping[set.data.imported_issuers[0]!], gen.data.key_id);

    await client.write('pki_b/roles/web', { allowed_domains: 'example.com', allow_subdomains: true, key_type: 'ec', ttl: '1h' });
    // the intermediate got the mount's default TTL (768h); a leaf outliving it is refused (leaf_not_after_behavior=err)
    await expectVaultError(client.write('pki_b/issue/web', { common_name: 'a.example.com', ttl: '800h' }), 400);
    const issued = (await client.write('pki_b/issue/web', { common_name: 'a.example.com', alt_names: 'b.example.com', format: 'der' })) as {
      data: { certificate: string; issuing_ca: string; ca_chain: string[]; private_key: string; private_key_type: string; serial_number: string };
    };
    assert.equal(issued.data.private_key_type, 'ec');
    assert.match(issued.data.private_key, /BEGIN EC PRIVATE KEY/);
    const leaf = new X509Certificate(Buffer.from(issued.data.certificate, 'base64'));
    assert.equal(leaf.subject, 'CN=a.example.com');
    assert.equal(leaf.subjectAltName, 'DNS:b.example.com, DNS:a.example.com');
    const chainPems = issued.data.ca_chain.map((d) => new X509Certificate(Buffer.from(d, 'base64')).toString());
    const verify = opensslVerify(chainPems[1]!, leaf.toString(), [chainPems[0]!]);
    assert.ok(verify.ok, verify.output);
    await expectVaultError(client.write('pki_b/issue/web', { common_name: 'evil.com' }), 400, 'common name evil.com not allowed by this role');
    const stored = (await client.read(`pki_b/cert/${issued.data.serial_number}`)) as { data: { certificate: string } };
    assert.equal(new X509Certificate(stored.data.certificate).serialNumber, leaf.serialNumber);
  });

  it('CA read endpoints: raw ca_chain (application/pkix-cert), ca/pem, cert/ca_chain JSON', async () => {
    const raw = await fetch(`${v.url}/v1/pki_int/ca_chain`);
    assert.equal(raw.headers.get('content-type'), 'application/pkix-cert');
    const text = await raw.text();
    assert.equal(text, `${v.state.caPem('pki_int')}\n${v.state.caPem('pki')}`);
    const viaClient = (await client.read('pki_int/ca_chain')) as unknown;
    assert.equal(viaClient, text);
    const pem = await fetch(`${v.url}/v1/pki/ca/pem`);
    assert.equal(pem.headers.get('content-type'), 'application/pem-certificate-chain');
    assert.equal(await pem.text(), v.state.caPem('pki'));
    const json = (await client.read('pki_int/cert/ca_chain')) as { data: { ca_chain: string; certificate: string } };
    assert.equal(json.data.ca_chain, text);
  });

  it('fault knobs: failWith500, corruptChain, down, delayMs, namespace header, counters', async () => {
    const { csrPem } = await makeCsr({ uris: [spiffe] });
    v.state.failWith500 = 1;
    await expectVaultError(client.write('pki_int/sign/istio', { csr: csrPem }), 500, 'internal error');
    await client.write('pki_int/sign/istio', { csr: csrPem });

    v.state.corruptChain = true;
    const bad = (await client.write('pki_int/sign/istio', { csr: csrPem })) as { data: { certificate: string; ca_chain: string[] } };
    v.state.corruptChain = false;
    assert.notEqual(bad.data.ca_chain[0], v.state.caPem('pki_int'));
    const verify = opensslVerify(bad.data.ca_chain[1]!, bad.data.certificate, [bad.data.ca_chain[0]!]);
    assert.equal(verify.ok, false, verify.output);

    v.state.down = true;
    await assert.rejects(client.read('sys/health'), (e: Error & { code?: string }) => ['ECONNRESET', 'ECONNREFUSED', 'ERR_SOCKET_CONNECTION_TIMEOUT'].includes(String(e.code)) || /socket hang up/.test(e.message));
    v.state.down = false;
    v.state.delayMs = 100;
    const t0 = Date.now();
    await client.read('sys/health');
    assert.ok(Date.now() - t0 >= 90);
    v.state.delayMs = 0;

    const nsClient = vault({ endpoint: v.url, token: v.rootToken, namespace: 'team-a/' });
    await nsClient.read('pki_int/roles/istio');
    assert.equal(v.state.requests.at(-1)?.namespace, 'team-a/');
    assert.equal(v.state.count('/v1/sys/health'), 1); // the request made while down never arrived
  });

  it('HTTPS mode with an EC hierarchy', async () => {
    const sv = await startVaultStandin({ tls: true, keyType: 'ec' });
    try {
      assert.ok(sv.url.startsWith('https://'));
      const c = vault({ endpoint: sv.url, token: sv.rootToken, requestOptions: { ca: sv.caPem } });
      await c.write('pki_int/roles/istio', { allowed_uri_sans: 'spiffe://*', require_cn: false, key_type: 'ec' });
      const { csrPem } = await makeCsr({ alg: 'ec', uris: [spiffe] });
      const res = (await c.write('pki_int/sign/istio', { csr: csrPem })) as { data: { certificate: string; ca_chain: string[] } };
      const verify = opensslVerify(res.data.ca_chain[1]!, res.data.certificate, [res.data.ca_chain[0]!]);
      assert.ok(verify.ok, verify.output);
      const rsa = await makeCsr({ uris: [spiffe] });
      await expectVaultError(c.write('pki_int/sign/istio', { csr: rsa.csrPem }), 400, 'role requires keys of type ec');
    } finally {
      await sv.close();
    }
  });
});
