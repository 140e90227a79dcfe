/**
 * Readiness by doing the real work: every few seconds the CA signs a probe CSR through its own policy path and
 * checks the result chains to the current trust bundle. /ready is 200 only while the last good probe is recent,
 * so an expired signing certificate, an unreachable remote signer or a broken key turns readiness false.
 */
import type { CertificateAuthority } from '../ca/index.js';
import type { Logger } from '../log.js';
import { certificatesFromPem, createCsr, WorkloadId, generateKeyPairForAsync, parseCertificate, verifyChain } from '../pki/index.js';

export interface ReadinessOptions {
  authority: CertificateAuthority;
  trustDomain: string;
  logger: Logger;
  /** How often to probe (default 3 s). */
  intervalMs?: number;
  /** How recent the last good probe must be (default 10 s). */
  freshnessMs?: number;
  /** The clock (epoch ms) the freshness of the last good probe is judged by; default Date.now. */
  now?: () => number;
}

export interface ReadinessStatus {
  ready: boolean;
  lastSuccess?: string;
  lastError?: string;
}

export class ReadinessProbe {
  private csrPem: string | undefined;
  private lastSuccessAt = 0;
  private lastError: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly identity: WorkloadId;
  private readonly intervalMs: number;
  private readonly freshnessMs: number;
  private readonly now: () => number;

  constructor(private readonly options: ReadinessOptions) {
    this.identity = WorkloadId.of({ trustDomain: options.trustDomain, namespace: 'istio-system', serviceAccount: 'meshca-readiness-probe' });
    this.intervalMs = options.intervalMs ?? 3000;
    this.freshnessMs = options.freshnessMs ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  async start(): Promise<void> {
    const keys = await generateKeyPairForAsync('ec-p256');
    this.csrPem = createCsr({ privateKey: keys.privateKey, uris: [this.identity.uri] });
    await this.probe();
    this.timer = setInterval(() => void this.probe(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Runs one probe (coalesced with one already running). */
  probe(): Promise<void> {
    this.running ??= this.runProbe().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async runProbe(): Promise<void> {
    if (!this.csrPem) return;
    try {
      const issued = await this.options.authority.issue({ csrPem: this.csrPem, identity: this.identity, requestedTtlSeconds: 60 });
      const chain = issued.chain;
      const leaf = parseCertificate(issued.leafDer);
      const intermediates = chain.slice(1, -1).flatMap((pem) => certificatesFromPem(pem)).map(parseCertificate);
      const roots = certificatesFromPem(this.options.authority.trustBundlePem()).map(parseCertificate);
      verifyChain(leaf, { intermediates, roots });
      if (this.lastError !== undefined) this.options.logger.info('readiness probe succeeds again');
      this.lastSuccessAt = this.now();
      this.lastError = undefined;
    } catch (error) {
      const message = (error as Error).message;
      if (message !== this.lastError) this.options.logger.warn({ err: message }, 'readiness probe failed: the CA cannot sign');
      this.lastError = message;
      // A failed probe ends readiness at once; an earlier success does not vouch for the current key.
      this.lastSuccessAt = 0;
    }
  }

  /** Current readiness; probes first when the last success is too old to count. */
  async check(): Promise<ReadinessStatus> {
    if (this.now() - this.lastSuccessAt >= this.freshnessMs) await this.probe();
    const ready = this.now() - this.lastSuccessAt < this.freshnessMs;
    return {
      ready,
      ...(this.lastSuccessAt ? { lastSuccess: new Date(this.lastSuccessAt).toISOString() } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }
}
