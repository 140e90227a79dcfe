/**
 * Which workload is on an SDS stream. In node mode each Envoy sends its own service-account JWT in the gRPC
 * metadata `istio_sds_credentials_header-bin` (Envoy's file_based_metadata call credential) or as
 * `authorization: Bearer`; in sidecar mode the pod's token file is read for every CSR. The agent never decides an
 * identity itself: the CA verifies the token and writes the identity into the certificate.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

export const SDS_TOKEN_HEADER = 'istio_sds_credentials_header-bin';

export interface WorkloadCredential {
  /** Equal keys mean the same proof (the same token, or the same token file). */
  readonly key: string;
  /** Safe for logs: never the token itself. */
  readonly label: string;
  /** The token to send to the CA now; undefined sends no authorization header. */
  read(): Promise<string | undefined>;
  /** Epoch ms after which this credential proves nothing (the JWT's exp), or null when unknown. */
  readonly expiresAt: number | null;
  /**
   * True for a token presented on a stream: once the CA refuses it, the streams relying on it are ended so the
   * client reconnects with a fresh one. A token file is re-read instead, so it is never revoked.
   */
  readonly revocable: boolean;
  /** Namespace and service account claimed by the (unverified) token: only a hint for the CSR's SAN. */
  readonly claimedAccount: { namespace: string; serviceAccount: string } | null;
}

interface UnverifiedClaims {
  exp?: unknown;
  sub?: unknown;
}

/**
 * The largest workload token the agent looks at. Kubernetes projected tokens are ~1-2 KiB; OIDC tokens with many
 * claims stay well below this. Anything larger is refused before it is decoded.
 */
export const MAX_TOKEN_BYTES = 16 * 1024;
/** The most metadata entries an SDS call may carry (Envoy sends a handful). */
export const MAX_METADATA_ENTRIES = 64;
/** The most bytes of all metadata keys and values of an SDS call together (the token is one of them). */
export const MAX_METADATA_BYTES = 32 * 1024;

const BASE64URL_PART = /^[A-Za-z0-9_-]+$/;

/** A JSON object, or null: a JWT part that is not one is not a JWT. */
function jsonObjectPart(part: string): Record<string, unknown> | null {
  // base64url without padding: a length of 1 mod 4 cannot come from any byte string.
  if (!BASE64URL_PART.test(part) || part.length % 4 === 1) return null;
  try {
    const value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as unknown;
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** Reads a JWT's payload without checking anything: the CA does the checking. */
function unverifiedClaims(token: string): UnverifiedClaims | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  return jsonObjectPart(parts[1]!);
}

function accountFromSubject(sub: unknown): { namespace: string; serviceAccount: string } | null {
  if (typeof sub !== 'string') return null;
  const parts = sub.split(':');
  if (parts.length !== 4 || parts[0] !== 'system' || parts[1] !== 'serviceaccount') return null;
  return { namespace: parts[2]!, serviceAccount: parts[3]! };
}

export type TokenCheck = { credential: WorkloadCredential } | { problem: string };

/**
 * A token presented on a stream, checked for what the agent can check alone before it spends anything on it: a
 * JWT of at most MAX_TOKEN_BYTES (three base64url parts, a JSON object header with an `alg` and a JSON object
 * payload) with a numeric `exp` that is still in the future at `now`. Its signature is the CA's to verify.
 * The credential's key is a hash, so the token itself is kept only inside the closure.
 */
export function checkWorkloadToken(token: string, now: number): TokenCheck {
  const bytes = Buffer.byteLength(token);
  if (bytes > MAX_TOKEN_BYTES) return { problem: `the workload token is ${bytes} bytes; at most ${MAX_TOKEN_BYTES} are accepted` };
  const parts = token.split('.');
  if (parts.length !== 3) return { problem: `the workload token is not a JWT (${parts.length} dot-separated part(s), expected 3)` };
  const header = jsonObjectPart(parts[0]!);
  if (!header || typeof header.alg !== 'string') return { problem: 'the workload token is not a JWT (its header is not a base64url JSON object with "alg")' };
  const claims = jsonObjectPart(parts[1]!);
  if (!claims) return { problem: 'the workload token is not a JWT (its payload is not a base64url JSON object)' };
  if (!BASE64URL_PART.test(parts[2]!) || parts[2]!.length % 4 === 1) return { problem: 'the workload token is not a JWT (its signature is not base64url)' };
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) {
    return { problem: 'the workload token has no numeric "exp" claim; use a bound (projected) service-account token, which expires' };
  }
  const expiresAt = claims.exp * 1000;
  const digest = createHash('sha256').update(token).digest('hex');
  const account = accountFromSubject(claims.sub);
  const label = `token sha256:${digest.slice(0, 12)}${account ? ` (claims ${account.namespace}/${account.serviceAccount})` : ''}`;
  if (expiresAt <= now) return { problem: `the workload token (${label}) expired at ${new Date(expiresAt).toISOString()}; send a fresh token` };
  return {
    credential: {
      key: `token:${digest}`,
      label,
      read: () => Promise.resolve(token),
      expiresAt,
      revocable: true,
      claimedAccount: account,
    },
  };
}

