/**
 * A certificate the CA issues to itself through its own WorkloadSigner, as workloads get theirs (so clients verify
 * it with the mesh roots they already trust): the gRPC serving certificate (src/server/serving-cert.ts) and the
 * SPIFFE bundle endpoint's X.509-SVID (federation/bundle-endpoint.ts). The key is generated here and kept in
 * memory only; the certificate is replaced at half-life, and at once when the CA material changes (a rotation or
 * reload may change the issuer and the roots). Listeners get each new certificate; a failed renewal is retried.
 */
import type { Logger } from '../log.js';
import { createCsr, exportPrivateKeyPem, generateKeyPairForAsync, parseCsr } from '../pki/index.js';
import { rearmTimer } from '../util/timers.js';
import type { WorkloadSigner } from './signer.js';

const RETRY_MS = 10_000;

export interface OwnCertificateOptions {
  signer: WorkloadSigner;
  dnsNames?: readonly string[];
  uris?: readonly string[];
  ttlSeconds: number;
  logger: Logger;
  /** What the logs call it, e.g. "serving certificate". */
  label: string;
  /** The clock (epoch ms) the certificate is issued at and its renewal planned from; default Date.now. */
  now?: () => number;
}

/** What may be shown of the certificate (no key). */
export interface OwnCertificateState {
  serialHex: string;
  notAfter: Date;
  dnsNames: readonly string[];
  uris: readonly string[];
  /** Leaf and intermediates, PEM (not the root: a peer that trusts it has it). */
  certChainPem: string;
}

/** What a TLS server needs: the state, the key, and the roots the certificate was issued under. */
export interface OwnTlsMaterial extends OwnCertificateState {
  keyPem: string;
  rootsPem: string;
}

export class OwnCertificate {
  private material: OwnTlsMaterial | undefined;
  private readonly listeners = new Set<(material: OwnTlsMaterial) => void>();
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private closed = false;
  private renewing: Promise<void> | undefined;

  constructor(private readonly options: OwnCertificateOptions) {}

  /** Issues the first certificate and follows the signer; throws when the signer cannot issue one (start-up fails). */
  async start(): Promise<OwnTlsMaterial> {
    const material = await this.issue();
    this.unsubscribe = this.options.signer.onChange(() => {
      this.options.logger.info(`CA material changed: re-issuing the ${this.options.label}`);
      void this.renew();
    });
    return material;
  }

  current(): OwnCertificateState | undefined {
    if (!this.material) return undefined;
    const { serialHex, notAfter, dnsNames, uris, certChainPem } = this.material;
    return { serialHex, notAfter, dnsNames, uris, certChainPem };
  }

  tlsMaterial(): OwnTlsMaterial {
    if (!this.material) throw new Error(`${this.options.label} not started`);
    return this.material;
  }

  /** Called with every certificate issued after the first. Returns an unsubscribe function. */
  onRenew(listener: (material: OwnTlsMaterial) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
    this.unsubscribe?.();
    if (this.timer) clearTimeout(this.timer);
  }

  /** Re-issues now (coalesced with a renewal already running). */
  renew(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.renewing ??= this.issue()
      .then((material) => {
        if (this.closed) return;
        for (const listener of [...this.listeners]) listener(material);
      })
      .catch((error: unknown) => {
        this.options.logger.error({ err: (error as Error).message, retryInSeconds: RETRY_MS / 1000 }, `could not renew the ${this.options.label}`);
        this.schedule(RETRY_MS);
      })
      .finally(() => {
        this.renewing = undefined;
      });
    return this.renewing;
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    this.timer = rearmTimer(this.timer, delayMs, () => void this.renew());
  }

  private async issue(): Promise<OwnTlsMaterial> {
    const { signer, ttlSeconds, logger } = this.options;
    const dnsNames = this.options.dnsNames ?? [];
    const uris = this.options.uris ?? [];
    const keys = await generateKeyPairForAsync('ec-p256');
    const csrPem = createCsr({ privateKey: keys.privateKey, dnsNames: [...dnsNames], uris: [...uris] });
    const issuedAt = (this.options.now ?? Date.now)();
    // The roots as of this issuance: read before signing, so that a change during it triggers another renewal.
    const rootsPem = signer.trustBundlePem();
    const signed = await signer.sign({ csrPem, spkiDer: parseCsr(csrPem).spkiDer, uris, ...(dnsNames.length > 0 ? { dnsNames } : {}), ttlSeconds, now: issuedAt });
    const certChainPem = signed.chain.slice(0, -1).join('');
    this.material = { serialHex: signed.serialHex, notAfter: signed.notAfter, dnsNames, uris, certChainPem, keyPem: exportPrivateKeyPem(keys.privateKey), rootsPem };
    // Renew at half of the remaining lifetime, like workload agents do.
    this.schedule((signed.notAfter.getTime() - issuedAt) / 2);
    logger.info(
      { serial: signed.serialHex, notAfter: signed.notAfter.toISOString(), ...(dnsNames.length > 0 ? { dnsNames } : {}), ...(uris.length > 0 ? { uris } : {}) },
      `${this.options.label} issued`,
    );
    return this.material;
  }
}
