/**
 * The PodCertificateRequest signer: finds the version of the API the server serves, watches the requests for one
 * signer name (resuming from the last resourceVersion, relisting when that is too old, and relisting now and then
 * as a safety net), and answers each open request once: Issued with a SPIFFE certificate of the pod's service
 * account from the CA's issuance pipeline, or Denied / Failed with a reason. Trouble that passes (a conflicting
 * write, the key source or the pod cache briefly unavailable) is retried, never written as a failure.
 */
import { X509Certificate } from 'node:crypto';
import type { CustomObjectsApi, KubeConfig, Watch } from '@kubernetes/client-node';
import { CLOCK_SKEW_GRACE_MS, WorkloadId } from '../../../pki/index.js';
import { describeKubeError } from '../../../kube/api.js';
import { kubeClient } from '../../../kube/client.js';
import { watchWithBackoff } from '../../../kube/config.js';
import type { Logger } from '../../../log.js';
import type { CertificateAuthority } from '../../authority.js';
import { CaError } from '../../errors.js';
import type { PodLookup } from '../types.js';
import { issuanceRecord, type IssuanceRecord } from '../audit.js';
import {
  issuedTimes,
  maxExpirationSeconds,
  MIN_LIFETIME_SECONDS,
  PCR_GROUP,
  PCR_PLURAL,
  PCR_VERSIONS,
  pcrName,
  requestKey,
  terminalCondition,
  type PcrVersion,
  type PodCertificateRequest,
  type Refusal,
} from './request.js';

export interface PodCertificateSignerOptions {
  kubeConfig: KubeConfig;
  signerName: string;
  authority: CertificateAuthority;
  trustDomain: string;
  pods: PodLookup;
  logger: Logger;
  now?: () => number;
  /** A request whose pod is not (yet) in the pod cache is denied only after this long (default 30 s). */
  podGraceMs?: number;
  /** Full relist (default 5 minutes). */
  resyncIntervalMs?: number;
  /** First retry delay after transient trouble, doubling to 30 s (default 500 ms). */
  retryDelayMs?: number;
  /** Told of every certificate written (the CA's audit line and issuance metric). */
  recordIssued?: (record: IssuanceRecord) => void;
}

export interface PodCertificateSigner {
  /** Resolves once the served version is known and the first list was processed. */
  readonly ready: Promise<void>;
  /** The API version read and written (v1beta1 or v1), once known. */
  readonly version: PcrVersion | undefined;
  /** Certificates issued by this instance (for logs and tests). */
  readonly issued: number;
  close(): Promise<void>;
}

/** What to do with a request now. */
type Decision = { kind: 'issue'; identity: WorkloadId; spkiDer: Buffer; csrPem?: string } | { kind: 'refuse'; refusal: Refusal } | { kind: 'wait'; reason: string };

/**
 * What the API server checks, beyond the calls below, when the status carries a certificate: `sign` on the signer
 * name (or `<domain>/*`). No call makes it; test/manifests.test.ts reads it to check the CA's RBAC rules.
 */
export const ADMISSION_CHECK = { group: 'certificates.k8s.io', resource: 'signers', verb: 'sign' } as const;

const MAX_RETRY_MS = 30_000;
/** How long one pod-cache wait lasts before the request is retried. */
const POD_CACHE_WAIT_MS = 10_000;

