/**
 * The CertificateSigningRequest signer: watches certificates.k8s.io/v1 CSRs addressed to one signer name and signs
 * the approved ones through the CA's issuance pipeline, as Istio's ISTIOD_RA_KUBERNETES_API expects of an external
 * signer. Istiod puts the workload's CSR in spec.request, approves it itself and waits for status.certificate.
 *
 * What is signed: only a CSR whose requester (spec.username, set by the API server) is one of the allowed
 * requesters, with exactly one SAN, a SPIFFE workload URI in the CA's trust domain, becomes a certificate for that
 * identity, and nothing else (approval alone proves nothing: whoever may create a CSR may often approve it too).
 *
 * Each request is signed once: a CSR is re-read before signing and skipped once it has a certificate, the write
 * is a replace of that read (a stale one is a 409, never an overwrite), and a chain that could not be written yet
 * is kept and written again instead of signing anew. A refusal is a Failed condition with a reason a person can
 * act on; a transient failure (the key source down, a conflict, the API server unreachable) is retried.
 */
import { issuanceRecord } from '../audit.js';
import type { CertificatesV1Api, V1CertificateSigningRequest, V1CertificateSigningRequestCondition, Watch } from '@kubernetes/client-node';
import { kubeClient } from '../../../kube/client.js';
import { watchWithBackoff } from '../../../kube/config.js';
import { WorkloadId, isPkiError, type ParsedCsr } from '../../../pki/index.js';
import { CaError } from '../../errors.js';
import { kubeErrorMessage, kubeStatusCode } from '../../kube-store.js';
import type { KubernetesPluginContext, RunningKubernetesPlugin } from '../types.js';
import { CoalescingRunner } from '../../../util/coalescing-runner.js';

export const CSR_PATH = '/apis/certificates.k8s.io/v1/certificatesigningrequests';
/** Where istiod puts the TTL it wants (a Go duration such as "24h0m0s"); spec.expirationSeconds wins when set. */
export const REQUEST_DURATION_ANNOTATION = 'experimental.cert-manager.io/request-duration';
/** Key usages a workload certificate may be asked for (what istiod asks for). */
const ALLOWED_USAGES = new Set(['digital signature', 'key encipherment', 'server auth', 'client auth']);

export interface CsrSignerSettings {
  signerName: string;
  /** spec.username values whose CSRs are signed. */
  requesters: readonly string[];
  /** Full relist (default 5 minutes): the safety net for anything a watch missed. */
  resyncIntervalMs?: number;
  /** First delay before retrying a transient failure (default 1 s; doubles up to 60 s). */
  retryDelayMs?: number;
}

/** A refusal: written as the Failed condition's reason and message. */
class Refusal extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'Refusal';
  }
}

interface WatchedCsr {
  metadata?: { name?: string; uid?: string; resourceVersion?: string; deletionTimestamp?: unknown; annotations?: Record<string, string> };
  spec?: { signerName?: string };
  status?: { certificate?: string; conditions?: { type?: string; status?: string }[] };
}

function hasCondition(csr: WatchedCsr | V1CertificateSigningRequest, type: string): boolean {
  return (csr.status?.conditions ?? []).some((c) => c.type === type && c.status === 'True');
}

/** Approved, not denied or failed, not signed, not being deleted, and addressed to this signer. */
function awaitsSignature(csr: WatchedCsr | V1CertificateSigningRequest, signerName: string): boolean {
  if (csr.spec?.signerName !== signerName || csr.metadata?.deletionTimestamp) return false;
  if (csr.status?.certificate) return false;
  return hasCondition(csr, 'Approved') && !hasCondition(csr, 'Denied') && !hasCondition(csr, 'Failed');
}

const GO_DURATION_UNITS: Record<string, number> = { ns: 1e-9, us: 1e-6, µs: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };

