/**
 * Errors of the identity cache, in words any API can map to its own statuses (the SDS view maps them to gRPC
 * codes in errors.ts). Nothing here knows a transport.
 */
import { CodedError } from '../../util/coded-error.js';

export type AgentErrorCode =
  | 'unauthenticated'
  | 'permission_denied'
  | 'unavailable'
  | 'resource_exhausted'
  | 'cancelled'
  | 'internal';

/** Why the cache could not serve a request; the message names the cause and the fix. */
export class AgentError extends CodedError<AgentErrorCode> {
  override name = 'AgentError';
}

/** A proof that stopped waiting because the request that asked for it ended. */
export class AbandonedProof extends AgentError {
  constructor() {
    super('cancelled', 'the stream ended while its token waited to be proven');
  }
}

/**
 * What a failed CA call means for the cache:
 *  - refused: the CA refused the token itself (it issued nothing, so the CSR's key may serve another request);
 *  - retryable: overloaded, unreachable or timed out (the CA may have certified the key);
 *  - final: any other answer, the CA's last word about this request.
 */
export type CaFailureKind = 'refused' | 'retryable' | 'final';

/** A failed CA call, as every CaClient reports it. */
export class CaFailure extends Error {
  readonly kind: CaFailureKind;
  /** The status the CA (or the channel) reported, by name, for metrics and messages (e.g. UNAVAILABLE). */
  readonly status: string;
  readonly details: string;
  /** For a refusal: whether the CA said the caller is unknown or known but not allowed. */
  readonly refusal: 'unauthenticated' | 'permission_denied' | null;

  constructor(
    kind: CaFailureKind,
    status: string,
    details: string,
    options?: { cause?: unknown; refusal?: 'unauthenticated' | 'permission_denied' },
  ) {
    super(`${status}: ${details}`, options);
    this.name = 'CaFailure';
    this.kind = kind;
    this.status = status;
    this.details = details;
    this.refusal = kind === 'refused' ? (options?.refusal ?? 'unauthenticated') : null;
  }
}

export function isCaRefusal(error: unknown): error is CaFailure {
  return error instanceof CaFailure && error.kind === 'refused';
}

export function isRetryableCaError(error: unknown): boolean {
  return error instanceof CaFailure && error.kind === 'retryable';
}
