/**
 * The CA's own TLS serving certificate, issued by the CA itself through the same WorkloadSigner as workloads get
 * (src/ca/own-certificate.ts: key in memory only, replaced at half-life or at once when the CA material changes);
 * new TLS handshakes pick up the new certificate without a restart.
 */
import type { SecureContextOptions } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { OwnCertificate, type OwnCertificateState, type OwnTlsMaterial, type WorkloadSigner } from '../ca/index.js';
import type { Logger } from '../log.js';
import { TLS_CIPHERS, TLS_MIN_VERSION } from '../util/tls-policy.js';

export { TLS_CIPHERS, TLS_MIN_VERSION };

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

export type ServingCertificateState = OwnCertificateState;

/** Protocol and cipher settings travel with every context: a renewal replaces the whole secure context. */
function secureContextOf(material: OwnTlsMaterial): SecureContextOptions {
  return {
    cert: Buffer.from(material.certChainPem),
    key: Buffer.from(material.keyPem),
    ca: Buffer.from(material.rootsPem),
    minVersion: TLS_MIN_VERSION,
    ciphers: TLS_CIPHERS,
  };
}

/** The CA's own certificate (src/ca/own-certificate.ts) as gRPC server credentials that follow its renewals. */
export class ServingCertificate {
  private readonly own: OwnCertificate;
  private credentialsValue: RotatingServerCredentials | undefined;

  constructor(options: ServingCertificateOptions) {
    this.own = new OwnCertificate({ ...options, label: 'serving certificate' });
  }

  /** Issues the first certificate; throws when the signer cannot issue one (start-up fails). */
  async start(): Promise<void> {
    const credentials = new RotatingServerCredentials(secureContextOf(await this.own.start()));
    this.credentialsValue = credentials;
    this.own.onRenew((material) => credentials.update(secureContextOf(material)));
  }

  get credentials(): RotatingServerCredentials {
    if (!this.credentialsValue) throw new Error('serving certificate not started');
    return this.credentialsValue;
  }

  current(): ServingCertificateState | undefined {
    return this.own.current();
  }

  close(): void {
    this.own.close();
  }

  /** Re-issues now (coalesced with a renewal already running). */
  renew(): Promise<void> {
    return this.own.renew();
  }
}