/** A Go time.Duration string ("24h0m0s", "90m", "1.5h") in seconds, or undefined when it is not one. */
export function parseGoDuration(text: string): number | undefined {
  const pattern = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(text)) !== null) {
    total += Number(match[1]) * GO_DURATION_UNITS[match[2]!]!;
    consumed = pattern.lastIndex;
  }
  return consumed > 0 && consumed === text.length ? total : undefined;
}

/** What a CSR asks for, once meshca's policy accepted it. */
interface Decision {
  csrPem: string;
  identity: WorkloadId;
  requestedTtlSeconds: number;
}

class CsrSignerController implements RunningKubernetesPlugin {
  private readonly api: CertificatesV1Api;
  private readonly watcher: Watch;
  private readonly passes = new CoalescingRunner<string>((key) => this.handleOnce(key), () => this.closed);
  /** Chains signed but not written yet, by CSR uid: written again rather than signed again. */
  private readonly unwritten = new Map<string, string>();
  private readonly retryTimers = new Map<string, NodeJS.Timeout>();
  private readonly retryDelays = new Map<string, number>();
  private readonly stops: (() => void)[] = [];
  private resyncTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly now: () => number;

  constructor(
    private readonly context: KubernetesPluginContext,
    private readonly settings: CsrSignerSettings,
  ) {
    const { CertificatesV1Api, Watch } = kubeClient();
    this.api = context.kubeConfig.makeApiClient(CertificatesV1Api);
    this.watcher = new Watch(context.kubeConfig);
    this.now = context.now ?? Date.now;
    this.stops.push(this.follow());
    void this.syncAll();
    this.resyncTimer = setInterval(() => void this.syncAll(), settings.resyncIntervalMs ?? 300_000);
    this.resyncTimer.unref();
    context.logger.info({ signerName: settings.signerName, requesters: settings.requesters }, 'CSR signer: signing approved CertificateSigningRequests');
  }

  private get fieldSelector(): string {
    return `spec.signerName=${this.settings.signerName}`;
  }

  /** Lists every CSR of this signer and handles those waiting for a signature. */
  async syncAll(): Promise<void> {
    if (this.closed) return;
    try {
      const list = await this.api.listCertificateSigningRequest({ fieldSelector: this.fieldSelector });
      for (const csr of list.items) this.consider(csr);
    } catch (error) {
      this.context.logger.warn({ err: kubeErrorMessage(error) }, 'CSR signer: cannot list CertificateSigningRequests; retrying at the next resync');
    }
  }

  private consider(csr: WatchedCsr | V1CertificateSigningRequest): void {
    const name = csr.metadata?.name;
    if (name && awaitsSignature(csr, this.settings.signerName)) void this.handle(name);
  }

  /** One pass per CSR at a time; an event during one causes one more pass. */
  handle(name: string): Promise<void> {
    return this.passes.run(name);
  }

