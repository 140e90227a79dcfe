/**
 * The gRPC side of the agent's errors: SdsError ends an SDS call with a status; CaCallError is what the gRPC CA
 * client reports. The identity cache itself speaks in AgentError and CaFailure (cache/errors.ts), mapped here.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { CodedError } from '../util/coded-error.js';
import { AgentError, CaFailure, type AgentErrorCode, type CaFailureKind } from './cache/errors.js';

export class SdsError extends CodedError<GrpcStatus> {
  override name = 'SdsError';

  /** The shape grpc-js turns into a status when emitted as 'error' on a server call. */
  toServiceError(): Error & { code: GrpcStatus; details: string } {
    return Object.assign(new Error(this.message), { code: this.code, details: this.message });
  }
}

const GRPC_STATUS_OF: Record<AgentErrorCode, GrpcStatus> = {
  unauthenticated: GrpcStatus.UNAUTHENTICATED,
  permission_denied: GrpcStatus.PERMISSION_DENIED,
  unavailable: GrpcStatus.UNAVAILABLE,
  resource_exhausted: GrpcStatus.RESOURCE_EXHAUSTED,
  cancelled: GrpcStatus.CANCELLED,
  internal: GrpcStatus.INTERNAL,
};

/** Any error on its way to an SDS client, as the status it gets: cache errors by their code, others INTERNAL. */
export function toSdsError(error: unknown): SdsError {
  if (error instanceof SdsError) return error;
  if (error instanceof AgentError) return new SdsError(GRPC_STATUS_OF[error.code], error.message, { cause: error });
  return new SdsError(GrpcStatus.INTERNAL, (error as Error | undefined)?.message ?? String(error));
}

/** Istio's agent retries these; anything else is the CA's final word about this request. */
export const RETRYABLE_CA_CODES: ReadonlySet<GrpcStatus> = new Set([
  GrpcStatus.UNAVAILABLE,
  GrpcStatus.DEADLINE_EXCEEDED,
  GrpcStatus.INTERNAL,
  GrpcStatus.RESOURCE_EXHAUSTED,
]);

function kindOf(code: GrpcStatus): CaFailureKind {
  if (code === GrpcStatus.UNAUTHENTICATED || code === GrpcStatus.PERMISSION_DENIED) return 'refused';
  return RETRYABLE_CA_CODES.has(code) ? 'retryable' : 'final';
}

/** A failed gRPC CA call: the gRPC status and details the CA (or the channel) reported. */
export class CaCallError extends CaFailure {
  readonly code: GrpcStatus;

  constructor(code: GrpcStatus, details: string, options?: { cause?: unknown }) {
    super(kindOf(code), GrpcStatus[code] ?? String(code), details, {
      ...options,
      refusal: code === GrpcStatus.PERMISSION_DENIED ? 'permission_denied' : 'unauthenticated',
    });
    this.name = 'CaCallError';
    this.code = code;
  }
}

export { isRetryableCaError } from './cache/errors.js';
