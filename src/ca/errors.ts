/**
 * CA errors with stable codes. The gRPC layer maps each code to a status (mirroring Istio's caerror types):
 * CSR_ERROR and TTL_ERROR -> INVALID_ARGUMENT, CA_NOT_READY and CERT_GEN_ERROR -> INTERNAL,
 * UPSTREAM_UNAVAILABLE -> UNAVAILABLE, UPSTREAM_DENIED -> PERMISSION_DENIED.
 */
import { CodedError } from '../util/coded-error.js';

export type CaErrorCode =
  | 'CSR_ERROR'
  | 'TTL_ERROR'
  | 'CA_NOT_READY'
  | 'CERT_GEN_ERROR'
  | 'UPSTREAM_UNAVAILABLE'
  | 'UPSTREAM_DENIED'
  | 'UPSTREAM_REJECTED';

export class CaError extends CodedError<CaErrorCode> {
  override name = 'CaError';
}

/**
 * The key source produced a chain that failed the final check (another key, identity or issuer, a broken chain):
 * not the caller's fault, and nothing is handed out. A CERT_GEN_ERROR, told apart so the server can say so loudly.
 */
export class WithheldChainError extends CaError {
  constructor(message: string) {
    super('CERT_GEN_ERROR', message);
    this.name = 'WithheldChainError';
  }
}

/** The CSR did not parse, or its signature did not verify: a CSR_ERROR, told apart for citadel_server_csr_parsing_err_count. */
export class CsrParseError extends CaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CSR_ERROR', message, options);
    this.name = 'CsrParseError';
  }
}

/** Start-up / load problems of a key source: one line that names the file and the fix. */
export class CaConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CaConfigError';
  }
}
