/**
 * HSM-rooted intermediate mode: the token's key signs a short-lived intermediate whose key meshca makes in
 * memory, and workloads are signed with that intermediate at in-process speed. The token is used once per
 * intermediate: at start and at each renewal (2/3 of the lifetime). When a renewal fails, the current
 * intermediate keeps signing and the renewal is retried with backoff, so signing outlasts a token outage of a
 * third of the intermediate's lifetime. The intermediate's key is never written anywhere: a restart needs the
 * token.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from '../../../log.js';
import {
  caCertificateTbs,
  certificateFromTbs,
  CLOCK_SKEW_GRACE_MS,
  generateKeyPairForAsync,
  isPkiError,
  parseCertificate,
  type KeySpec,
  type ParsedCertificate,
} from '../../../pki/index.js';
import { systemClock, timerAt, type Clock } from '../../../util/clock.js';
import { CaError } from '../../errors.js';
import { ManagedLocalSigner } from '../../managed-signer.js';
import { buildCaMaterial, fingerprint, type CaMaterial } from '../../material.js';

/** What this mode needs of the token key: its public half and a signature over bytes. */
export interface IntermediateSigningKey {
  readonly publicKey: KeyObject;
  sign(digestAlgorithm: 'sha256' | 'sha384' | 'sha512', data: Buffer): Promise<Buffer>;
}

export interface HsmIntermediateOptions {
  key: IntermediateSigningKey;
  /** The token key's certificate. */
  certificate: ParsedCertificate;
  /** Certificates above it (not the roots), if any. */
  chain: readonly ParsedCertificate[];
  roots: readonly ParsedCertificate[];
  /** The intermediate's key type. */
  keySpec: KeySpec;
  ttlSeconds: number;
  trustDomain: string;
  logger: Logger;
  clock?: Clock;
}

/** The longest wait between renewal attempts after a failure. */
const MAX_RETRY_MS = 60_000;

export class HsmIntermediateSource {
  private signer: ManagedLocalSigner | undefined;
  private cancelTimer: (() => void) | undefined;
  private renewing: Promise<void> | undefined;
  private failures = 0;
  private closed = false;
  /** When the current intermediate was made; its renewal is due at 2/3 of its life from here. */
  private mintedAt = 0;
  /** The last renewal failure, for status and tests. */
  lastError: string | undefined;

  constructor(private readonly options: HsmIntermediateOptions) {}

  private get clock(): Clock {
    return this.options.clock ?? systemClock;
  }

  /** When the intermediate is to be replaced: 2/3 of the way from when it was made to its NotAfter. */
  static renewAt(cert: ParsedCertificate, mintedAt: number): number {
    const start = Math.min(mintedAt, cert.notAfter.getTime());
    return start + ((cert.notAfter.getTime() - start) * 2) / 3;
  }

  /** Makes the first intermediate (the token must answer) and starts renewing it. */
  async open(): Promise<ManagedLocalSigner> {
    const material = await this.mint();
    const signer = new ManagedLocalSigner('pkcs11', material, 'intermediate');
    this.signer = signer;
    this.logMinted(material, 'signing workloads with an intermediate CA signed by the PKCS#11 token key (intermediate mode)');
    this.arm();
    signer.addCleanup(() => this.close());
    return signer;
  }

  /** The intermediate's renewal time (epoch ms), for status and tests. */
  get renewalDue(): number | undefined {
    const current = this.signer?.current();
    return current ? HsmIntermediateSource.renewAt(current.signingCert, this.mintedAt) : undefined;
  }

  /** A new key in memory, its certificate signed in the token and checked against the token key's certificate. */
  private async mint(): Promise<CaMaterial> {
    const { certificate, key } = this.options;
    const now = this.clock.now();
    const keys = await generateKeyPairForAsync(this.options.keySpec);
    const { tbs, profile } = caCertificateTbs(
      {
        subject: { organization: this.options.trustDomain, commonName: 'meshca intermediate CA (PKCS#11)' },
        subjectKey: keys.publicKey,
        issuer: { certificate },
        notBefore: new Date(Math.floor(now / 1000) * 1000 - CLOCK_SKEW_GRACE_MS),
        notAfter: new Date(Math.floor(now / 1000) * 1000 + this.options.ttlSeconds * 1000),
        pathLen: 0,
      },
      key.publicKey,
    );
    const signature = await key.sign(profile.hash, tbs);
    let material: CaMaterial;
    try {
      // Verifies the token's signature and the chain to the roots: what the token returned is checked here.
      const intermediate = parseCertificate(certificateFromTbs(tbs, profile.algorithmIdentifier, signature));
      material = buildCaMaterial({
        signingCert: intermediate,
        privateKey: keys.privateKey,
        chain: [certificate, ...this.options.chain],
        roots: this.options.roots,
        now: new Date(now),
      });
    } catch (error) {
      const detail = isPkiError(error) ? error.message : String(error);
      throw new CaError('CERT_GEN_ERROR', `the intermediate signed by the PKCS#11 token is unusable: ${detail}`, { cause: error });
    }
    this.mintedAt = now;
    return material;
  }

  private logMinted(material: CaMaterial, message: string): void {
    this.options.logger.info(
      {
        source: 'pkcs11',
        mode: 'intermediate',
        intermediate: material.signingCert.serialHex,
        notAfter: material.signingCert.notAfter.toISOString(),
        renewAt: new Date(HsmIntermediateSource.renewAt(material.signingCert, this.mintedAt)).toISOString(),
        roots: material.roots.map(fingerprint),
      },
      message,
    );
  }

  private arm(retryInMs?: number): void {
    this.cancelTimer?.();
    if (this.closed || !this.signer) return;
    const at = retryInMs !== undefined ? this.clock.now() + retryInMs : HsmIntermediateSource.renewAt(this.signer.current().signingCert, this.mintedAt);
    this.cancelTimer = timerAt(this.clock, at, () => void this.renew());
  }

  /** Replaces the intermediate; on failure the current one keeps signing and a retry is scheduled. */
  renew(): Promise<void> {
    this.renewing ??= (async () => {
      try {
        const material = await this.mint();
        if (this.closed) return;
        this.signer?.replace(material);
        this.failures = 0;
        this.lastError = undefined;
        this.logMinted(material, 'renewed the intermediate CA certificate with the PKCS#11 token key');
        this.arm();
      } catch (error) {
        if (this.closed) return;
        this.failures++;
        this.lastError = (error as Error).message;
        const current = this.signer?.current().signingCert;
        const left = current ? current.notAfter.getTime() - this.clock.now() : 0;
        const retryMs = Math.max(1000, Math.min(MAX_RETRY_MS, left / 10, 1000 * 2 ** Math.min(this.failures, 6)));
        this.options.logger.warn(
          { err: this.lastError, retryInMs: Math.round(retryMs), currentNotAfter: current?.notAfter.toISOString() },
          'cannot renew the intermediate CA certificate with the PKCS#11 token; the current one keeps signing until then',
        );
        this.arm(retryMs);
      }
    })().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.cancelTimer?.();
    await this.renewing?.catch(() => undefined);
  }
}