class Signer implements PodCertificateSigner {
  readonly ready: Promise<void>;
  version: PcrVersion | undefined;
  issued = 0;
  private readonly api: CustomObjectsApi;
  private readonly watcher: Watch;
  private readonly now: () => number;
  /** Requests being answered, by UID: a watch event or a relist for one of them does nothing. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Requests answered (or found answered), by UID; forgotten when deleted or absent from a relist. */
  private readonly answered = new Set<string>();
  /** When each open request was first seen, by UID. */
  private readonly firstSeen = new Map<string, number>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly sleepers = new Set<() => void>();
  private stopWatch: (() => void) | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: PodCertificateSignerOptions) {
    const { CustomObjectsApi, Watch } = kubeClient();
    this.api = options.kubeConfig.makeApiClient(CustomObjectsApi);
    this.watcher = new Watch(options.kubeConfig);
    this.now = options.now ?? Date.now;
    this.ready = this.start();
    this.ready.catch(() => undefined);
  }

  private log(): Logger {
    return this.options.logger;
  }

  private async start(): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        this.version = await this.discoverVersion();
        break;
      } catch (error) {
        if (attempt === 0) this.log().error({ err: (error as Error).message }, 'pod certificates: cannot find the PodCertificateRequest API; retrying');
        await this.sleep(Math.min(1000 * 2 ** attempt, MAX_RETRY_MS));
      }
    }
    if (this.closed) return;
    this.log().info({ signerName: this.options.signerName, version: `${PCR_GROUP}/${this.version}` }, 'pod certificates: signing PodCertificateRequests');
    const listedAt = await this.relist();
    this.stopWatch = this.follow(listedAt);
    this.resyncTimer = setInterval(() => void this.relist().catch(() => undefined), this.options.resyncIntervalMs ?? 300_000);
    this.resyncTimer.unref();
  }

  /** The first of v1beta1, v1 whose resource list has podcertificaterequests; throws with what to enable when none. */
  private async discoverVersion(): Promise<PcrVersion> {
    const client = kubeClient();
    const resourcesOf = (version: PcrVersion) =>
      version === 'v1beta1'
        ? this.options.kubeConfig.makeApiClient(client.CertificatesV1beta1Api).getAPIResources()
        : this.options.kubeConfig.makeApiClient(client.CertificatesV1Api).getAPIResources();
    const missing: string[] = [];
    for (const version of PCR_VERSIONS) {
      try {
        const list = await resourcesOf(version);
        if (list.resources.some((r) => r.name === PCR_PLURAL)) return version;
        missing.push(`${version}: not listed`);
      } catch (error) {
        const { status, detail } = describeKubeError(error);
        if (status !== 404) throw new Error(`cannot read the API server's ${PCR_GROUP}/${version} resources: ${detail}`);
        missing.push(`${version}: not served`);
      }
    }
    throw new Error(
      `the API server serves no PodCertificateRequests (${missing.join(', ')}); on Kubernetes 1.35/1.36 turn on the PodCertificateRequest feature gate and --runtime-config=certificates.k8s.io/v1beta1/podcertificaterequests=true`,
    );
  }

  // The calls below name their group and resource literally: test/manifests.test.ts reads them to check the
  // CA's RBAC rules.

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.timers.delete(timer);
        this.sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      timer.unref();
      this.timers.add(timer);
      this.sleepers.add(done);
    });
  }

  /** Lists every request for the signer and considers each; returns the list's resourceVersion. */
  private async relist(): Promise<string | undefined> {
    if (this.closed || !this.version) return undefined;
    const list = (await this.api.listClusterCustomObject({
      group: 'certificates.k8s.io',
      version: this.version,
      plural: 'podcertificaterequests',
      fieldSelector: `spec.signerName=${this.options.signerName}` })) as {
      items?: PodCertificateRequest[];
      metadata?: { resourceVersion?: string };
    };
    const present = new Set<string>();
    for (const pcr of list.items ?? []) {
      if (pcr.metadata?.uid) present.add(pcr.metadata.uid);
      this.consider(pcr);
    }
    for (const uid of [...this.answered]) if (!present.has(uid)) this.answered.delete(uid);
    for (const uid of [...this.firstSeen.keys()]) if (!present.has(uid) && !this.inFlight.has(uid)) this.firstSeen.delete(uid);
    return list.metadata?.resourceVersion || undefined;
  }

  private follow(from: string | undefined): () => void {
    let resourceVersion = from;
    return watchWithBackoff(
      this.watcher,
      `/apis/certificates.k8s.io/${this.version}/podcertificaterequests`,
      () => ({ fieldSelector: `spec.signerName=${this.options.signerName}`, ...(resourceVersion ? { resourceVersion } : {}) }),
      (type, raw) => {
        const pcr = raw as PodCertificateRequest;
        if (type === 'ERROR') {
          // 410 Expired: the history is gone; list again and watch from now.
          resourceVersion = undefined;
          void this.relist().catch(() => undefined);
          return;
        }
        if (pcr?.metadata?.resourceVersion) resourceVersion = pcr.metadata.resourceVersion;
        const uid = pcr?.metadata?.uid;
        if (type === 'DELETED') {
          if (uid) {
            this.answered.delete(uid);
            this.firstSeen.delete(uid);
          }
          return;
        }
        if (type === 'ADDED' || type === 'MODIFIED') this.consider(pcr);
      },
    );
  }

  /** Starts answering a request unless it is answered or being answered. */
  private consider(pcr: PodCertificateRequest): void {
    const uid = pcr.metadata?.uid;
    if (!uid || this.closed) return;
    if (pcr.spec?.signerName !== this.options.signerName) return;
    if (terminalCondition(pcr)) {
      this.answered.add(uid);
      return;
    }
    if (this.answered.has(uid) || this.inFlight.has(uid)) return;
    if (!this.firstSeen.has(uid)) this.firstSeen.set(uid, this.now());
    const run = this.answer(pcr)
      .catch((error: unknown) => this.log().error({ request: pcrName(pcr), err: (error as Error).message }, 'pod certificates: giving up on a request'))
      .finally(() => this.inFlight.delete(uid));
    this.inFlight.set(uid, run);
  }

  /** Decide, sign, write; retried on transient trouble until it is written, the request is gone or we close. */
  private async answer(initial: PodCertificateRequest): Promise<void> {
    let pcr = initial;
    let delay = this.options.retryDelayMs ?? 500;
    const backoff = async (): Promise<void> => {
      await this.sleep(delay);
      delay = Math.min(delay * 2, MAX_RETRY_MS);
    };
    let status: NonNullable<PodCertificateRequest['status']> | undefined;
    let issuedAtMs = 0;
    while (!this.closed) {
      if (!status || this.now() - issuedAtMs > 60_000) {
        status = undefined;
        const decision = await this.decide(pcr);
        if (decision.kind === 'wait') {
          this.log().debug({ request: pcrName(pcr), reason: decision.reason }, 'pod certificates: request waits');
          await backoff();
          const fresh = await this.reread(pcr);
          if (!fresh) return;
          pcr = fresh;
          continue;
        }
        if (decision.kind === 'refuse') status = { conditions: [{ type: decision.refusal.type, status: 'True', reason: decision.refusal.reason, message: decision.refusal.message }] };
        else {
          const signed = await this.sign(pcr, decision);
          if ('wait' in signed) {
            this.log().warn({ request: pcrName(pcr), reason: signed.wait }, 'pod certificates: cannot sign yet; retrying');
            await backoff();
            continue;
          }
          status = signed.status;
          issuedAtMs = this.now();
        }
      }
      const written = await this.writeStatus(pcr, status);
      if (written === 'done') {
        this.answered.add(pcr.metadata!.uid!);
        const condition = status.conditions![0]!;
        const fields = { request: pcrName(pcr), pod: pcr.spec?.podName, outcome: condition.type, reason: condition.reason };
        if (condition.type === 'Issued') {
          this.log().info({ ...fields, notAfter: status.notAfter }, 'pod certificates: issued');
          this.options.recordIssued?.(issuanceRecord(status.certificateChain!, { via: 'pod-certificates', caller: `${pcr.metadata?.namespace}/${pcr.spec?.podName}`, object: pcrName(pcr) }));
        }
        else this.log().warn({ ...fields, message: condition.message }, `pod certificates: ${(condition.type ?? '').toLowerCase()}`);
        return;
      }
      if (written === 'gone') return;
      if (written === 'conflict') {
        const fresh = await this.reread(pcr);
        if (!fresh) return;
        pcr = fresh;
        continue;
      }
      await backoff();
    }
  }

  /** The request as stored now; undefined when it is gone or already answered (by us or anyone). */
  private async reread(pcr: PodCertificateRequest): Promise<PodCertificateRequest | undefined> {
    for (;;) {
      if (this.closed) return undefined;
      try {
        const fresh = (await this.api.getNamespacedCustomObject({
          group: 'certificates.k8s.io',
          version: this.version!,
          plural: 'podcertificaterequests',
          namespace: pcr.metadata!.namespace!,
          name: pcr.metadata!.name!,
        })) as PodCertificateRequest;
        if (fresh.metadata?.uid !== pcr.metadata?.uid) return undefined;
        if (terminalCondition(fresh)) {
          this.answered.add(fresh.metadata!.uid!);
          return undefined;
        }
        return fresh;
      } catch (error) {
        const { status, detail } = describeKubeError(error);
        if (status === 404) return undefined;
        this.log().warn({ request: pcrName(pcr), err: detail }, 'pod certificates: cannot read the request; retrying');
        await this.sleep(this.options.retryDelayMs ?? 500);
      }
    }
  }

  /** The checks before signing: the pod is that pod, on that node, of that service account; the key is one we take. */
  private async decide(pcr: PodCertificateRequest): Promise<Decision> {
    const spec = pcr.spec ?? {};
    const namespace = pcr.metadata?.namespace ?? '';
    const podName = spec.podName ?? '';
    const deny = (reason: string, message: string): Decision => ({ kind: 'refuse', refusal: { type: 'Denied', reason, message } });
    const key = requestKey(pcr);
    if (key.kind === 'refused') return { kind: 'refuse', refusal: key.refusal };
    // Signers deny annotations they do not know; this one knows none.
    const annotations = Object.keys(spec.unverifiedUserAnnotations ?? {});
    if (annotations.length > 0) {
      return deny(
        'InvalidUnverifiedUserAnnotations',
        `this signer takes no userAnnotations (got ${annotations.slice(0, 5).join(', ')}); remove userAnnotations from the podCertificate projected volume`,
      );
    }

    const readiness = await this.options.pods.whenReady(POD_CACHE_WAIT_MS);
    if (!readiness.ready) return { kind: 'wait', reason: readiness.reason };
    const pod = this.options.pods.lookup(namespace, podName);
    const young = this.now() - (this.firstSeen.get(pcr.metadata!.uid!) ?? this.now()) < (this.options.podGraceMs ?? 30_000);
    const who = `pod ${namespace}/${podName}`;
    if (!pod) {
      if (young) return { kind: 'wait', reason: `${who} is not in the pod cache yet` };
      return deny('PodNotFound', `${who} does not exist; only the kubelet of the pod's node should ask for its certificate`);
    }
    if (pod.uid !== spec.podUID) {
      if (young) return { kind: 'wait', reason: `${who} has another UID in the pod cache` };
      return deny('PodUIDMismatch', `${who} has UID ${pod.uid}, not spec.podUID ${spec.podUID ?? '(none)'}: the pod was deleted and re-created; the kubelet will ask again for the new pod`);
    }
    if (pod.nodeName !== spec.nodeName) {
      return deny('NodeMismatch', `${who} runs on node ${pod.nodeName ?? '(none)'}, not on spec.nodeName ${spec.nodeName ?? '(none)'}; only the kubelet of the pod's own node may ask`);
    }
    if (pod.serviceAccount !== spec.serviceAccountName) {
      return deny('ServiceAccountMismatch', `${who} runs as service account ${pod.serviceAccount}, not spec.serviceAccountName ${spec.serviceAccountName ?? '(none)'}`);
    }
    if (pod.notLive) return deny('PodNotRunning', `${who} ${pod.notLive}; no certificate is issued for it`);
    let identity: WorkloadId;
    try {
      identity = WorkloadId.parse(`spiffe://${this.options.trustDomain}/ns/${namespace}/sa/${pod.serviceAccount}`);
    } catch (error) {
      return deny('InvalidIdentity', `cannot name ${who}'s identity: ${(error as Error).message}`);
    }
    return { kind: 'issue', identity, spkiDer: key.spkiDer, ...(key.csrPem ? { csrPem: key.csrPem } : {}) };
  }

  /** The issuance pipeline; a status to write, or why to retry. */
  private async sign(
    pcr: PodCertificateRequest,
    decision: Extract<Decision, { kind: 'issue' }>,
  ): Promise<{ status: NonNullable<PodCertificateRequest['status']> } | { wait: string }> {
    const maxExpiration = maxExpirationSeconds(pcr);
    const refuse = (refusal: Refusal): { status: NonNullable<PodCertificateRequest['status']> } => ({
      status: { conditions: [{ type: refusal.type, status: 'True', reason: refusal.reason, message: refusal.message }] },
    });
    // The lifetime: the CA's default, within the API's 1 h..spec.maxExpirationSeconds. The key source's backdating
    // of notBefore counts in it: ask for the lifetime less meshca's own backdating, and when the key source
    // backdates otherwise (a remote one) and the lifetime falls outside the bounds, sign once more with the
    // difference made up.
    const target = Math.min(Math.max(this.options.authority.ttlFor(0), MIN_LIFETIME_SECONDS), maxExpiration);
    let ttlSeconds = target - CLOCK_SKEW_GRACE_MS / 1000;
    try {
      for (let attempt = 0; ; attempt++) {
        const result = await this.options.authority.issue({
          ...(decision.csrPem ? { csrPem: decision.csrPem } : { provenPublicKeyDer: decision.spkiDer }),
          identity: decision.identity,
          requestedTtlSeconds: ttlSeconds,
        });
        // The leaf and intermediates; the root stays out (pods get it from the trust bundle).
        const chain = result.chain.length > 1 ? result.chain.slice(0, -1) : result.chain;
        const leaf = new X509Certificate(chain[0]!);
        const lifetime = (Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 1000;
        if (attempt === 0 && lifetime !== target && (lifetime > maxExpiration || lifetime < MIN_LIFETIME_SECONDS)) {
          ttlSeconds += target - lifetime;
          continue;
        }
        const times = issuedTimes(chain[0]!, maxExpiration, this.now());
        if ('type' in times) return refuse(times);
        this.issued++;
        return {
          status: {
            conditions: [{ type: 'Issued', status: 'True', reason: 'Issued', message: `issued ${decision.identity.uri} by ${this.options.signerName}` }],
            certificateChain: chain.join(''),
            ...times,
          },
        };
      }
    } catch (error) {
      if (!(error instanceof CaError)) throw error;
      switch (error.code) {
        case 'CA_NOT_READY':
        case 'UPSTREAM_UNAVAILABLE':
          return { wait: error.message };
        case 'CSR_ERROR':
          return refuse({ type: 'Denied', reason: 'InvalidRequest', message: error.message });
        default:
          return refuse({
            type: 'Failed',
            reason: 'SigningFailed',
            message: `${error.message}${decision.csrPem || error.code !== 'CERT_GEN_ERROR' ? '' : ' (the request uses the pre-1.36 key encoding, which a key source that forwards CSRs cannot sign; upgrade the kubelet to 1.36)'}`,
          });
      }
    }
  }

  /** One PUT to /status with the request's resourceVersion. */
  private async writeStatus(pcr: PodCertificateRequest, status: NonNullable<PodCertificateRequest['status']>): Promise<'done' | 'gone' | 'conflict' | 'retry'> {
    try {
      await this.api.replaceNamespacedCustomObjectStatus({
        group: 'certificates.k8s.io',
        version: this.version!,
        plural: 'podcertificaterequests',
        namespace: pcr.metadata!.namespace!,
        name: pcr.metadata!.name!,
        body: { ...pcr, status },
      });
      return 'done';
    } catch (error) {
      const { status: code, detail } = describeKubeError(error);
      if (code === 404) return 'gone';
      if (code === 409) return 'conflict';
      if (code === 422) {
        // The API refused this answer: writing it again changes nothing. Logged loudly; the request stays open.
        this.log().error({ request: pcrName(pcr), err: detail }, 'pod certificates: the API server refused the status; this is a bug in meshca');
        this.answered.add(pcr.metadata!.uid!);
        return 'gone';
      }
      this.log().warn({ request: pcrName(pcr), err: detail }, 'pod certificates: cannot write the status; retrying');
      return 'retry';
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.stopWatch?.();
    for (const wake of [...this.sleepers]) wake();
    await Promise.allSettled([...this.inFlight.values()]);
  }
}

export function startPodCertificateSigner(options: PodCertificateSignerOptions): PodCertificateSigner {
  return new Signer(options);
}
