/**
 * `istio.v1.auth.IstioCertificateService/CreateCertificate`: limits, authentication, optional node impersonation,
 * per-identity rate limit, issuance (`CertificateAuthority.issue`: policy, signing, final check), metrics and the
 * audit line.
 * Every failure is a gRPC status with a message a user can act on; the process never dies on a bad request.
 */
import * as grpc from '@grpc/grpc-js';
import { AuthenticationError, type AuthRequest, type AuthenticatorChain, type Caller, type NodeImpersonation } from '../authn/index.js';
import { CaError, CsrParseError, formatSeconds, WithheldChainError, type CaErrorCode, type CertificateAuthority, type IssueResult } from '../ca/index.js';
import type { Logger } from '../log.js';
import type { WorkloadId } from '../pki/index.js';
import { structToObject, type IstioCaHandlers, type IstioCertificateRequest } from '../wire/protos.js';
import { once } from '../util/once.js';
import type { DecisionRecord } from './decisions.js';
import type { CaMetrics } from './metrics.js';
import type { PerIdentityRateLimiter } from './rate-limit.js';

export const MAX_CSR_BYTES = 64 * 1024;
const NON_BLANK = /\S/;
export const MAX_METADATA_KEYS = 64;
export const MAX_RECEIVE_MESSAGE_BYTES = 1024 * 1024;
/** Kubernetes service-account tokens are 1-2 KiB; anything this large is refused before any API call. */
export const MAX_BEARER_TOKEN_BYTES = 16 * 1024;
/** The clusterid header names a cluster of --kubeconfig/remote secrets; anything longer is not one. */
export const MAX_CLUSTER_ID_BYTES = 1024;
/**
 * Request headers (gRPC metadata) as a whole, counted like HPACK's header-list size (name + value + 32 per entry):
 * room for the largest accepted token plus ordinary headers. Node's HTTP/2 layer only refuses much later (a header
 * field over 64 KiB encoded, or over 128 fields), and grpc-js does not implement grpc.max_metadata_size.
 */
export const MAX_REQUEST_METADATA_BYTES = 32 * 1024;
export const MAX_REQUEST_METADATA_ENTRIES = 64;
/**
 * A status message travels as the grpc-message trailer, percent-encoded (up to 9 bytes per character); grpc-js
 * clients hang instead of failing when response metadata passes 64 KiB (grpc/grpc-node#2399), so a message that
 * quotes hostile input is cut well below that.
 */
export const MAX_STATUS_MESSAGE_CHARS = 4096;
/** Istio's message when an ImpersonatedIdentity request is refused. */
export const IMPERSONATION_FAILURE = 'request impersonation authentication failure';

const STATUS_FOR_CODE: Record<CaErrorCode, grpc.status> = {
  CSR_ERROR: grpc.status.INVALID_ARGUMENT,
  TTL_ERROR: grpc.status.INVALID_ARGUMENT,
  UPSTREAM_REJECTED: grpc.status.INVALID_ARGUMENT,
  CA_NOT_READY: grpc.status.INTERNAL,
  CERT_GEN_ERROR: grpc.status.INTERNAL,
  UPSTREAM_UNAVAILABLE: grpc.status.UNAVAILABLE,
  UPSTREAM_DENIED: grpc.status.PERMISSION_DENIED,
};

export function grpcStatusForCaError(code: CaErrorCode): grpc.status {
  return STATUS_FOR_CODE[code];
}

export interface CaServiceDeps {
  authority: CertificateAuthority;
  authenticators: AuthenticatorChain;
  impersonation: NodeImpersonation;
  metrics: CaMetrics;
  logger: Logger;
  /** --max-csr-per-identity-per-minute; no limit when omitted. */
  rateLimiter?: PerIdentityRateLimiter;
  /** MAX_WORKLOAD_CERT_TTL, for the message about a validity_duration too large for a JS number. */
  maxTtlSeconds?: number;
  /** Recent decisions for /debug/decisions; nothing is recorded when omitted. */
  decisions?: DecisionRecord;
}

/** How far one call got, filled in as it goes: what the decision record says of it however it ends. */
export interface CallProgress {
  clientAddress?: string;
  caller?: Caller;
  identity?: WorkloadId;
  /** An ImpersonatedIdentity asked for, before it is authorized. */
  requestedIdentity?: string;
  impersonated?: boolean;
  issued?: IssueResult;
}

/** Tracks calls being handled, so shutdown can wait for them. */
export class InFlightCalls {
  private count = 0;
  private waiters: (() => void)[] = [];

  get size(): number {
    return this.count;
  }

  enter(): () => void {
    this.count++;
    return once(() => {
      this.count--;
      if (this.count === 0) for (const resolve of this.waiters.splice(0)) resolve();
    });
  }

