/**
 * What every authenticator sees and returns. Transport details (gRPC metadata, TLS sockets) are reduced to a
 * small request view so the authenticators can be tested and reused without a server.
 */
import { isNamespaceName, isServiceAccountName, type WorkloadId } from '../pki/index.js';

export type AuthenticatorName = 'client-cert' | 'tokenreview' | 'jwt';

/** The Kubernetes facts about a caller, when an authenticator learned them. */
export interface KubernetesCaller {
  clusterId: string;
  namespace: string;
  serviceAccount: string;
  /** From TokenReview `extra` (or the token's `kubernetes.io.pod` claim): the caller's own pod. */
  podName?: string;
  podUid?: string;
}

/** An authenticated caller. */
export interface Caller {
  authenticator: AuthenticatorName;
  /**
   * The workload identity the caller proved; the issued certificate carries exactly this one URI SAN. A
   * WorkloadId can only be made by WorkloadId.of/parse, so no authenticator can format one from a raw string.
   */
  identity: WorkloadId;
  /** Who the caller is, for the audit log: a Kubernetes username, a JWT subject, or the client cert's URI SAN. */
  subject: string;
  kubernetes?: KubernetesCaller;
  /**
   * The identity the caller proved, when it was in one of the CA's trust-domain aliases and `identity` is the same
   * workload moved to the current trust domain (a trust-domain migration); for the audit line.
   */
  migratedFrom?: string;
}

/** The parts of a request authenticators look at. */
export interface AuthRequest {
  /** A request header (gRPC metadata key, lower-case); the first value when repeated. */
  header(name: string): string | undefined;
  /** DER of the client certificate, present only when the TLS layer verified it against our roots. */
  peerCertificateDer?: Buffer;
}

/**
 * The outcome of one authenticator:
 * - `ok`: the caller is authenticated;
 * - `skip`: the request carries nothing this authenticator understands (e.g. no client certificate);
 * - `denied`: the credential is wrong (the caller's fault; reason is shown to the caller);
 * - `unavailable`: the credential could not be checked (our fault or a dependency's; fail closed, retryable).
 */
export type AuthOutcome =
  | { kind: 'ok'; caller: Caller }
  | { kind: 'skip'; reason: string }
  | { kind: 'denied'; reason: string }
  | { kind: 'unavailable'; reason: string };

export interface Authenticator {
  readonly name: AuthenticatorName;
  authenticate(request: AuthRequest): Promise<AuthOutcome>;
}

/** Why authentication as a whole failed: the gRPC layer maps `unavailable` to UNAVAILABLE, `denied` to UNAUTHENTICATED. */
export class AuthenticationError extends Error {
  constructor(
    readonly kind: 'denied' | 'unavailable',
    message: string,
  ) {
    super(message);
    this.name = 'AuthenticationError';
  }
}

const SERVICE_ACCOUNT_PREFIX = 'system:serviceaccount:';

/** Whether a Kubernetes username claims to be a service account (and so must parse as one). */
export function isServiceAccountUsername(username: string): boolean {
  return username.startsWith(SERVICE_ACCOUNT_PREFIX);
}

/**
 * Splits `system:serviceaccount:<ns>:<sa>`; null for anything else: users, nodes, and names whose parts are not
 * Kubernetes names (a '/', an extra ':', upper case, empty or over-long parts), which no API server issues.
 */
export function parseServiceAccountUsername(username: string): { namespace: string; serviceAccount: string } | null {
  if (!isServiceAccountUsername(username)) return null;
  const parts = username.slice(SERVICE_ACCOUNT_PREFIX.length).split(':');
  if (parts.length !== 2) return null;
  const [namespace, serviceAccount] = parts as [string, string];
  if (!isNamespaceName(namespace) || !isServiceAccountName(serviceAccount)) return null;
  return { namespace, serviceAccount };
}

/** Istio's ExtractBearerToken: the value must start with exactly "Bearer " (capital B, one space). */
export function extractBearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined || !authorization.startsWith('Bearer ')) return undefined;
  const token = authorization.slice('Bearer '.length).trim();
  return token.length > 0 ? token : undefined;
}

/** At most `maxItems` values of at most `maxChars` characters each, JSON-quoted: a token's claims can be huge. */
export function boundedList(values: readonly unknown[], maxItems = 5, maxChars = 64): string {
  const shown = values.slice(0, maxItems).map((value) => {
    const text = typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
    return JSON.stringify(text.length > maxChars ? `${text.slice(0, maxChars - 3)}...` : text);
  });
  const more = values.length > maxItems ? `, ... (${values.length - maxItems} more)` : '';
  return `[${shown.join(', ')}${more}]`;
}

/** A token's `aud` claim as a list (RFC 7519 allows one string or an array). */
export function audiencesOf(aud: unknown): unknown[] {
  if (aud === undefined) return [];
  return Array.isArray(aud) ? aud : [aud];
}

/**
 * The refusal of a token whose audiences miss every audience the CA accepts, naming both (bounded) and the fix;
 * `setting` is where the accepted audiences come from (TOKEN_AUDIENCES, or a JWT_RULE's "audiences").
 */
export function audienceMismatch(tokenAud: unknown, accepted: readonly string[], setting: string): string {
  return (
    `the token's audiences ${boundedList(audiencesOf(tokenAud))} include none of the audiences the CA accepts ${boundedList(accepted)}: ` +
    `mint the token for one of them (a projected service-account token's audience) or add its audience to ${setting}`
  );
}
