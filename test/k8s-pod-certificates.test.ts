/**
 * The PodCertificateRequest signer (`--pod-certificate-signer`), in process against the Kubernetes stand-in over
 * real HTTPS, with a real CertificateAuthority on an in-memory root. The test plays the kubelet: it makes a key,
 * files a request for a real pod (the 1.36+ stub CSR, or the 1.35 key + proof over the pod UID), and reads the
 * answer the signer wrote; a refresh is filed at beginRefreshAt, as the kubelet does. Every status the signer
 * writes must pass the stand-in's validation of the API's rules (no 422), and a restarted signer re-signs nothing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { kubePodSource, PodCache, whyPodIsNotLive } from '../src/authn/index.js';
import { CaError } from '../src/ca/errors.js';
import { CertificateAuthority, createSelfSignedRoot, LocalSigner } from '../src/ca/index.js';
import { podCertificatesPlugin } from '../src/ca/kubernetes/pod-certificates/index.js';
import { requestKey } from '../src/ca/kubernetes/pod-certificates/request.js';
import { startPodCertificateSigner, type PodCertificateSigner } from '../src/ca/kubernetes/pod-certificates/signer.js';
import type { PodLookup } from '../src/ca/kubernetes/types.js';
import type { SignedChain, WorkloadSigner } from '../src/ca/signer.js';
import { kubeClient, loadKubeClient } from '../src/kube/client.js';
import { loadKubeConfig } from '../src/kube/config.js';
import { createLogger } from '../src/log.js';
import { createCsr, generateKeyPairOf } from '../src/pki/index.js';
import { podCertificateRequests, type PodCertificateRequestStore } from './standins/kube-pcr.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';

const SIGNER = 'meshca.io/spiffe';
const TD = 'cluster.local';
const NS = 'default';

type Status = { conditions?: { type: string; status: string; reason: string; message: string }[]; certificateChain?: string; notBefore?: string; beginRefreshAt?: string; notAfter?: string };
type Pcr = { metadata: { name: string; uid: string; resourceVersion: string }; status: Status };

describe('PodCertificateRequest signer', () => {
  let standin: KubeStandin;
  let store: PodCertificateRequestStore;
  let kubeConfig: KubeConfig;
  let api: CustomObjectsApi;
  let authority: CertificateAuthority;
  let rootPem: string;
  let pods: PodCache;
  let signer: PodCertificateSigner;
  let dir: string;
  let podUid: string;
  let signatures = 0;
  /** Fault knob: the key source is unavailable for this many next signatures. */
  let keySourceDown = 0;
  /** The cluster's clock, shared by the API server, the CA and the signer; the test moves it for the refresh. */
  let offsetMs = 0;
  const now = (): number => Date.now() + offsetMs;
  const logger = createLogger({ level: 'silent', format: 'json' });

  function lookupOf(cache: PodCache): PodLookup {
    return {
      whenReady: (ms) => cache.whenReady(ms),
      lookup: (namespace, name) => {
        const pod = cache.byName(namespace, name);
        return pod && { uid: pod.uid, serviceAccount: pod.serviceAccount, nodeName: pod.nodeName, notLive: whyPodIsNotLive(pod) };
      },
    };
  }

  function startSigner(): PodCertificateSigner {
    return startPodCertificateSigner({ kubeConfig, signerName: SIGNER, authority, trustDomain: TD, pods: lookupOf(pods), logger, now, podGraceMs: 100, retryDelayMs: 50 });
  }

  before(async () => {
    // Both take a while (the client's modules, the stand-in's token keys): at once.
    [, standin] = await Promise.all([loadKubeClient(), startKubeStandin()]);
    store = podCertificateRequests(standin.state);
    store.served = new Set(['v1beta1']);
    store.now = now;
    kubeConfig = await loadKubeConfig(standin.kubeconfigPath, {});
    api = kubeConfig.makeApiClient(kubeClient().CustomObjectsApi);
    const root = await createSelfSignedRoot({ stateDir: '/nonexistent', trustDomain: TD, keySpec: 'ec-p256', ttlSeconds: 30 * 86400 });
    rootPem = root.certPem;
    const local = new LocalSigner('self-signed', root.material);
    // Counts signatures: a restarted signer must not sign again.
    const counting: WorkloadSigner = Object.assign(Object.create(local) as WorkloadSigner, {
      sign: (request: Parameters<WorkloadSigner['sign']>[0]): Promise<SignedChain> | SignedChain => {
        if (keySourceDown > 0) {
          keySourceDown--;
          throw new CaError('UPSTREAM_UNAVAILABLE', 'the key source is briefly unavailable');
        }
        signatures++;
        return local.sign(request);
      },
    });
    authority = new CertificateAuthority({ signer: counting, defaultTtlSeconds: 86400, maxTtlSeconds: 90 * 86400, now });
    podUid = standin.state.addPod({ namespace: NS, name: 'web-0', serviceAccount: 'web', nodeName: 'node-a' }).metadata.uid!;
    pods = new PodCache({ source: kubePodSource(kubeConfig.makeApiClient(kubeClient().CoreV1Api), kubeConfig), clusterId: 'test' });
    pods.start();
    dir = mkdtempSync(join(tmpdir(), 'pcr-'));
    signer = startSigner();
    await signer.ready;
  });

  after(async () => {
    await signer?.close();
    pods?.stop();
    await standin?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const spki = (key: KeyObject): Buffer => createPublicKey(key).export({ type: 'spki', format: 'der' });
  const ecKey = (namedCurve = 'P-256'): KeyObject => generateKeyPairOf({ type: 'ec', curve: namedCurve }).privateKey;
  const stub = (key: KeyObject): string => Buffer.from(createCsr({ privateKey: key }).replace(/-----[^-]+-----|\s/g, ''), 'base64').toString('base64');

  /** Files a request as the kubelet does (generateName, owner reference, spec from the pod). */
  async function file(spec: Record<string, unknown>, version = 'v1beta1'): Promise<string> {
    const body = {
      apiVersion: `certificates.k8s.io/${version}`,
      kind: 'PodCertificateRequest',
      metadata: { generateName: 'req-', namespace: NS, ownerReferences: [{ apiVersion: 'core/v1', kind: 'Pod', name: 'web-0', uid: podUid }] },
      spec: {
        signerName: SIGNER,
        podName: 'web-0',
        podUID: podUid,
        serviceAccountName: 'web',
        serviceAccountUID: randomUUID(),
        nodeName: 'node-a',
        nodeUID: randomUUID(),
        maxExpirationSeconds: 86400,
        ...spec,
      },
    };
    const created = (await api.createNamespacedCustomObject({ group: 'certificates.k8s.io', version, namespace: NS, plural: 'podcertificaterequests', body })) as Pcr;
    return created.metadata.name;
  }

  async function answered(name: string): Promise<Pcr> {
    for (let i = 0; i < 500; i++) {
      const pcr = store.get(NS, name) as Pcr | undefined;
      if (pcr?.status.conditions?.length) return pcr;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.fail(`request ${name} was not answered within 5 s`);
  }

  /** The kubelet's checks of an Issued request, and the API's rules on its times. */
  function checkIssued(pcr: Pcr, key: KeyObject, filedAt: number, maxExpirationSeconds = 86400): X509Certificate {
    assert.equal(pcr.status.conditions?.[0]?.type, 'Issued', JSON.stringify(pcr.status.conditions));
    const chain = pcr.status.certificateChain!;
    const leaf = new X509Certificate(chain);
    assert.match(leaf.subjectAltName ?? '', new RegExp(`URI:spiffe://${TD}/ns/${NS}/sa/web`));
    assert.ok(leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(spki(key)));
    writeFileSync(join(dir, 'root.pem'), rootPem);
    writeFileSync(join(dir, 'chain.pem'), chain);
    const out = execFileSync('openssl', ['verify', '-x509_strict', '-attime', String(Math.floor(now() / 1000)), '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'chain.pem'), join(dir, 'chain.pem')], { encoding: 'utf8' });
    assert.match(out, /OK/);
    const notBefore = Date.parse(pcr.status.notBefore!);
    const notAfter = Date.parse(pcr.status.notAfter!);
    const refresh = Date.parse(pcr.status.beginRefreshAt!);
    assert.equal(notBefore, Date.parse(leaf.validFrom));
    assert.equal(notAfter, Date.parse(leaf.validTo));
    assert.match(pcr.status.notBefore!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.ok(notBefore <= filedAt && filedAt - notBefore < 5 * 60_000, 'backdated by less than 5 minutes');
    assert.equal(notAfter - notBefore, maxExpirationSeconds * 1000, 'the CA default (24 h), within 1 h..maxExpirationSeconds');
    assert.ok(refresh >= notBefore + 600_000 && refresh <= notAfter - 600_000, 'beginRefreshAt 10 minutes inside');
    assert.equal(refresh, notBefore + Math.floor((notAfter - notBefore) / 2000) * 1000, 'beginRefreshAt at half the lifetime');
    return leaf;
  }

  test('a stub-CSR request is Issued, and its refresh at beginRefreshAt gets a new certificate', async () => {
    const key = ecKey();
    const filedAt = now();
    const first = checkIssued(await answered(await file({ stubPKCS10Request: stub(key) })), key, filedAt);
    // The kubelet refreshes at beginRefreshAt with a new key and a new request.
    offsetMs += Date.parse(first.validFrom) + (Date.parse(first.validTo) - Date.parse(first.validFrom)) / 2 - now();
    const nextKey = ecKey('P-384');
    const refreshedAt = now();
    const second = checkIssued(await answered(await file({ stubPKCS10Request: stub(nextKey) })), nextKey, refreshedAt);
    assert.notEqual(second.serialNumber, first.serialNumber);
    assert.ok(Date.parse(second.validFrom) > Date.parse(first.validFrom) + 3600_000);
  });

  test('a request with the 1.35 encoding (key + signature over the pod UID) and the shortest maximum is Issued for exactly 1 h', async () => {
    const key = ecKey();
    const proof = sign('sha256', Buffer.from(podUid, 'ascii'), { key, dsaEncoding: 'der' });
    const pkixPublicKey = spki(key).toString('base64');
    checkIssued(await answered(await file({ pkixPublicKey, proofOfPossession: proof.toString('base64'), maxExpirationSeconds: 3600 })), key, now(), 3600);
  });

  test('a conflicting status write and a key source briefly down are retried, not reported', async () => {
    store.conflictNextStatusWrites = 1;
    keySourceDown = 1;
    const before = signatures;
    const key = ecKey();
    checkIssued(await answered(await file({ stubPKCS10Request: stub(key) })), key, now());
    assert.equal(signatures, before + 1, 'signed once: the conflict re-sends the same certificate');
    assert.equal(store.conflictNextStatusWrites + keySourceDown, 0);
  });

  test('requests for another pod, UID, node or service account, with a key type meshca does not take or with user annotations, are Denied with distinct reasons (filed while the watch is down)', async () => {
    // The watch drops: the signer resumes from the last resourceVersion it saw and still gets these.
    store.closeWatches();
    const cases: [Record<string, unknown>, string][] = [
      [{ podName: 'ghost-0', podUID: randomUUID() }, 'PodNotFound'],
      [{ podUID: randomUUID() }, 'PodUIDMismatch'],
      [{ nodeName: 'node-b' }, 'NodeMismatch'],
      [{ serviceAccountName: 'admin' }, 'ServiceAccountMismatch'],
      [{ stubPKCS10Request: stub(ecKey('P-521')) }, 'UnsupportedKeyType'],
      [{ unverifiedUserAnnotations: { 'example.com/dns-names': 'web.default.svc' } }, 'InvalidUnverifiedUserAnnotations'],
    ];
    const names = await Promise.all(cases.map(([spec]) => file({ stubPKCS10Request: stub(ecKey()), ...spec })));
    const results = await Promise.all(names.map(answered));
    results.forEach((pcr, i) => {
      const condition = pcr.status.conditions![0]!;
      assert.deepEqual([condition.type, condition.reason], ['Denied', cases[i]![1]], condition.message);
      assert.ok(condition.message.length > 20);
      assert.equal(pcr.status.certificateChain, undefined);
    });
    assert.match(results[4]!.status.conditions![0]!.message, /ECDSAP256, ECDSAP384, RSA3072 or RSA4096/);
  });

  test('a bad proof of possession: the API server refuses the request, and the signer would deny it', async () => {
    const key = ecKey();
    const proof = sign('sha256', Buffer.from(randomUUID(), 'ascii'), { key, dsaEncoding: 'der' }).toString('base64');
    const pkixPublicKey = spki(key).toString('base64');
    await assert.rejects(file({ pkixPublicKey, proofOfPossession: proof }), (error: { code?: number }) => error.code === 422);
    const verdict = requestKey({ spec: { podUID: podUid, pkixPublicKey, proofOfPossession: proof } });
    assert.equal(verdict.kind === 'refused' && verdict.refusal.reason, 'InvalidProofOfPossession');
  });

  test('after a restart nothing is signed twice, and no status was refused by the API', async () => {
    const key = ecKey();
    checkIssued(await answered(await file({ stubPKCS10Request: stub(key) })), key, now());
    const before = { signatures, writes: store.statusWrites, objects: JSON.stringify(store.list()) };
    await signer.close();
    // The API server is upgraded to serve only v1 (1.40, v1beta1 removed): the new signer finds v1 and reads through it.
    store.served = new Set(['v1']);
    signer = startSigner();
    await signer.ready;
    assert.equal(signer.version, 'v1');
    // One more request proves the new signer is watching; the old ones stay as they were.
    const last = await answered(await file({ stubPKCS10Request: stub(ecKey()) }, 'v1'));
    assert.equal(last.status.conditions![0]!.type, 'Issued');
    assert.equal(signatures, before.signatures + 1);
    assert.equal(store.statusWrites, before.writes + 1);
    assert.equal(JSON.stringify(store.list().filter((o) => (o as Pcr).metadata.name !== last.metadata.name)), before.objects);
    assert.deepEqual(store.rejections.filter((r) => r.write === 'status'), []);
  });

  test('key encodings as kubelets send them: the sample stub CSR and key + proof of the wire contract; Ed25519 is not taken', () => {
    // Sample values of a real kubelet-shaped request (P-256), for pod UID 0f8fad5b-d9cb-469f-a165-70867728950e.
    const sampleStub =
      'MIG5MGICAQAwADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABCGc3oKZctaRwDVAEGq8GRXQoG/rpZOWRmnW3S+4F+Quj6mEMQ4tsenqbmRKVRWyRCGE8ybD5vspjr1sn1fnBvmgADAKBggqhkjOPQQDAgNHADBEAiBLjjp48c0cbr2+ZHRWUvyMRuVGekgV7ufZDuMDEt09+gIgTRhCUsF7dU2xLEiBoomUO4UZTOtwcrp8Dou2U2dSxdU=';
    const samplePkix = 'MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7g5sOWPBO+DLDSTWCLN3EhcjvG9qDpc5nP/RUZT5XJL0ZsPwGVu48DBQRFMjkl/iH/o/fcHlvYN12TPIrbCoeg==';
    const sampleProof = 'MEQCID5uhUAWR878cxjI9Gcil9xyA7Om+LCFSiQRmXP9mVb/AiBybQIfWve0eEjER6peF07D/p0bf9fCy5iq/BbhxT0JfA==';
    const stubKey = requestKey({ spec: { stubPKCS10Request: sampleStub } });
    assert.equal(stubKey.kind, 'key');
    // The issuance pipeline's strict CSR parser takes the stub as it is.
    assert.ok(stubKey.kind === 'key' && authority.checkCsr(stubKey.csrPem!).spkiDer.equals(stubKey.spkiDer));
    assert.equal(requestKey({ spec: { podUID: '0f8fad5b-d9cb-469f-a165-70867728950e', pkixPublicKey: samplePkix, proofOfPossession: sampleProof } }).kind, 'key');
    const ed = generateKeyPairSync('ed25519').privateKey;
    const edProof = sign(null, Buffer.from(podUid, 'ascii'), ed).toString('base64');
    const edVerdict = requestKey({ spec: { podUID: podUid, pkixPublicKey: spki(ed).toString('base64'), proofOfPossession: edProof } });
    assert.equal(edVerdict.kind === 'refused' && edVerdict.refusal.reason, 'UnsupportedKeyType');
  });

  test('--pod-certificate-signer takes a Kubernetes signer name, and is off by default', () => {
    assert.equal(podCertificatesPlugin.configure({}, {}), undefined);
    assert.equal(typeof podCertificatesPlugin.configure({}, { MESHCA_POD_CERTIFICATE_SIGNER: SIGNER }), 'function');
    for (const bad of ['spiffe', 'meshca/spiffe', 'meshca.io/a/b', 'Meshca.io/x', 'kubernetes.io/x']) {
      assert.throws(() => podCertificatesPlugin.configure({ podCertificateSigner: bad }, {}), /--pod-certificate-signer \(env MESHCA_POD_CERTIFICATE_SIGNER\)/);
    }
  });
});
