import { CodedError } from '../util/coded-error.js';

/** Typed errors with stable codes (in the manner of panva/jose): callers branch on `code`, humans read `message`. */
export type PkiErrorCode =
  | 'ERR_DER_ENCODE'
  | 'ERR_DER_PARSE'
  | 'ERR_PEM'
  | 'ERR_CSR_MALFORMED'
  | 'ERR_CSR_SIGNATURE'
  | 'ERR_KEY_UNSUPPORTED'
  | 'ERR_KEY_WEAK'
  | 'ERR_CSR_CA_REQUESTED'
  | 'ERR_SPIFFE_ID'
  | 'ERR_CERT_MALFORMED'
  | 'ERR_KEY_MISMATCH'
  | 'ERR_CHAIN'
  | 'ERR_BUNDLE';

export class PkiError extends CodedError<PkiErrorCode> {
  override name = 'PkiError';
}

export function isPkiError(error: unknown, code?: PkiErrorCode): error is PkiError {
  return error instanceof PkiError && (code === undefined || error.code === code);
}
