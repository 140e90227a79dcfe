/**
 * The CertificateSigningRequest signer (`meshca ca --csr-signer NAME`) against the Kubernetes stand-in over real
 * HTTPS, with a real CertificateAuthority: istiod's ISTIOD_RA_KUBERNETES_API flow (create as istiod, approve,
 * wait for status.certificate), what is left alone (unapproved, denied), what is refused with a Failed condition
 * (a requester not allowed, a request that names no workload, a weak key), a transient key-source failure retried
 * rather than failed, a dropped watch resumed, and a restart that signs nothing twice.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { CertificatesV1Api, KubeConfig, V1CertificateSigningRequest } from '@kubernetes/client-node';
import pino from 'pino';
import { Registry } from 'prom-client';
import type { IssuanceRecord } from '../src/ca/kubernetes/audit.js';
import { CertificateAuthority, createSelfSignedRoot, LocalSigner } from '../src/ca/index.js';
import { CaError } from '../src/ca/errors.js';
import { csrSignerPlugin } from '../src/ca/kubernetes/csr-signer/index.js';
import { startCsrSigner } from '../src/ca/kubernetes/csr-signer/controller.js';
import type { KubernetesPluginContext, RunningKubernetesPlugin } from '../src/ca/kubernetes/types.js';
import type { WorkloadSigner } from '../src/ca/signer.js';
import { loadKubeClient } from '../src/kube/client.js';
import { createCsr, generateKeyPairFor, generateKeyPairOf } from '../src/pki/index.js';
import { eventually } from './support/eventually.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { runMeshca } from './support/process.js';
import { cleanEnv } from './ca-helpers.js';

const SIGNER = 'meshca.io/workloads';
const ISTIOD = 'system:serviceaccount:istio-system:istiod';
const MALLORY = 'system:serviceaccount:default:mallory';
const USAGES = ['digital signature', 'key encipherment', 'server auth', 'client auth'];

describe('CSR signer (certificates.k8s.io/v1, istiod RA flow)', () => {
  let kube: KubeStandin;
  let dir: string;
  let rootPem: string;
  let context: KubernetesPluginContext;
  /** What the plugin reported for the CA's audit line. */
  const issuedRecords: IssuanceRecord[] = [];
  let signerPlugin: RunningKubernetesPlugin | undefined;
  let istiod: CertificatesV1Api;
  let mallory: CertificatesV1Api;
  let serial = 0;

  const clientAs = async (token: string): Promise<CertificatesV1Api> => {
    const k8s = await loadKubeClient();
    const kc: KubeConfig = new k8s.KubeConfig();
    kc.loadFromString(kube.kubeconfigYaml.replace(kube.reviewerToken, token));
    return kc.makeApiClient(k8s.CertificatesV1Api);
  };

  /** Creates a CSR as istiod does (name csr-workload-*, TTL in the annotation, istiod's usages); approves it unless told not to. */
  const request = async (api: CertificatesV1Api, csrPem: string, approval: 'Approved' | 'Denied' | 'none' = 'Approved'): Promise<string> => {
    const name = `csr-workload-${++serial}`;
    await api.createCertificateSigningRequest({
      body: {
        metadata: { name, annotations: { 'experimental.cert-manager.io/request-duration': '24h0m0s' } },
        spec: { request: Buffer.from(csrPem).toString('base64'), signerName: SIGNER, usages: USAGES },
      },
    });
    if (approval !== 'none') {
      const csr = await api.readCertificateSigningRequest({ name });
      csr.status = { conditions: [{ type: approval, status: 'True', reason: `Istiod${approval}`, message: `${approval.toLowerCase()} by istiod` }] };
      await api.replaceCertificateSigningRequestApproval({ name, body: csr });
    }
    return name;
  };
  const workloadCsr = (uri: string): string => createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey, uris: [uri] });
  const read = (name: string): V1CertificateSigningRequest => kube.state.csr.get(name) as unknown as V1CertificateSigningRequest;
  const signed = (name: string): Promise<string> =>
    eventually(
      () => {
        const certificate = read(name).status?.certificate;
        return certificate ? Buffer.from(certificate, 'base64').toString('utf8') : undefined;
      },
      5000,
      `status.certificate of ${name}`,
    );
  const failed = (name: string): Promise<{ reason?: string; message?: string }> =>
    eventually(() => read(name).status?.conditions?.find((c) => c.type === 'Failed'), 5000, `a Failed condition on ${name}`);
  const statusWrites = (name: string): number => kube.state.requests.filter((r) => r.method === 'PUT' && r.path.endsWith(`/certificatesigningrequests/${name}/status`)).length;

  let cliRun: ReturnType<typeof runMeshca>;

  before(async () => {
    // Through the built CLI, alongside the set-up: the flag and its variable reach the plugin's check at start-up.
    cliRun = runMeshca(['ca', '--state-dir', '/nonexistent'], { env: cleanEnv({ MESHCA_CSR_SIGNER: 'Meshca.io/workloads' }) });
    kube = await startKubeStandin();
    kube.state.bearerTokens.set('istiod-token', ISTIOD);
    kube.state.bearerTokens.set('mallory-token', MALLORY);
    dir = mkdtempSync(path.join(tmpdir(), 'csr-signer-'));
    const root = await createSelfSignedRoot({ stateDir: dir, trustDomain: 'cluster.local', keySpec: 'ec-p256', ttlSeconds: 10 * 86400 });
    const signer = new LocalSigner('self-signed', root.material);
    rootPem = signer.trustBundlePem();
    writeFileSync(path.join(dir, 'root.pem'), rootPem);
    const k8s = await loadKubeClient();
    const kubeConfig = new k8s.KubeConfig();
    kubeConfig.loadFromString(kube.kubeconfigYaml);
    context = {
      kubeConfig,
      signer,
      authority: new CertificateAuthority({ signer, defaultTtlSeconds: 3600, maxTtlSeconds: 2 * 86400 }),
      trustDomain: 'cluster.local',
      logger: pino({ level: 'silent' }),
      registry: new Registry(),
      recordIssued: (record) => issuedRecords.push(record),
    };
    istiod = await clientAs('istiod-token');
    mallory = await clientAs('mallory-token');
    const start = csrSignerPlugin.configure({ csrSigner: SIGNER }, {});
    assert.ok(start, '--csr-signer turns the plugin on');
    signerPlugin = await start(context);
  });

  after(async () => {
    await signerPlugin?.close();
    await kube.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('is off by default and refuses a signer name the API would refuse', async () => {
    const cli = await cliRun;
    assert.equal(cli.code, 2, cli.stderr);
    assert.match(cli.stderr, /^meshca: invalid --csr-signer \(env MESHCA_CSR_SIGNER\)="Meshca.io\/workloads": expected a Kubernetes signer name such as meshca.io\/workloads \(domain "Meshca.io" is not a DNS subdomain/m);
    assert.equal(csrSignerPlugin.configure({}, {}), undefined);
    assert.throws(() => csrSignerPlugin.configure({ csrSigner: 'workloads' }, {}), /invalid --csr-signer \(env MESHCA_CSR_SIGNER\)="workloads": expected a Kubernetes signer name/);
    assert.throws(() => csrSignerPlugin.configure({}, { MESHCA_CSR_SIGNER: 'kubernetes.io/kubelet-serving' }), /reserved/);
  });

  it("signs istiod's approved CSR: the chain verifies strictly and names the SPIFFE ID, valid for the annotation's 24h", async () => {
    const uri = 'spiffe://cluster.local/ns/default/sa/httpbin';
    const name = await request(istiod, workloadCsr(uri));
    const chainPem = await signed(name);
    const leafPath = path.join(dir, 'leaf.pem');
    writeFileSync(leafPath, chainPem);
    const out = execFileSync('openssl', ['verify', '-x509_strict', '-CAfile', path.join(dir, 'root.pem'), leafPath], { encoding: 'utf8' });
    assert.equal(out.trim(), `${leafPath}: OK`);
    const leaf = new X509Certificate(chainPem);
    assert.equal(leaf.subjectAltName, `URI:${uri}`);
    const lifetimeHours = (Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 3_600_000;
    assert.ok(lifetimeHours >= 24 && lifetimeHours <= 24.1, `lifetime ${lifetimeHours}h`);
    assert.equal(chainPem.includes(rootPem.trim()), false, 'the root is not part of status.certificate');
    assert.equal(read(name).status?.conditions?.some((c) => c.type === 'Failed'), false);
    // Reported for the CA's audit line and issuance count, as CreateCertificate's certificates are.
    const record = await eventually(() => issuedRecords.find((r) => r.object === name), 5000, 'the issuance record');
    assert.deepEqual(
      { ...record },
      { via: 'csr-signer', caller: record.caller, object: name, spiffeId: uri, serial: leaf.serialNumber.toLowerCase(), notAfter: new Date(leaf.validTo).toISOString() },
    );
    assert.match(record.caller, /istiod/);
  });

  it('resumes a dropped watch from its resourceVersion; leaves unapproved and denied requests alone, fails refused ones with a reason', async () => {
    // The watch is dropped first: everything below happens while it is down and reaches the signer when it resumes.
    const isWatch = (r: { path: string; query: string }): boolean => r.query.includes('watch=true') && r.path.includes('certificatesigningrequests');
    const watchesBefore = kube.state.requests.filter(isWatch).length;
    kube.state.closeWatches();
    const pending = await request(istiod, workloadCsr('spiffe://cluster.local/ns/default/sa/pending'), 'none');
    const denied = await request(istiod, workloadCsr('spiffe://cluster.local/ns/default/sa/denied'), 'Denied');
    const foreign = await request(mallory, workloadCsr('spiffe://cluster.local/ns/istio-system/sa/istiod'));
    const noWorkload = await request(istiod, workloadCsr('spiffe://cluster.local/not-a-workload'));
    const otherDomain = await request(istiod, workloadCsr('spiffe://evil.example/ns/default/sa/app'));
    const weak = generateKeyPairOf({ type: 'rsa', bits: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    writeFileSync(path.join(dir, 'weak.key'), weak);
    const weakCsr = execFileSync('openssl', ['req', '-new', '-key', path.join(dir, 'weak.key'), '-subj', '/O=x', '-addext', 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/weak'], { encoding: 'utf8' });
    const weakName = await request(istiod, weakCsr);

    const refusal = await failed(foreign);
    assert.equal(refusal.reason, 'RequesterNotAllowed');
    assert.match(refusal.message ?? '', /only from system:serviceaccount:istio-system:istiod, not from "system:serviceaccount:default:mallory"; add it to --csr-signer-requesters/);
    assert.equal((await failed(noWorkload)).reason, 'InvalidIdentity');
    const domain = await failed(otherDomain);
    assert.equal(domain.reason, 'ForeignTrustDomain');
    assert.match(domain.message ?? '', /not in this CA's trust domain "cluster.local"/);
    const weakRefusal = await failed(weakName);
    assert.equal(weakRefusal.reason, 'InvalidRequest');
    assert.match(weakRefusal.message ?? '', /1024/);
    for (const name of [foreign, noWorkload, otherDomain, weakName]) assert.equal(read(name).status?.certificate, undefined);

    // A later request signed means the events of the earlier ones were seen.
    await signed(await request(istiod, workloadCsr('spiffe://cluster.local/ns/default/sa/barrier')));
    const resumed = kube.state.requests.filter(isWatch).slice(watchesBefore);
    assert.ok(resumed.length >= 1 && resumed.every((r) => /resourceVersion=\d+/.test(r.query)), `the watch resumed from a resourceVersion: ${resumed.map((r) => r.query).join(' ')}`);
    for (const name of [pending, denied]) {
      assert.equal(read(name).status?.certificate, undefined, `${name} has no certificate`);
      assert.equal(read(name).status?.conditions?.some((c) => c.type === 'Failed') ?? false, false, `${name} is not failed`);
      assert.equal(statusWrites(name), 0);
    }
  });

  it('retries a key source that is briefly down, and never signs twice across a restart', async () => {
    const before = kube.state.csr.get('csr-workload-1')?.status as { certificate?: string };
    await signerPlugin!.close();
    signerPlugin = undefined;
    const writesBefore = statusWrites('csr-workload-1');

    // The key source fails the first signature (UNAVAILABLE), then recovers.
    let failures = 1;
    const flaky: WorkloadSigner = Object.create(context.signer) as WorkloadSigner;
    flaky.sign = (request) => (failures-- > 0 ? Promise.reject(new CaError('UPSTREAM_UNAVAILABLE', 'Vault is briefly unreachable')) : context.signer.sign(request));
    const authority = new CertificateAuthority({ signer: flaky, defaultTtlSeconds: 3600, maxTtlSeconds: 2 * 86400 });
    signerPlugin = startCsrSigner({ ...context, authority }, { signerName: SIGNER, requesters: [ISTIOD], retryDelayMs: 20 });
    const retried = await request(istiod, workloadCsr('spiffe://cluster.local/ns/default/sa/retried'));
    await signed(retried);
    assert.equal(failures, -1, 'two signatures since the restart, the failed one and its retry: nothing already signed, refused, pending or denied was signed again');
    assert.equal(read(retried).status?.conditions?.some((c) => c.type === 'Failed'), false, 'a transient failure is not a Failed condition');

    // Without `sign` on the signer the status write is a 403: retried (not Failed) until the grant arrives.
    kube.state.csr.signerGrants = new Set([`${ISTIOD} approve ${SIGNER}`]);
    const ungranted = await request(istiod, workloadCsr('spiffe://cluster.local/ns/default/sa/ungranted'));
    await eventually(() => (statusWrites(ungranted) >= 2 ? true : undefined), 5000, 'a refused status write');
    assert.equal(read(ungranted).status?.conditions?.some((c) => c.type === 'Failed'), false);
    kube.state.csr.signerGrants.add(`system:serviceaccount:meshca-system:meshca sign meshca.io/*`);
    await signed(ungranted);
    kube.state.csr.signerGrants = undefined;

    assert.equal((kube.state.csr.get('csr-workload-1')?.status as { certificate?: string }).certificate, before.certificate);
    assert.equal(statusWrites('csr-workload-1'), writesBefore, 'the restarted signer did not write an already signed CSR');

  });

  it("the stand-in enforces the API's CSR rules (422 Invalid, 409 Conflict)", async () => {
    const rejects = async (call: Promise<unknown>, code: number, message: RegExp): Promise<void> => {
      await assert.rejects(call, (error: { code?: number; body?: unknown }) => {
        assert.equal(error.code, code);
        assert.match(typeof error.body === 'string' ? error.body : JSON.stringify(error.body), message);
        return true;
      });
    };
    const body = (request: string, extra: Record<string, unknown> = {}): V1CertificateSigningRequest => ({
      metadata: { name: `rules-${++serial}` },
      spec: { request, signerName: SIGNER, usages: USAGES, ...extra },
    });
    const good = Buffer.from(workloadCsr('spiffe://cluster.local/ns/default/sa/rules')).toString('base64');
    await rejects(istiod.createCertificateSigningRequest({ body: body(Buffer.from('not a CSR').toString('base64')) }), 422, /spec.request: Invalid value.*CERTIFICATE REQUEST/);
    await rejects(istiod.createCertificateSigningRequest({ body: body(good, { expirationSeconds: 300 }) }), 422, /spec.expirationSeconds: Invalid value: 300/);
    await rejects(istiod.createCertificateSigningRequest({ body: body(good, { signerName: 'kubernetes.io/legacy-unknown' }) }), 422, /legacy signerName is not allowed/);
    const name = await request(istiod, workloadCsr('spiffe://cluster.local/ns/default/sa/rules'), 'none');
    const csr = await istiod.readCertificateSigningRequest({ name });
    csr.status = { conditions: [{ type: 'Approved', status: 'True' }, { type: 'Denied', status: 'True' }] };
    await rejects(istiod.replaceCertificateSigningRequestApproval({ name, body: csr }), 422, /mutually exclusive/);
    const notPem = { ...csr, status: { certificate: Buffer.from('-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n').toString('base64') } };
    await rejects(istiod.replaceCertificateSigningRequestStatus({ name, body: notPem }), 422, /status.certificate: Invalid value.*only CERTIFICATE PEM blocks/);
    const stale = { ...csr, metadata: { ...csr.metadata, resourceVersion: '1' } };
    await rejects(istiod.replaceCertificateSigningRequestStatus({ name, body: stale }), 409, /the object has been modified/);
    // A signed CSR's certificate cannot change, and its approval cannot be taken back.
    const done = await istiod.readCertificateSigningRequest({ name: 'csr-workload-1' });
    const other = Buffer.from(rootPem).toString('base64');
    await rejects(istiod.replaceCertificateSigningRequestStatus({ name: 'csr-workload-1', body: { ...done, status: { ...done.status, certificate: other } } }), 422, /may not modify existing certificate content/);
    await rejects(istiod.replaceCertificateSigningRequestApproval({ name: 'csr-workload-1', body: { ...done, status: { ...done.status, conditions: [] } } }), 422, /may not remove a condition of type \\"Approved\\"/);
  });
});
