/**
 * Which workload is on an SDS stream. In node mode each Envoy sends its own service-account JWT in the gRPC
 * metadata `istio_sds_credentials_header-bin` (Envoy's file_based_metadata call credential) or as
 * `authorization: Bearer`; in sidecar mode the pod's token file is read for every CSR. The agent never decides an
 * identity itself: the CA verifies the token and writes the identity into the certificate.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Metadata } from '@grpc/grpc-js';

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

/** Reads a JWT's payload without checking anything: the CA does the checking. */
function unverifiedClaims(token: string): UnverifiedClaims | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as unknown;
    return payload !== null && typeof payload === 'object' ? (payload as UnverifiedClaims) : null;
  } catch {
    return null;
  }
}

function accountFromSubject(sub: unknown): { namespace: string; serviceAccount: string } | null {
  if (typeof sub !== 'string') return null;
  const parts = sub.split(':');
  if (parts.length !== 4 || parts[0] !== 'system' || parts[1] !== 'serviceaccount') return null;
  return { namespace: parts[2]!, serviceAccount: parts[3]! };
}

/** A token presented on a stream. Its key is a hash, so the token itself is kept only inside the closure. */
export function tokenCredential(token: string): WorkloadCredential {
  const digest = createHash('sha256').update(token).digest('hex');
  const claims = unverifiedClaims(token);
  const account = accountFromSubject(claims?.sub);
  const expiresAt = typeof claims?.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  return {
    key: `token:${digest}`,
    label: `token sha256:${digest.slice(0, 12)}${account ? ` (claims ${account.namespace}/${account.serviceAccount})` : ''}`,
    read: () => Promise.resolve(token),
    expiresAt,
    revocable: true,
    claimedAccount: account,
  };
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

export type TokenLookup = { token: string } | { problem: string } | null;

/** The workload token in a stream's metadata; null when there is none, `problem` when it is malformed. */
export function tokenFromMetadata(metadata: Metadata): TokenLookup {
  const binary = metadata.get(SDS_TOKEN_HEADER);
  if (binary.length > 0) {
    const value = binary[0]!;
    const token = (typeof value === 'string' ? value : value.toString('utf8')).trim();
    if (token === '') return { problem: `metadata ${SDS_TOKEN_HEADER} is empty` };
    return { token };
  }
  const authorization = metadata.get('authorization');
  if (authorization.length > 0) {
    const value = String(authorization[0]);
    if (!value.startsWith('Bearer ')) return { problem: 'metadata authorization is not of the form "Bearer <token>"' };
    const token = value.slice('Bearer '.length).trim();
    if (token === '') return { problem: 'metadata authorization carries an empty Bearer token' };
    return { token };
  }
  return null;
}
