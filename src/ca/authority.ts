/**
 * Issuance, end to end and independent of transport and key source: the policy (the CSR must parse, verify and
 * not ask for a CA; the TTL is defaulted and bounded; the one URI SAN is the caller's proven WorkloadId, never
 * the CSR's), the key source's signature, then the final check of what was signed. What `issue` returns is a
 * chain that has passed that check; anything else is a CaError.
 */
import { assertKeyStrength, describeSpki, isPkiError, parseCsr, verifyCsr, verifyCsrWithoutBlocking, type ParsedCsr, type WorkloadId } from '../pki/index.js';
import { CaError, CsrParseError } from './errors.js';
import { IssuedChainChecker } from './issued-check.js';
import type { SignedChain, WorkloadSigner } from './signer.js';

export interface AuthorityOptions {
  signer: WorkloadSigner;
  /** DEFAULT_WORKLOAD_CERT_TTL, used when the request asks for <= 0 seconds. */
  defaultTtlSeconds: number;
  /** MAX_WORKLOAD_CERT_TTL; longer requests are refused. */
  maxTtlSeconds: number;
  /** The clock issuance reads (epoch ms): expiry of the signing certificate, the leaf's validity, the final check. Default Date.now. */
  now?: () => number;
}

export interface IssueRequest {
  /** The CSR: proof that the caller holds the key. Or, instead, `provenPublicKeyDer`. */
  csrPem?: string;
  /**
   * A SubjectPublicKeyInfo (DER) whose possession was proved another way: Kubernetes checked a PodCertificateRequest's
   * signature over its pod UID (the pre-1.36 key encoding, which has no CSR). Key sources that forward the CSR
   * (Vault) cannot sign for it.
   */
  provenPublicKeyDer?: Buffer;
  /** The workload identity the caller proved (or was allowed to impersonate); the leaf's only URI SAN. */
  identity: WorkloadId;
  /** validity_duration from the request, in seconds; <= 0 means the default. */
  requestedTtlSeconds: number;
  /**
   * Never issue for longer than DEFAULT_WORKLOAD_CERT_TTL (a longer request is shortened, not refused). Used for
   * renewals authenticated by a client certificate: a certificate, stolen or not, buys at most one default
   * lifetime per renewal instead of MAX_WORKLOAD_CERT_TTL.
   */
  capAtDefaultTtl?: boolean;
}

export interface IssueResult extends SignedChain {
  ttlSeconds: number;
  /** Set when capAtDefaultTtl shortened the TTL: what the request would otherwise have got. */
  ttlCappedFromSeconds?: number;
}

