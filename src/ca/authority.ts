/**
 * Signing policy, independent of transport and key source: the CSR must parse, verify and not ask for a CA;
 * the TTL is defaulted and bounded; SANs are the caller's proven identities, never the CSR's.
 */
import { isPkiError, parseCsr, parseSpiffeId, verifyCsr, type ParsedCsr } from '../pki/index.js';
import { CaError } from './errors.js';
import type { SignedChain, WorkloadSigner } from './signer.js';

export interface AuthorityOptions {
  signer: WorkloadSigner;
  /** DEFAULT_WORKLOAD_CERT_TTL, used when the request asks for <= 0 seconds. */
  defaultTtlSeconds: number;
  /** MAX_WORKLOAD_CERT_TTL; longer requests are refused. */
  maxTtlSeconds: number;
  now?: () => number;
}

export interface IssueRequest {
  csrPem: string;
  /** SPIFFE IDs the caller proved (or was allowed to impersonate). */
  identities: readonly string[];
  /** validity_duration from the request, in seconds; <= 0 means the default. */
  requestedTtlSeconds: number;
}

export interface IssueResult extends SignedChain {
  ttlSeconds: number;
}

export function formatSeconds(seconds: number): string {
  if (seconds % 86400 === 0) return `${seconds / 86400}d`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

export class CertificateAuthority {
  readonly signer: WorkloadSigner;
  private readonly now: () => number;

  constructor(private readonly options: AuthorityOptions) {
    this.signer = options.signer;
    this.now = options.now ?? Date.now;
  }

  /** Parses and checks a CSR; throws CaError CSR_ERROR naming the reason. */
  checkCsr(csrPem: string): ParsedCsr {
    try {
      const csr = parseCsr(csrPem);
      verifyCsr(csr);
      return csr;
    } catch (error) {
      if (isPkiError(error)) throw new CaError('CSR_ERROR', `CSR error: ${error.message}`, { cause: error });
      throw error;
    }
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

  async issue(request: IssueRequest): Promise<IssueResult> {
    if (request.identities.length === 0) throw new CaError('CSR_ERROR', 'no identity to issue a certificate for');
    for (const identity of request.identities) {
      try {
        parseSpiffeId(identity);
      } catch (error) {
        throw new CaError('CSR_ERROR', `caller identity is not a valid SPIFFE ID: ${(error as Error).message}`);
      }
    }
    const ttlSeconds = this.ttlFor(request.requestedTtlSeconds);
    const csr = this.checkCsr(request.csrPem);
    const maxNotAfter = this.signer.maxNotAfter();
    if (maxNotAfter && maxNotAfter.getTime() <= this.now()) throw new CaError('CA_NOT_READY', 'CA certificate has expired');
    let signed: SignedChain;
    try {
      signed = await this.signer.sign({ csrPem: request.csrPem, spkiDer: csr.spkiDer, uris: request.identities, ttlSeconds });
    } catch (error) {
      if (error instanceof CaError) throw error;
      throw new CaError('CERT_GEN_ERROR', `failed to sign the certificate: ${(error as Error).message}`, { cause: error });
    }
    return { ...signed, ttlSeconds };
  }
}