/** checkWorkloadToken for callers that hold a token known to be well formed; throws with the problem otherwise. */
export function tokenCredential(token: string, now: number = Date.now()): WorkloadCredential {
  const checked = checkWorkloadToken(token, now);
  if ('problem' in checked) throw new Error(checked.problem);
  return checked.credential;
}

/** Sidecar mode: the projected token file, re-read for every CSR because the kubelet rotates it. */
export function tokenFileCredential(file: string): WorkloadCredential {
  const resolved = path.resolve(file);
  let claimedAccount: WorkloadCredential['claimedAccount'] = null;
  return {
    key: `file:${resolved}`,
    label: `token file ${file}`,
    async read() {
      let text: string;
      try {
        text = (await fs.readFile(resolved, 'utf8')).trim();
      } catch (error) {
        // Istio sends no header when the file is missing; the CA may still accept other proof.
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw error;
      }
      claimedAccount = accountFromSubject(unverifiedClaims(text)?.sub);
      return text === '' ? undefined : text;
    },
    expiresAt: null,
    revocable: false,
    get claimedAccount() {
      return claimedAccount;
    },
  };
}

/** The part of a call's metadata the token lookup reads (grpc-js's Metadata has this shape). */
export interface CallMetadata {
  toJSON(): Record<string, (string | Buffer)[]>;
  get(name: string): (string | Buffer)[];
}

export type TokenLookup = { token: string } | { problem: string; code: 'UNAUTHENTICATED' | 'INVALID_ARGUMENT' } | null;

/** Bytes of one metadata value as received (binary values are Buffers), without copying it. */
function valueBytes(value: string | Buffer): number {
  return typeof value === 'string' ? Buffer.byteLength(value) : value.length;
}

/**
 * The workload token in a stream's metadata; null when there is none, `problem` when it is malformed. The metadata
 * is bounded first (entries, bytes, one token value), so an oversize header is refused before it is read.
 */
export function tokenFromMetadata(metadata: CallMetadata): TokenLookup {
  const map = metadata.toJSON();
  let entries = 0;
  let bytes = 0;
  for (const [name, values] of Object.entries(map)) {
    entries += values.length;
    for (const value of values) bytes += name.length + valueBytes(value);
  }
  if (entries > MAX_METADATA_ENTRIES) {
    return { problem: `the call carries ${entries} metadata entries; at most ${MAX_METADATA_ENTRIES} are accepted`, code: 'INVALID_ARGUMENT' };
  }
  if (bytes > MAX_METADATA_BYTES) {
    return { problem: `the call's metadata is ${bytes} bytes; at most ${MAX_METADATA_BYTES} are accepted`, code: 'INVALID_ARGUMENT' };
  }
  const binary = metadata.get(SDS_TOKEN_HEADER);
  const authorization = metadata.get('authorization');
  if (binary.length + authorization.length > 1) {
    return {
      problem: `the call carries ${binary.length + authorization.length} workload tokens (${SDS_TOKEN_HEADER} and/or authorization); send exactly one`,
      code: 'UNAUTHENTICATED',
    };
  }
  if (binary.length > 0) {
    const value = binary[0]!;
    if (valueBytes(value) > MAX_TOKEN_BYTES) {
      return { problem: `metadata ${SDS_TOKEN_HEADER} is ${valueBytes(value)} bytes; at most ${MAX_TOKEN_BYTES} are accepted`, code: 'UNAUTHENTICATED' };
    }
    const token = (typeof value === 'string' ? value : value.toString('utf8')).trim();
    if (token === '') return { problem: `metadata ${SDS_TOKEN_HEADER} is empty`, code: 'UNAUTHENTICATED' };
    return { token };
  }
  if (authorization.length > 0) {
    const raw = authorization[0]!;
    if (valueBytes(raw) > MAX_TOKEN_BYTES + 'Bearer '.length) {
      return { problem: `metadata authorization is ${valueBytes(raw)} bytes; at most ${MAX_TOKEN_BYTES} are accepted for the token`, code: 'UNAUTHENTICATED' };
    }
    const value = String(raw);
    if (!value.startsWith('Bearer ')) return { problem: 'metadata authorization is not of the form "Bearer <token>"', code: 'UNAUTHENTICATED' };
    const token = value.slice('Bearer '.length).trim();
    if (token === '') return { problem: 'metadata authorization carries an empty Bearer token', code: 'UNAUTHENTICATED' };
    return { token };
  }
  return null;
}