  idle(): Promise<void> {
    return this.count === 0 ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }
}

class RequestError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

function serviceError(code: grpc.status, details: string): Partial<grpc.StatusObject> {
  const bounded = details.length > MAX_STATUS_MESSAGE_CHARS ? `${details.slice(0, MAX_STATUS_MESSAGE_CHARS - 3)}...` : details;
  return { code, details: bounded, metadata: new grpc.Metadata() };
}

function authRequestFrom(call: grpc.ServerUnaryCall<IstioCertificateRequest, unknown>): AuthRequest {
  const metadata = call.metadata;
  let peerCertificateDer: Buffer | undefined;
  try {
    const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
    if (raw && raw.length > 0) peerCertificateDer = raw;
  } catch {
    peerCertificateDer = undefined;
  }
  return {
    header(name: string): string | undefined {
      const value = metadata.get(name)[0];
      return typeof value === 'string' ? value : undefined;
    },
    ...(peerCertificateDer ? { peerCertificateDer } : {}),
  };
}

function checkLimits(request: IstioCertificateRequest): void {
  if (Buffer.byteLength(request.csr) > MAX_CSR_BYTES) {
    throw new RequestError(grpc.status.INVALID_ARGUMENT, `CSR is larger than the ${MAX_CSR_BYTES / 1024} KiB limit`);
  }
  // A test, not trim(): trim() copies the whole CSR text on every request to find it is not blank.
  if (!NON_BLANK.test(request.csr)) throw new RequestError(grpc.status.INVALID_ARGUMENT, 'CSR error: the request has no CSR');
  const keys = Object.keys(request.metadata?.fields ?? {}).length;
  if (keys > MAX_METADATA_KEYS) {
    throw new RequestError(grpc.status.INVALID_ARGUMENT, `metadata has ${keys} keys; at most ${MAX_METADATA_KEYS} are allowed`);
  }
}

/**
 * validity_duration is an int64 sent in decimal. Past 2^53 a JS number rounds it, so the refusal would name a TTL
 * the caller never sent: such values are refused here, quoting the request.
 */
function requestedTtlSeconds(text: string, maxTtlSeconds: number | undefined): number {
  const seconds = Number(text);
  if (seconds > Number.MAX_SAFE_INTEGER) {
    const limit = maxTtlSeconds === undefined ? '' : ` ${formatSeconds(maxTtlSeconds)}`;
    throw new RequestError(grpc.status.INVALID_ARGUMENT, `CSR signing error (requested TTL ${text}s is greater than the max allowed TTL${limit})`);
  }
  return seconds;
}

/**
 * Bounds on the request headers, checked before any authentication work: the headers meshca reads one by one
 * (authorization, clusterid), then the metadata as a whole. Each refusal is prompt and names the limit.
 */
function checkMetadataBounds(call: grpc.ServerUnaryCall<IstioCertificateRequest, unknown>): void {
  checkTokenSize(call);
  const clusterId = call.metadata.get('clusterid')[0];
  if (clusterId !== undefined && clusterId.length > MAX_CLUSTER_ID_BYTES) {
    throw new RequestError(
      grpc.status.INVALID_ARGUMENT,
      `the clusterid header is ${Math.ceil(clusterId.length / 1024)} KiB; cluster IDs of at most ${MAX_CLUSTER_ID_BYTES} bytes are accepted`,
    );
  }
  let entries = 0;
  let bytes = 0;
  for (const [key, values] of Object.entries(call.metadata.toJSON())) {
    entries += values.length;
    for (const value of values) bytes += key.length + value.length + 32;
  }
  if (entries > MAX_REQUEST_METADATA_ENTRIES) {
    throw new RequestError(grpc.status.INVALID_ARGUMENT, `the request has ${entries} metadata entries (headers); at most ${MAX_REQUEST_METADATA_ENTRIES} are accepted`);
  }
  if (bytes > MAX_REQUEST_METADATA_BYTES) {
    throw new RequestError(
      grpc.status.INVALID_ARGUMENT,
      `the request metadata (headers) is ${Math.ceil(bytes / 1024)} KiB; at most ${MAX_REQUEST_METADATA_BYTES / 1024} KiB are accepted`,
    );
  }
}

/** A bearer token far beyond any real one is refused before it is sent to an API server or parsed. */
function checkTokenSize(call: grpc.ServerUnaryCall<IstioCertificateRequest, unknown>): void {
  const authorization = call.metadata.get('authorization')[0];
  if (typeof authorization === 'string' && authorization.length > MAX_BEARER_TOKEN_BYTES) {
    throw new RequestError(
      grpc.status.UNAUTHENTICATED,
      `request authenticate failure: the authorization header is ${Math.ceil(authorization.length / 1024)} KiB; bearer tokens of at most ${MAX_BEARER_TOKEN_BYTES / 1024} KiB are accepted`,
    );
  }
}

