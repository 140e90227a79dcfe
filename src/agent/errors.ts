/** Errors that end an SDS call: each carries the gRPC status the client sees and a message that names the cause. */
import { status as GrpcStatus } from '@grpc/grpc-js';

export class SdsError extends Error {
  readonly code: GrpcStatus;

  constructor(code: GrpcStatus, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SdsError';
    this.code = code;
  }

  /** The shape grpc-js turns into a status when emitted as 'error' on a server call. */
  toServiceError(): Error & { code: GrpcStatus; details: string } {
    return Object.assign(new Error(this.message), { code: this.code, details: this.message });
  }
}

/** A failed CA call: the gRPC status and details the CA (or the channel) reported. */
export class CaCallError extends Error {
  readonly code: GrpcStatus;
  readonly details: string;

  constructor(code: GrpcStatus, details: string, options?: { cause?: unknown }) {
    super(`${GrpcStatus[code] ?? code}: ${details}`, options);
    this.name = 'CaCallError';
    this.code = code;
    this.details = details;
  }
}

/** Istio's agent retries these; anything else is the CA's final word about this request. */
export const RETRYABLE_CA_CODES: ReadonlySet<GrpcStatus> = new Set([
  GrpcStatus.UNAVAILABLE,
  GrpcStatus.DEADLINE_EXCEEDED,
  GrpcStatus.INTERNAL,
  GrpcStatus.RESOURCE_EXHAUSTED,
]);

export function isRetryableCaError(error: unknown): boolean {
  return error instanceof CaCallError && RETRYABLE_CA_CODES.has(error.code);
}