  private async handleOnce(name: string): Promise<void> {
    for (let attempt = 0; attempt < 5 && !this.closed; attempt++) {
      let csr: V1CertificateSigningRequest;
      try {
        csr = await this.api.readCertificateSigningRequest({ name });
      } catch (error) {
        if (kubeStatusCode(error) === 404) {
          this.clearRetry(name);
          return;
        }
        this.retryLater(name, `cannot read it: ${kubeErrorMessage(error)}`);
        return;
      }
      const uid = csr.metadata?.uid ?? '';
      if (!awaitsSignature(csr, this.settings.signerName)) {
        this.unwritten.delete(uid);
        this.clearRetry(name);
        return;
      }
      let status: NonNullable<V1CertificateSigningRequest['status']>;
      let chainPem = this.unwritten.get(uid);
      try {
        if (chainPem === undefined) {
          chainPem = await this.sign(csr);
          this.unwritten.set(uid, chainPem);
        }
        status = { ...csr.status, certificate: Buffer.from(chainPem, 'utf8').toString('base64') };
      } catch (error) {
        if (!(error instanceof Refusal)) {
          this.retryLater(name, error instanceof Error ? error.message : String(error));
          return;
        }
        status = { ...csr.status, conditions: [...(csr.status?.conditions ?? []), this.failedCondition(error)] };
        this.context.logger.warn({ csr: name, requester: csr.spec.username, reason: error.reason, err: error.message }, 'CSR signer: refused a CertificateSigningRequest');
      }
      try {
        await this.api.replaceCertificateSigningRequestStatus({ name, body: { ...csr, status } });
      } catch (error) {
        if (kubeStatusCode(error) === 409) continue; // Changed since the read: read again, write the same chain.
        if (kubeStatusCode(error) === 404) {
          this.unwritten.delete(uid);
          this.clearRetry(name);
          return;
        }
        this.retryLater(name, `cannot write its status: ${kubeErrorMessage(error)}`);
        return;
      }
      this.unwritten.delete(uid);
      this.clearRetry(name);
      if (status.certificate) {
        this.context.logger.info({ csr: name, requester: csr.spec.username }, 'CSR signer: signed a CertificateSigningRequest');
        this.context.recordIssued?.(issuanceRecord(Buffer.from(status.certificate, 'base64').toString('utf8'), { via: 'csr-signer', caller: csr.spec.username ?? '', object: name }));
      }
      return;
    }
    if (!this.closed) this.retryLater(name, 'it kept changing while being written');
  }

  private failedCondition(refusal: Refusal): V1CertificateSigningRequestCondition {
    const at = new Date(Math.floor(this.now() / 1000) * 1000);
    return { type: 'Failed', status: 'True', reason: refusal.reason, message: refusal.message, lastUpdateTime: at, lastTransitionTime: at };
  }

  /** meshca's policy, then the issuance pipeline; the PEM of the leaf and intermediates. Throws Refusal or a transient error. */
  private async sign(csr: V1CertificateSigningRequest): Promise<string> {
    const decision = this.decide(csr);
    try {
      const issued = await this.context.authority.issue({ csrPem: decision.csrPem, identity: decision.identity, requestedTtlSeconds: decision.requestedTtlSeconds });
      // The chain ends with the root bundle, which istiod takes from its own configuration.
      return issued.chain.slice(0, -1).join('');
    } catch (error) {
      if (error instanceof CaError && (error.code === 'CSR_ERROR' || error.code === 'TTL_ERROR' || error.code === 'UPSTREAM_REJECTED')) {
        throw new Refusal(error.code === 'UPSTREAM_REJECTED' ? 'UpstreamRejected' : 'InvalidRequest', error.message);
      }
      throw error;
    }
  }

  private decide(csr: V1CertificateSigningRequest): Decision {
    const requester = csr.spec.username ?? '';
    if (!this.settings.requesters.includes(requester)) {
      throw new Refusal(
        'RequesterNotAllowed',
        `meshca signs requests for ${this.settings.signerName} only from ${this.settings.requesters.join(', ')}, not from "${requester}"; add it to --csr-signer-requesters if it may ask for any workload's certificate`,
      );
    }
    const usages = csr.spec.usages ?? [];
    const unsupported = usages.filter((u) => !ALLOWED_USAGES.has(u));
    if (unsupported.length > 0) {
      throw new Refusal('UnsupportedUsages', `meshca issues workload certificates only; it does not sign for the usages ${unsupported.map((u) => `"${u}"`).join(', ')} (allowed: ${[...ALLOWED_USAGES].join(', ')})`);
    }
    const csrPem = Buffer.from(csr.spec.request, 'base64').toString('utf8');
    let parsed: ParsedCsr;
    try {
      parsed = this.context.authority.checkCsr(csrPem);
    } catch (error) {
      throw new Refusal('InvalidRequest', `spec.request is not a usable PKCS#10 request: ${(error as Error).message}`);
    }
    const { uris, dnsNames, ipAddresses, emails } = parsed.sans;
    if (uris.length !== 1 || dnsNames.length + ipAddresses.length + emails.length > 0) {
      throw new Refusal('InvalidIdentity', `the request must name exactly one identity, a SPIFFE URI SAN; it has ${uris.length} URI, ${dnsNames.length} DNS, ${ipAddresses.length} IP and ${emails.length} email SANs`);
    }
    let identity: WorkloadId;
    try {
      identity = WorkloadId.parse(uris[0]!);
    } catch (error) {
      if (!isPkiError(error)) throw error;
      throw new Refusal('InvalidIdentity', `the URI SAN is not a workload identity: ${error.message}`);
    }
    if (identity.trustDomain !== this.context.trustDomain) {
      throw new Refusal('ForeignTrustDomain', `the identity ${identity.uri} is not in this CA's trust domain "${this.context.trustDomain}"`);
    }
    return { csrPem, identity, requestedTtlSeconds: this.requestedTtl(csr) };
  }

