/**
 * `--cluster-trust-bundle` (src/ca/kubernetes/cluster-trust-bundle/), in process against the Kubernetes stand-in
 * over HTTPS (test/standins/kube-ctb.ts enforces the API's naming, PEM and attest rules):
 *  - the plugin publishes `meshca.io:spiffe:roots` with every root of the signer; a new root in the signer (what
 *    rotation's "publish" step and a cacerts reload do) updates it; an edited bundle is repaired and a deleted one
 *    re-created; the stand-in never answered one of its writes with 422 or 403; openssl parses every certificate;
 *  - the version comes from discovery (v1beta1 on a 1.33-1.36 server, v1 on 1.37, v1alpha1 before) and a cluster without the API
 *    refuses to start with what to turn on;
 *  - an API server that is down at start-up does not stop the CA: the bundle is published once it is back;
 *  - the stand-in itself refuses what the API refuses (so "no 422" above means something).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { KubeConfig } from '@kubernetes/client-node';
import { buildCaMaterial, createSelfSignedRoot, LocalSigner } from '../src/ca/index.js';
import { clusterTrustBundlePlugin } from '../src/ca/kubernetes/cluster-trust-bundle/index.js';
import { canonicalTrustBundle, ClusterTrustBundleNotServedError, startClusterTrustBundlePublisher } from '../src/ca/kubernetes/cluster-trust-bundle/publisher.js';
import type { CertificateAuthority } from '../src/ca/authority.js';
import { kubeClient } from '../src/kube/client.js';
import { loadKubeConfig } from '../src/kube/config.js';
import { createLogger } from '../src/log.js';
import { eventually } from './support/eventually.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { Registry } from 'prom-client';

const logger = createLogger({ level: (process.env.CTB_LOG as 'info' | undefined) ?? 'silent', format: 'json' });
const NAME = 'meshca.io:spiffe:roots';

async function newRoot(org: string): Promise<Awaited<ReturnType<typeof createSelfSignedRoot>>> {
  return createSelfSignedRoot({ stateDir: '', trustDomain: 'cluster.local', organization: org, keySpec: 'ec-p256', ttlSeconds: 3600 });
}

describe('ClusterTrustBundle publishing', () => {
  let kube: KubeStandin;
  let kubeConfig: KubeConfig;

  before(async () => {
    kube = await startKubeStandin();
    kube.state.clusterTrustBundles.attestGrants.add(`${kube.state.reviewerUser} meshca.io/*`);
    kubeConfig = await loadKubeConfig(kube.kubeconfigPath, {});
  });
  after(() => kube.close());

  test('publishes every root, follows the signer, repairs edits and deletions, and never breaks a validation rule', async () => {
    const ctb = kube.state.clusterTrustBundles;
    const a = await newRoot('root-a');
    const b = await newRoot('root-b');
    const signer = new LocalSigner('self-signed', a.material);
    const start = clusterTrustBundlePlugin.configure({ clusterTrustBundle: true }, {});
    assert.ok(start, 'on with --cluster-trust-bundle');
    assert.equal(clusterTrustBundlePlugin.configure({}, {}), undefined, 'off by default');
    const plugin = await start({ kubeConfig, signer, authority: {} as CertificateAuthority, trustDomain: 'cluster.local', logger, registry: new Registry() });
    try {
      // Published before start resolves.
      const first = ctb.get(NAME);
      assert.ok(first, `ClusterTrustBundle ${NAME} exists`);
      assert.equal(first.spec.signerName, 'meshca.io/spiffe');
      assert.equal(first.spec.trustBundle, a.certPem);
      assert.equal(first.metadata.labels?.['app.kubernetes.io/managed-by'], 'meshca');

      // A new root in the bundle (rotation's publish step; the old root still signs): old ∪ new.
      signer.replace(buildCaMaterial({ signingCert: a.material.signingCert, privateKey: a.material.privateKey, chain: [], roots: [a.material.signingCert, b.material.signingCert] }));
      const both = a.certPem + b.certPem;
      await eventually(() => (ctb.get(NAME)?.spec.trustBundle === both ? true : undefined), 5000, 'the bundle with both roots');

      // Someone edits it (another bundle, a label dropped): repaired.
      ctb.put(NAME, { signerName: 'meshca.io/spiffe', trustBundle: b.certPem }, {});
      await eventually(() => (ctb.get(NAME)?.spec.trustBundle === both && ctb.get(NAME)?.metadata.labels?.['app.kubernetes.io/managed-by'] === 'meshca' ? true : undefined), 5000, 'the edited bundle repaired');

      // Someone deletes it: re-created.
      ctb.remove(NAME);
      await eventually(() => (ctb.get(NAME)?.spec.trustBundle === both ? true : undefined), 5000, 'the deleted bundle re-created');

      const writes = ctb.log.filter((e) => e.method !== 'GET');
      assert.ok(writes.some((e) => e.method === 'PUT' && e.code === 200) && writes.some((e) => e.method === 'POST' && e.code === 201), JSON.stringify(writes));
      assert.deepEqual(ctb.log.filter((e) => e.code === 422 || e.code === 403), [], 'no write refused by validation or admission');
      assert.ok(ctb.log.every((e) => e.path.startsWith('/apis/certificates.k8s.io/v1beta1/')), 'v1beta1 is the preferred served version here');

      // openssl reads every certificate of the published bundle.
      const published = ctb.get(NAME)!.spec.trustBundle;
      const blocks = published.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g)!;
      assert.equal(blocks.join(''), published, 'nothing but CERTIFICATE blocks');
      const subjects = blocks.map((pem) => {
        const out = spawnSync('openssl', ['x509', '-noout', '-subject'], { input: pem, encoding: 'utf8' });
        assert.equal(out.status, 0, out.stderr);
        return out.stdout.trim();
      });
      assert.deepEqual(subjects, ['subject=O = root-a', 'subject=O = root-b']);
    } finally {
      await plugin.close();
    }
  });

  test('a messy bundle is published in canonical form; the version is discovered; no API means no start', async () => {
    const ctb = kube.state.clusterTrustBundles;
    const a = await newRoot('root-c');
    const b = await newRoot('root-d');
    // Text around blocks, a duplicate and a private key: the API refuses the duplicate and the key, so they go.
    const messy = `# roots\n${a.certPem}\n${a.certPem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n${b.certPem}`;
    const canonical = canonicalTrustBundle(messy);
    assert.equal(canonical.pem, a.certPem + b.certPem);
    assert.deepEqual(canonical.skipped, ['block 2 is a PRIVATE KEY, not a CERTIFICATE']);

    // A 1.37 server: v1 serves ClusterTrustBundle and is preferred. Attest granted for this one signer name only.
    ctb.versions = ['v1beta1', 'v1'];
    ctb.attestGrants.add(`${kube.state.reviewerUser} example.com/mesh`);
    const listeners = new Set<() => void>();
    const source = { trustBundlePem: () => messy, onChange: (l: () => void) => (listeners.add(l), () => listeners.delete(l)) };
    const before = ctb.log.length;
    const publisher = await startClusterTrustBundlePublisher({ kubeConfig, bundle: source, signerName: 'example.com/mesh', logger });
    try {
      assert.equal(publisher.version, 'v1');
      assert.equal(ctb.get('example.com:mesh:roots')?.spec.trustBundle, a.certPem + b.certPem);
      const calls = ctb.log.slice(before);
      assert.ok(calls.length > 0 && calls.every((e) => e.path.startsWith('/apis/certificates.k8s.io/v1/') && (e.code < 400 || (e.method === 'GET' && e.code === 404))), JSON.stringify(calls));
    } finally {
      await publisher.close();
    }
    // A 1.27-1.32 server: v1alpha1 only. The bundle written through v1 is current, so nothing is written.
    ctb.versions = ['v1alpha1'];
    const alphaFrom = ctb.log.length;
    const alpha = await startClusterTrustBundlePublisher({ kubeConfig, bundle: source, signerName: 'example.com/mesh', logger });
    await alpha.close();
    assert.equal(alpha.version, 'v1alpha1');
    const alphaCalls = ctb.log.slice(alphaFrom);
    assert.ok(alphaCalls.length >= 2 && alphaCalls.every((e) => e.method === 'GET' && e.code === 200 && e.path.startsWith('/apis/certificates.k8s.io/v1alpha1/clustertrustbundles')), JSON.stringify(alphaCalls));
    ctb.versions = ['v1alpha1', 'v1beta1'];

    // No example.com attest grant: the API's admission refuses, and meshca keeps running (logged, retried).
    ctb.remove('example.com:mesh:roots');
    const denied = await startClusterTrustBundlePublisher({ kubeConfig, bundle: source, signerName: 'example.com/other', logger });
    await denied.close();
    assert.equal(ctb.log.at(-1)?.code, 403);

    // A cluster without the API (gate off): start-up fails with what to do.
    ctb.versions = [];
    await assert.rejects(startClusterTrustBundlePublisher({ kubeConfig, bundle: source, signerName: 'meshca.io/spiffe', logger }), (error: unknown) => {
      assert.ok(error instanceof ClusterTrustBundleNotServedError);
      assert.match(error.message, /^the API server serves no ClusterTrustBundle \(certificates\.k8s\.io v1, v1beta1, v1alpha1; served: v1\): turn on the ClusterTrustBundle feature gate/);
      return true;
    });
    ctb.versions = ['v1alpha1', 'v1beta1'];

    // Bad signer names are refused at start-up.
    assert.throws(() => clusterTrustBundlePlugin.configure({ clusterTrustBundle: true, clusterTrustBundleSigner: 'kubernetes.io/x' }, {}), /reserved for Kubernetes/);
    assert.throws(() => clusterTrustBundlePlugin.configure({}, { MESHCA_CLUSTER_TRUST_BUNDLE_SIGNER: 'meshca/spiffe' }), /MESHCA_CLUSTER_TRUST_BUNDLE_SIGNER/);
  });

  test('an API server down at start-up: the CA starts, and the bundle is published once it is back', async () => {
    const ctb = kube.state.clusterTrustBundles;
    const root = await newRoot('root-f');
    ctb.remove(NAME);
    kube.state.down = true;
    const publisher = await startClusterTrustBundlePublisher({ kubeConfig, bundle: { trustBundlePem: () => root.certPem, onChange: () => () => undefined }, signerName: 'meshca.io/spiffe', logger, firstRetryMs: 50 });
    try {
      assert.equal(ctb.get(NAME), undefined);
      kube.state.down = false;
      await eventually(() => (ctb.get(NAME)?.spec.trustBundle === root.certPem ? true : undefined), 5000, 'the bundle after the API server came back');
    } finally {
      kube.state.down = false;
      await publisher.close();
    }
  });

  test('the stand-in refuses what the API refuses', async () => {
    const { CertificatesV1beta1Api } = kubeClient();
    const api = kubeConfig.makeApiClient(CertificatesV1beta1Api);
    const a = await newRoot('root-e');
    const refusal = async (name: string, spec: { signerName?: string; trustBundle: string }): Promise<string> => {
      try {
        await api.createClusterTrustBundle({ body: { metadata: { name }, spec } });
      } catch (error) {
        const body = JSON.parse(String((error as { body?: unknown }).body)) as { code: number; message: string };
        return `${body.code} ${body.message}`;
      }
      return 'created';
    };
    const headers = a.certPem.replace('-----BEGIN CERTIFICATE-----\n', '-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\n');
    assert.equal(await refusal('meshca.io:spiffe:x', { signerName: 'meshca.io/spiffe', trustBundle: a.certPem + a.certPem }), '422 ClusterTrustBundle.certificates.k8s.io "meshca.io:spiffe:x" is invalid: spec.trustBundle: Invalid value: "<value omitted>": duplicate trust anchor (indices [0 1])');
    assert.match(await refusal('meshca.io:spiffe:x', { signerName: 'meshca.io/spiffe', trustBundle: headers }), /entry 0 has PEM block headers/);
    assert.match(await refusal('meshca.io:spiffe:x', { signerName: 'meshca.io/spiffe', trustBundle: 'no pem' }), /at least one trust anchor must be provided/);
    assert.match(await refusal('wrong-name', { signerName: 'meshca.io/spiffe', trustBundle: a.certPem }), /must be named with prefix meshca\.io:spiffe:/);
    assert.match(await refusal('a:b', { trustBundle: a.certPem }), /without signer name must not have ":"/);
    assert.equal(await refusal('meshca.io:spiffe:x', { signerName: 'meshca.io/spiffe', trustBundle: a.certPem }), 'created');
    const current = await api.readClusterTrustBundle({ name: 'meshca.io:spiffe:x' });
    await assert.rejects(api.replaceClusterTrustBundle({ name: 'meshca.io:spiffe:x', body: { ...current, spec: { ...current.spec, signerName: 'meshca.io/other' } } }), (error: { code?: number; body?: unknown }) => {
      assert.equal(error.code, 422);
      assert.match(String(error.body), /spec.signerName: Invalid value: \\"meshca.io\/other\\": field is immutable/);
      return true;
    });
  });
});