/**
 * CreateCertificate, in one direction: bounds, authentication, the per-identity rate limit (before any further API
 * call or signing is spent on the caller), the identity asked for (impersonation), issuance (policy, key source and final check, all in `authority.issue`), then the
 * answer, the metrics and the audit line. Resolves to the chain; rejects with a RequestError carrying the status.
 */
export async function createCertificate(call: IncomingCall, deps: CaServiceDeps, progress: CallProgress = {}): Promise<string[]> {
  const { authority, metrics, logger } = deps;
  const request = call.request;
  const clientAddress = call.getPeer();
  progress.clientAddress = clientAddress;
  checkMetadataBounds(call);
  checkLimits(request);
  const requestedTtl = requestedTtlSeconds(String(request.validity_duration), deps.maxTtlSeconds);
  const caller = await authenticate(call, deps, clientAddress);
  progress.caller = caller;
  progress.identity = caller.identity;
  takeRateToken(caller, deps, clientAddress);
  const { identity, impersonated, migratedFrom } = await authorizeIdentity(caller, structToObject(request.metadata), deps, clientAddress, progress);
  progress.identity = identity;
  progress.impersonated = impersonated;
  const started = process.hrtime.bigint();
  let issued: IssueResult;
  try {
    // A renewal by client certificate gets at most DEFAULT_WORKLOAD_CERT_TTL (shortened, not refused, so an
    // istio-agent asking for a longer SECRET_TTL keeps working); tokens may ask up to MAX_WORKLOAD_CERT_TTL.
    issued = await authority.issue({ csrPem: request.csr, identity, requestedTtlSeconds: requestedTtl, capAtDefaultTtl: caller.authenticator === 'client-cert' });
  } catch (error) {
    throw issuanceRefused(error, caller, identity, deps, clientAddress);
  }
  progress.issued = issued;
  metrics.signDuration.observe(Number(process.hrtime.bigint() - started) / 1e9);
  metrics.successfulIssuance.inc();
  logger.info(
    {
      audit: true,
      caller: caller.subject,
      callerIdentity: caller.identity.uri,
      authenticator: caller.authenticator,
      ...(caller.kubernetes ? { cluster: caller.kubernetes.clusterId } : {}),
      spiffeId: identity.uri,
      // Proven in a trust-domain alias and issued in the current trust domain: once no line says so, the alias can go.
      ...(migratedFrom ? { migratedFrom } : {}),
      impersonated,
      serial: issued.serialHex,
      notAfter: issued.notAfter.toISOString(),
      ttlSeconds: issued.ttlSeconds,
      ...(issued.ttlCappedFromSeconds !== undefined ? { ttlCappedFromSeconds: issued.ttlCappedFromSeconds } : {}),
      clientAddress,
    },
    'certificate issued',
  );
  return issued.chain;
}

type IncomingCall = grpc.ServerUnaryCall<IstioCertificateRequest, unknown>;

async function authenticate(call: IncomingCall, deps: CaServiceDeps, clientAddress: string): Promise<Caller> {
  try {
    return await deps.authenticators.authenticate(authRequestFrom(call));
  } catch (error) {
    if (!(error instanceof AuthenticationError)) throw error;
    deps.metrics.authenticationFailures.inc();
    deps.logger.info({ clientAddress, reason: error.message }, 'CSR request refused: authentication failed');
    throw new RequestError(error.kind === 'unavailable' ? grpc.status.UNAVAILABLE : grpc.status.UNAUTHENTICATED, error.message);
  }
}

/** The identity to issue for: the caller's own, or one it may impersonate (a trusted node agent for its pods). */
async function authorizeIdentity(
  caller: Caller,
  metadata: Record<string, unknown>,
  deps: CaServiceDeps,
  clientAddress: string,
  progress: CallProgress,
): Promise<{ identity: WorkloadId; impersonated: boolean; migratedFrom?: string }> {
  // CertSigner (sent by every istio-agent, usually empty) names an external signer in istiod; like istiod's own
  // CA, this CA signs every request itself, so the value is only logged.
  if (typeof metadata.CertSigner === 'string' && metadata.CertSigner !== '') {
    deps.logger.debug({ clientAddress, certSigner: metadata.CertSigner }, 'CertSigner metadata ignored: this CA signs itself');
  }
  const requested = metadata.ImpersonatedIdentity;
  if (requested === undefined || requested === null || requested === '') {
    return { identity: caller.identity, impersonated: false, ...(caller.migratedFrom ? { migratedFrom: caller.migratedFrom } : {}) };
  }
  // A refusal is recorded against the identity asked for (cut to length by the record), not the node agent's own.
  if (typeof requested === 'string') progress.requestedIdentity = requested;
  const refuse = (code: grpc.status, reason: string): RequestError => {
    deps.metrics.authenticationFailures.inc();
    const message = `${IMPERSONATION_FAILURE}: ${reason}`;
    deps.logger.info({ clientAddress, caller: caller.subject, reason: message }, 'CSR request refused: impersonation not allowed');
    return new RequestError(code, message);
  };
  if (typeof requested !== 'string') throw refuse(grpc.status.UNAUTHENTICATED, 'ImpersonatedIdentity must be a string');
  const verdict = await deps.impersonation.authorize(caller, requested);
  if (verdict.kind === 'ok') return { identity: verdict.identity, impersonated: true, ...(verdict.migratedFrom ? { migratedFrom: verdict.migratedFrom } : {}) };
  throw refuse(verdict.kind === 'unavailable' ? grpc.status.UNAVAILABLE : grpc.status.UNAUTHENTICATED, verdict.reason);
}