  /** spec.expirationSeconds, else istiod's annotation, else 0 (the default TTL); never above the maximum. */
  private requestedTtl(csr: V1CertificateSigningRequest): number {
    let seconds = csr.spec.expirationSeconds ?? 0;
    const annotation = csr.metadata?.annotations?.[REQUEST_DURATION_ANNOTATION];
    if (!seconds && annotation !== undefined) {
      const parsed = parseGoDuration(annotation);
      if (parsed === undefined) throw new Refusal('InvalidRequestDuration', `annotation ${REQUEST_DURATION_ANNOTATION}="${annotation}" is not a Go duration such as "24h0m0s"`);
      seconds = Math.floor(parsed);
    }
    // A CSR's requested lifetime is a wish the signer may shorten (certificates.k8s.io): cap it, do not refuse.
    try {
      this.context.authority.ttlFor(seconds);
      return seconds;
    } catch {
      return this.context.authority.maxTtlSeconds;
    }
  }

  private retryLater(name: string, why: string): void {
    if (this.closed || this.retryTimers.has(name)) return;
    const delay = this.retryDelays.get(name) ?? this.settings.retryDelayMs ?? 1000;
    this.retryDelays.set(name, Math.min(delay * 2, 60_000));
    this.context.logger.warn({ csr: name, err: why, retryInMs: delay }, 'CSR signer: cannot sign a CertificateSigningRequest yet; will retry');
    const timer = setTimeout(() => {
      this.retryTimers.delete(name);
      void this.handle(name);
    }, delay);
    timer.unref();
    this.retryTimers.set(name, timer);
  }

  private clearRetry(name: string): void {
    const timer = this.retryTimers.get(name);
    if (timer) clearTimeout(timer);
    this.retryTimers.delete(name);
    this.retryDelays.delete(name);
  }

  /** A watch that resumes from the last seen resourceVersion, and relists when that is too old. */
  private follow(): () => void {
    let resourceVersion: string | undefined;
    return watchWithBackoff(
      this.watcher,
      CSR_PATH,
      () => ({ fieldSelector: this.fieldSelector, ...(resourceVersion ? { resourceVersion } : {}) }),
      (type, raw) => {
        const csr = raw as WatchedCsr;
        if (type === 'ERROR') {
          resourceVersion = undefined;
          void this.syncAll();
          return;
        }
        if (csr?.metadata?.resourceVersion) resourceVersion = csr.metadata.resourceVersion;
        if (type === 'DELETED') {
          if (csr?.metadata?.uid) this.unwritten.delete(csr.metadata.uid);
          return;
        }
        if (type === 'ADDED' || type === 'MODIFIED') this.consider(csr);
      },
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.retryTimers.clear();
    for (const stop of this.stops.splice(0)) stop();
    await this.passes.idle();
  }
}

/** Starts the signer; `close()` stops its watch, timers and passes. */
export function startCsrSigner(context: KubernetesPluginContext, settings: CsrSignerSettings): RunningKubernetesPlugin {
  return new CsrSignerController(context, settings);
}
