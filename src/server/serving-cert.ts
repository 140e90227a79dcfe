/**
 * The CA's own TLS serving certificate, issued by the CA itself through the same WorkloadSigner as workloads get
 * (so agents verify it with the mesh root they already trust). The key is generated here, kept in memory only,
 * and replaced at half-life or at once when the CA material changes; new TLS handshakes pick up the new
 * certificate without a restart.
 */
import type { SecureContextOptions } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { WorkloadSigner } from '../ca/index.js';
import type { Logger } from '../log.js';
import { createCsr, exportPrivateKeyPem, generateKeyPairForAsync, parseCsr } from '../pki/index.js';
import { rearmTimer } from '../util/timers.js';

const RETRY_MS = 10_000;

/** Oldest protocol the CA port accepts: TLS 1.0/1.1 handshakes are refused. */
export const TLS_MIN_VERSION = 'TLSv1.2' as const;
/**
 * Only AEAD suites with forward secrecy: the TLS 1.3 suites (all AEAD) and, for TLS 1.2 clients, ECDHE with
 * AES-GCM or ChaCha20-Poly1305. CBC and static-RSA suites, which Node still enables by default, are left out.
 * The TLS 1.3 names must stay in the list: without them Node caps the protocol at TLS 1.2.
 */
export const TLS_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * Server credentials whose certificate can be swapped while serving. Client certificates are requested (for
 * renewal authentication) but optional: a handshake without one, or with one we do not trust, still succeeds and
 * the caller must then authenticate with a token.
 */
export class RotatingServerCredentials extends grpc.ServerCredentials {
  constructor(initial: SecureContextOptions) {
    super({ requestCert: true, rejectUnauthorized: false, honorCipherOrder: true }, initial);
  }

  update(options: SecureContextOptions): void {
    this.updateSecureContextOptions(options);
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

export interface ServingCertificateOptions {
  signer: WorkloadSigner;
  dnsNames: readonly string[];
  ttlSeconds: number;
  logger: Logger;
  /** The clock (epoch ms) the certificate is issued at and its renewal planned from; default Date.now. */
  now?: () => number;
}

export interface ServingCertificateState {
  serialHex: string;
  notAfter: Date;
  dnsNames: readonly string[];
  /** Leaf and intermediates, PEM. */
  certChainPem: string;
}

export class ServingCertificate {
  private state: ServingCertificateState | undefined;
  private credentialsValue: RotatingServerCredentials | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private closed = false;
  private renewing: Promise<void> | undefined;

  constructor(private readonly options: ServingCertificateOptions) {}

  /** Issues the first certificate; throws when the signer cannot issue one (start-up fails). */
  async start(): Promise<void> {
    const context = await this.issue();
    this.credentialsValue = new RotatingServerCredentials(context);
    this.unsubscribe = this.options.signer.onChange(() => {
      this.options.logger.info('CA material changed: re-issuing the serving certificate');
      void this.renew();
    });
  }

  get credentials(): RotatingServerCredentials {
    if (!this.credentialsValue) throw new Error('serving certificate not started');
    return this.credentialsValue;
  }

  current(): ServingCertificateState | undefined {
    return this.state;
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
      .then((context) => this.credentialsValue?.update(context))
      .catch((error: unknown) => {
        this.options.logger.error({ err: (error as Error).message, retryInSeconds: RETRY_MS / 1000 }, 'could not renew the serving certificate');
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

  private async issue(): Promise<SecureContextOptions> {
    const { signer, dnsNames, ttlSeconds, logger } = this.options;
    const keys = await generateKeyPairForAsync('ec-p256');
    const csrPem = createCsr({ privateKey: keys.privateKey, dnsNames: [...dnsNames] });
    const issuedAt = (this.options.now ?? Date.now)();
    const signed = await signer.sign({ csrPem, spkiDer: parseCsr(csrPem).spkiDer, uris: [], dnsNames, ttlSeconds, now: issuedAt });
    const certChainPem = signed.chain.slice(0, -1).join('');
    this.state = { serialHex: signed.serialHex, notAfter: signed.notAfter, dnsNames, certChainPem };
    // Renew at half of the remaining lifetime, like workload agents do.
    this.schedule((signed.notAfter.getTime() - issuedAt) / 2);
    logger.info({ serial: signed.serialHex, notAfter: signed.notAfter.toISOString(), dnsNames }, 'serving certificate issued');
    // Protocol and cipher settings travel with every context: a renewal replaces the whole secure context.
    return {
      cert: Buffer.from(certChainPem),
      key: Buffer.from(exportPrivateKeyPem(keys.privateKey)),
      ca: Buffer.from(signer.trustBundlePem()),
      minVersion: TLS_MIN_VERSION,
      ciphers: TLS_CIPHERS,
    };
  }
}
