/**
 * Part 7: the PodCertificateRequest signer under a burst. A node pool's worth of pods (1,000) each gets a request
 * filed at once, as kubelets do when the pods start; the signer (`--pod-certificate-signer`, in this process, with
 * a real CertificateAuthority on an in-memory P-256 root) answers them over real HTTPS against the Kubernetes
 * stand-in. Measured: the time from the first request filed to the last one answered, and every API call the
 * signer and its pod cache made meanwhile (the stand-in records each), per request.
 */
import { randomUUID } from 'node:crypto';
import { kubePodSource, PodCache, whyPodIsNotLive } from '../src/authn/index.js';
import { CertificateAuthority, createSelfSignedRoot, LocalSigner } from '../src/ca/index.js';
import { startPodCertificateSigner } from '../src/ca/kubernetes/pod-certificates/signer.js';
import { kubeClient, loadKubeClient } from '../src/kube/client.js';
import { loadKubeConfig } from '../src/kube/config.js';
import { createLogger } from '../src/log.js';
import { createCsr, generateKeyPairFor } from '../src/pki/index.js';
import { podCertificateRequests } from '../test/standins/kube-pcr.js';
import { startKubeStandin } from '../test/standins/kube.js';

export interface KubernetesBenchResult {
  requests: number;
  issued: number;
  notIssued: number;
  seconds: number;
  /** Of `seconds`, the time the stand-in took to take the requests (its validation of each create). */
  filingSeconds: number;
  requestsPerSecond: number;
  apiCalls: number;
  apiCallsPerRequest: number;
  /** "METHOD kind" → count, e.g. "PUT podcertificaterequests/status". */
  apiCallsByKind: Record<string, number>;
  /** Status writes the stand-in refused (the API's validation). */
  rejectedStatusWrites: number;
}

const SIGNER = 'meshca.io/spiffe';
const NAMESPACE = 'bench';

/** "PUT podcertificaterequests/status" from a request's method and path. */
function kindOf(method: string, path: string, query: string): string {
  const parts = path.split('/').filter(Boolean);
  const resources = ['podcertificaterequests', 'pods', 'namespaces', 'tokenreviews'];
  const at = parts.findIndex((p) => resources.includes(p));
  const resource = at === -1 ? parts.slice(0, 3).join('/') : parts[at]!;
  const sub = at !== -1 && parts.length > at + 2 ? `/${parts[at + 2]}` : '';
  const watch = /[?&]watch=(true|1)/.test(query) ? ' (watch)' : '';
  return `${method} ${resource}${sub}${watch}`;
}

export async function runKubernetesBench(options: { requests: number; log: (line: string) => void }): Promise<KubernetesBenchResult> {
  const [, standin] = await Promise.all([loadKubeClient(), startKubeStandin({ namespaces: [NAMESPACE] })]);
  const store = podCertificateRequests(standin.state);
  store.served = new Set(['v1beta1']);
  const logger = createLogger({ level: 'silent', format: 'json' });
  let signer: ReturnType<typeof startPodCertificateSigner> | undefined;
  let pods: PodCache | undefined;
  try {
    const kubeConfig = await loadKubeConfig(standin.kubeconfigPath, {});
    const root = await createSelfSignedRoot({ stateDir: '/nonexistent', trustDomain: 'cluster.local', keySpec: 'ec-p256', ttlSeconds: 30 * 86400 });
    const authority = new CertificateAuthority({ signer: new LocalSigner('self-signed', root.material), defaultTtlSeconds: 86400, maxTtlSeconds: 90 * 86400 });
    const filed = Array.from({ length: options.requests }, (_, i) => {
      const node = `node-${i % 20}`;
      const pod = standin.state.addPod({ namespace: NAMESPACE, name: `pod-${i}`, serviceAccount: `sa-${i % 50}`, nodeName: node });
      const key = generateKeyPairFor('ec-p256').privateKey;
      const stub = Buffer.from(createCsr({ privateKey: key }).replace(/-----[^-]+-----|\s/g, ''), 'base64').toString('base64');
      return {
        apiVersion: 'certificates.k8s.io/v1beta1',
        kind: 'PodCertificateRequest',
        metadata: { name: `req-${i}`, namespace: NAMESPACE, ownerReferences: [{ apiVersion: 'core/v1', kind: 'Pod', name: `pod-${i}`, uid: pod.metadata.uid! }] },
        spec: {
          signerName: SIGNER,
          podName: `pod-${i}`,
          podUID: pod.metadata.uid!,
          serviceAccountName: `sa-${i % 50}`,
          serviceAccountUID: randomUUID(),
          nodeName: node,
          nodeUID: randomUUID(),
          maxExpirationSeconds: 86400,
          stubPKCS10Request: stub,
        },
      };
    });
    const podCache = new PodCache({ source: kubePodSource(kubeConfig.makeApiClient(kubeClient().CoreV1Api), kubeConfig), clusterId: 'bench' });
    pods = podCache;
    podCache.start();
    await podCache.whenReady(30_000);
    signer = startPodCertificateSigner({
      kubeConfig,
      signerName: SIGNER,
      authority,
      trustDomain: 'cluster.local',
      pods: {
        whenReady: (ms) => podCache.whenReady(ms),
        lookup: (namespace, name) => {
          const pod = podCache.byName(namespace, name);
          return pod && { uid: pod.uid, serviceAccount: pod.serviceAccount, nodeName: pod.nodeName, notLive: whyPodIsNotLive(pod) };
        },
      },
      logger,
    });
    await signer.ready;
    const callsBefore = standin.state.requests.length;
    options.log(`kubernetes: ${options.requests} PodCertificateRequests filed at once`);
    const started = performance.now();
    // Filed straight into the stand-in's store (as the kubelets' creates would arrive), so every API call counted
    // below is the signer's or its pod cache's.
    for (const body of filed) store.create('v1beta1', NAMESPACE, body);
    const filingSeconds = (performance.now() - started) / 1000;
    // Reading the store renders every object, so it is read only once the signer says it has issued them all.
    const answered = (): number => store.list().filter((o) => ((o.status as { conditions?: unknown[] } | undefined)?.conditions ?? []).length > 0).length;
    const deadline = Date.now() + 120_000;
    while (signer.issued < options.requests || answered() < options.requests) {
      if (Date.now() > deadline) throw new Error(`only ${answered()} of ${options.requests} requests answered within 120 s`);
      await new Promise((resolve) => setTimeout(resolve, signer!.issued < options.requests ? 5 : 50));
    }
    const seconds = (performance.now() - started) / 1000;
    const calls = standin.state.requests.slice(callsBefore);
    const byKind: Record<string, number> = {};
    for (const call of calls) {
      const kind = kindOf(call.method, call.path, call.query);
      byKind[kind] = (byKind[kind] ?? 0) + 1;
    }
    const issued = store.list().filter((o) => (o.status as { conditions?: { type: string }[] }).conditions?.[0]?.type === 'Issued').length;
    return {
      requests: options.requests,
      issued,
      notIssued: options.requests - issued,
      seconds,
      filingSeconds,
      requestsPerSecond: options.requests / seconds,
      apiCalls: calls.length,
      apiCallsPerRequest: calls.length / options.requests,
      apiCallsByKind: byKind,
      rejectedStatusWrites: store.rejections.length,
    };
  } finally {
    await signer?.close();
    pods?.stop();
    await standin.close();
  }
}
