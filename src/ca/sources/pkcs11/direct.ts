/**
 * PKCS#11 direct mode: every workload certificate is signed inside the token by the HSM key itself. The
 * TBSCertificate is built here (LeafTemplate, the same encoder as in-process issuance), the token signs it, and
 * the certificate is assembled around the signature. The signer declares no in-process material, so the CA's
 * final check verifies every leaf's signature: the independent check of what the HSM returned.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from '../../../log.js';
import { assertCaSigningKey, certificateFromTbs, certificateToPem, isPkiError, LeafTemplate, type ParsedCertificate } from '../../../pki/index.js';
import { CaConfigError, CaError } from '../../errors.js';
import { fingerprint, resolveCaChain, type CaChain } from '../../material.js';
import type { SignedChain, SignerStatus, WorkloadSignRequest, WorkloadSigner } from '../../signer.js';

/** A key that signs outside this process; Pkcs11Key is one. */
export interface TokenKey {
  readonly publicKey: KeyObject;
  /** Hashes `data` with `digest` and signs it; the signature in X.509's encoding (ECDSA DER, RSA PKCS#1 v1.5). */
  sign(digest: 'sha256' | 'sha384' | 'sha512', data: Buffer): Promise<Buffer>;
}

export interface Pkcs11DirectSignerOptions {
  key: TokenKey;
  /** The token key's CA certificate: it issues every workload certificate. */
  certificate: ParsedCertificate;
  /** Certificates above it (intermediates, optionally the root), in any order. */
  chain: readonly ParsedCertificate[];
  /** The trust bundle; the certificate must chain to one of them. */
  roots: readonly ParsedCertificate[];
  /** Epoch ms; default Date.now. Validates the chain at construction and dates leaves when the request does not. */
  now?: () => number;
  /** Told when the token stops signing and when it signs again (once each, not per request). */
  logger?: Logger;
}

export class Pkcs11DirectSigner implements WorkloadSigner {
  readonly source = 'pkcs11';
  private readonly key: TokenKey;
  private readonly certificate: ParsedCertificate;
  private readonly template: LeafTemplate;
  private readonly caChain: CaChain;
  private readonly now: () => number;
  private readonly logger: Logger | undefined;
  private readonly listeners = new Set<() => void>();
  private failing = false;
  private closed = false;

  /**
   * Checks, before anything is signed, that the token key belongs to the certificate, that the certificate is a
   * CA allowed to sign certificates, and that it chains to a root of the bundle. Each failure is a one-line
   * CaConfigError.
   */
  constructor(options: Pkcs11DirectSignerOptions) {
    this.key = options.key;
    this.certificate = options.certificate;
    this.now = options.now ?? Date.now;
    this.logger = options.logger;
    const what = `--pkcs11-cert certificate "${options.certificate.subject}"`;
    try {
      assertCaSigningKey(options.certificate, options.key.publicKey, { what, keyName: 'the token key' });
      this.template = new LeafTemplate(options.certificate, options.key.publicKey);
      this.caChain = resolveCaChain({ signingCert: options.certificate, chain: options.chain, roots: options.roots, now: new Date(this.now()) });
    } catch (error) {
      if (!isPkiError(error)) throw error;
      const hint = error.code === 'ERR_KEY_MISMATCH' ? '; give the certificate issued for this key, or name the key that belongs to the certificate' : '';
      throw new CaConfigError(`PKCS#11: ${error.message}${hint}`, { cause: error });
    }
  }

  /**
   * Builds the TBSCertificate, has the token sign it and returns [leaf, signing cert and intermediates, roots].
   * A token that does not sign is UPSTREAM_UNAVAILABLE (gRPC UNAVAILABLE), unless the key threw a CaError of
   * its own, which is passed on as it is.
   */
  async sign(request: WorkloadSignRequest): Promise<SignedChain> {
    if (this.closed) throw new CaError('CA_NOT_READY', 'the PKCS#11 signer is closed');
    const leaf = this.template.build({
      spkiDer: request.spkiDer,
      uris: request.uris,
      ...(request.dnsNames ? { dnsNames: request.dnsNames } : {}),
      ttlSeconds: request.ttlSeconds,
      now: request.now ?? this.now(),
    });
    let signature: Buffer;
    try {
      signature = await this.key.sign(leaf.hash, leaf.tbs);
    } catch (error) {
      throw this.signingFailed(error);
    }
    if (this.failing) {
      this.failing = false;
      this.logger?.info('the PKCS#11 token signs again');
    }
    const der = certificateFromTbs(leaf.tbs, leaf.algorithmIdentifier, signature);
    return {
      chain: [certificateToPem(der), ...this.caChain.chainPems, this.caChain.rootsPem],
      leafDer: der,
      serialHex: leaf.serialHex,
      notAfter: leaf.notAfter,
    };
  }

  trustBundlePem(): string {
    return this.caChain.rootsPem;
  }

  maxNotAfter(): Date {
    return this.certificate.notAfter;
  }

  status(): SignerStatus {
    return {
      source: this.source,
      mode: 'direct',
      signingCertSerial: this.certificate.serialHex,
      signingCertSubject: this.certificate.subject,
      signingCertNotAfter: this.certificate.notAfter,
      signingCertUris: this.certificate.sans.uris,
      roots: this.caChain.roots.map((r) => ({ subject: r.subject, fingerprintSha256: fingerprint(r), notAfter: r.notAfter })),
    };
  }

  /** The material never changes: the key and its certificate are fixed for the signer's life. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Stops signing. The token key is the opener's to close. */
  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
  }

  /**
   * A CaError from the key keeps its code (a key that tells an outage, UNAVAILABLE, from a refused signature,
   * CERT_GEN_ERROR); anything else the token threw is UPSTREAM_UNAVAILABLE, its message cut to one line.
   */
  private signingFailed(error: unknown): CaError {
    let failure: CaError;
    if (error instanceof CaError) {
      failure = error;
    } else {
      const reason = (error instanceof Error ? error.message : String(error)).split('\n')[0]!;
      failure = new CaError('UPSTREAM_UNAVAILABLE', reason.startsWith('PKCS#11') ? reason : `PKCS#11: the token did not sign: ${reason}`, { cause: error });
    }
    if (!this.failing) {
      this.failing = true;
      this.logger?.warn({ err: failure.message, code: failure.code }, 'the PKCS#11 token does not sign; workload certificates are refused until it does');
    }
    return failure;
  }
}