export function formatSeconds(seconds: number): string {
  if (seconds % 86400 === 0) return `${seconds / 86400}d`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

/** A PkiError from reading or checking a CSR, as the CaError CSR_ERROR naming the reason; anything else as it is. */
function asCsrError(error: unknown): unknown {
  return isPkiError(error) ? new CsrParseError(`CSR error: ${error.message}`, { cause: error }) : error;
}

/** Parses and checks a CSR once; throws CaError CSR_ERROR naming the reason. */
function checkedCsr(csrPem: string): ParsedCsr {
  try {
    const csr = parseCsr(csrPem);
    verifyCsr(csr);
    return csr;
  } catch (error) {
    throw asCsrError(error);
  }
}

/** checkedCsr for the request path: a costly verification (a P-384 key) runs off the event loop. */
async function checkedCsrWithoutBlocking(csrPem: string): Promise<ParsedCsr> {
  try {
    const csr = parseCsr(csrPem);
    await verifyCsrWithoutBlocking(csr);
    return csr;
  } catch (error) {
    throw asCsrError(error);
  }
}

/** A key proved without a CSR: readable and within the key policy; throws CaError CSR_ERROR otherwise. */
function checkedProvenKey(spkiDer: Buffer | undefined): Buffer {
  if (!spkiDer) throw new CsrParseError('CSR error: the request has neither a CSR nor a proven public key');
  try {
    assertKeyStrength(describeSpki(spkiDer), 'public key');
    return spkiDer;
  } catch (error) {
    if (isPkiError(error)) throw new CsrParseError(`CSR error: ${error.message}`, { cause: error });
    throw new CsrParseError('CSR error: the public key is not a readable SubjectPublicKeyInfo', { cause: error });
  }
}

export class CertificateAuthority {
  readonly signer: WorkloadSigner;
  private readonly now: () => number;
  private readonly finalCheck: IssuedChainChecker;

  constructor(private readonly options: AuthorityOptions) {
    this.signer = options.signer;
    this.now = options.now ?? Date.now;
    this.finalCheck = new IssuedChainChecker({ now: this.now });
  }

  /** The trust bundle workloads are told to trust (ROOTCA, the ConfigMap), from the key source. */
  trustBundlePem(): string {
    return this.signer.trustBundlePem();
  }

  /** Parses and checks a CSR; throws CaError CSR_ERROR naming the reason. */
  checkCsr(csrPem: string): ParsedCsr {
    return checkedCsr(csrPem);
  }

  /** MAX_WORKLOAD_CERT_TTL in seconds. */
  get maxTtlSeconds(): number {
    return this.options.maxTtlSeconds;
  }

  ttlFor(requestedTtlSeconds: number): number {
    if (!Number.isFinite(requestedTtlSeconds) || requestedTtlSeconds <= 0) return this.options.defaultTtlSeconds;
    if (requestedTtlSeconds > this.options.maxTtlSeconds) {
      throw new CaError(
        'TTL_ERROR',
        `CSR signing error (requested TTL ${formatSeconds(requestedTtlSeconds)} is greater than the max allowed TTL ${formatSeconds(this.options.maxTtlSeconds)})`,
      );
    }
    return Math.floor(requestedTtlSeconds);
  }

  /**
   * Policy → key source → final check. Throws CaError: CSR_ERROR / TTL_ERROR for the request, CA_NOT_READY,
   * CERT_GEN_ERROR (WithheldChainError when the signed chain failed the final check) or the source's UPSTREAM_*.
   */
  async issue(request: IssueRequest): Promise<IssueResult> {
    const wantedTtlSeconds = this.ttlFor(request.requestedTtlSeconds);
    const capped = request.capAtDefaultTtl === true && wantedTtlSeconds > this.options.defaultTtlSeconds;
    const ttlSeconds = capped ? this.options.defaultTtlSeconds : wantedTtlSeconds;
    const spkiDer = request.csrPem !== undefined ? (await checkedCsrWithoutBlocking(request.csrPem)).spkiDer : checkedProvenKey(request.provenPublicKeyDer);
    const now = this.now();
    const maxNotAfter = this.signer.maxNotAfter();
    if (maxNotAfter && maxNotAfter.getTime() <= now) throw new CaError('CA_NOT_READY', 'CA certificate has expired');
    const bundleBefore = this.signer.trustBundlePem();
    let signed: SignedChain;
    try {
      signed = await this.signer.sign({ csrPem: request.csrPem ?? '', spkiDer, uris: [request.identity.uri], ttlSeconds, now });
    } catch (error) {
      if (error instanceof CaError) throw error;
      throw new CaError('CERT_GEN_ERROR', `failed to sign the certificate: ${(error as Error).message}`, { cause: error });
    }
    await this.finalCheck.checkWithoutBlocking(signed, {
      identities: [request.identity.uri],
      spkiDer,
      // Both bundles: a material swap while the request was signed is not a fault.
      advertisedBundles: [bundleBefore, this.signer.trustBundlePem()],
      signer: this.signer,
    });
    return { ...signed, ttlSeconds, ...(capped ? { ttlCappedFromSeconds: wantedTtlSeconds } : {}) };
  }
}