/** Limited per proven identity. */
function takeRateToken(caller: Caller, deps: CaServiceDeps, clientAddress: string): void {
  const { rateLimiter } = deps;
  const rateKey = caller.identity.uri;
  if (!rateLimiter || rateLimiter.take(rateKey)) return;
  deps.metrics.rateLimited.inc();
  deps.logger.info({ clientAddress, caller: rateKey, perMinute: rateLimiter.perMinute }, 'CSR request refused: rate limit');
  throw new RequestError(
    grpc.status.RESOURCE_EXHAUSTED,
    `rate limit exceeded for ${rateKey}: at most ${rateLimiter.perMinute} certificate requests per minute per identity (--max-csr-per-identity-per-minute); retry later`,
  );
}

/** A CaError from issuance as the caller's status; a withheld chain is the key source's fault and said loudly. */
function issuanceRefused(error: unknown, caller: Caller, identity: WorkloadId, deps: CaServiceDeps, clientAddress: string): unknown {
  if (!(error instanceof CaError)) return error;
  if (error instanceof WithheldChainError) {
    deps.metrics.issuedChainRejected.inc();
    deps.logger.error({ clientAddress, caller: caller.subject, spiffeId: identity.uri, err: error.message }, 'withholding a signed certificate that failed the final check');
  }
  if (error instanceof CsrParseError) deps.metrics.csrParsingErrors.inc();
  deps.metrics.signErrors.inc({ error: error.code });
  deps.logger.info({ clientAddress, caller: caller.subject, code: error.code, reason: error.message }, 'CSR request refused: signing failed');
  return new RequestError(grpcStatusForCaError(error.code), error.message);
}

/**
 * The one place every answer passes (the audit line and each refusal line are written on the way here): the
 * decision record gets what the call got as far as, without the token, the CSR or any key.
 */
function recordDecision(deps: CaServiceDeps, progress: CallProgress, code: grpc.status, reason?: string): void {
  if (!deps.decisions) return;
  const { caller, issued } = progress;
  deps.decisions.add({
    outcome: issued && code === grpc.status.OK ? 'issued' : 'refused',
    code: grpc.status[code] ?? String(code),
    identity: progress.impersonated || !progress.requestedIdentity ? progress.identity?.uri : progress.requestedIdentity,
    caller: caller?.subject,
    callerKind: caller?.authenticator,
    impersonated: progress.requestedIdentity !== undefined,
    reason,
    serial: issued?.serialHex,
    notAfter: issued?.notAfter,
    clientAddress: progress.clientAddress ?? 'unknown',
  });
}

/** The gRPC service: CreateCertificate with the in-flight count (for shutdown) and the mapping of errors to statuses. */
export function createCaHandlers(deps: CaServiceDeps, inFlight: InFlightCalls): IstioCaHandlers {
  return {
    CreateCertificate(call, callback) {
      deps.metrics.csrCount.inc();
      const leave = inFlight.enter();
      const progress: CallProgress = {};
      createCertificate(call, deps, progress)
        .then((chain) => {
          recordDecision(deps, progress, grpc.status.OK);
          callback(null, { cert_chain: chain });
        })
        .catch((error: unknown) => {
          if (error instanceof RequestError) {
            recordDecision(deps, progress, error.code, error.message);
            callback(serviceError(error.code, error.message));
            return;
          }
          deps.logger.error({ err: (error as Error)?.stack ?? String(error) }, 'unexpected error while handling CreateCertificate');
          recordDecision(deps, progress, grpc.status.INTERNAL, 'internal error in the CA; see its logs');
          callback(serviceError(grpc.status.INTERNAL, 'internal error in the CA; see its logs'));
        })
        .finally(leave);
    },
  };
}
