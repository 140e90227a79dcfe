/**
 * A read-only picture of the identity cache at one moment, for people (the status server's /debug/secrets) and
 * opt-in metrics. It carries what the certificates say and what the cache is doing with them, never a key and
 * never a token: a credential appears only by its log-safe label.
 */
import type { ParsedCertificate } from '../../pki/index.js';

/** What the cache is doing with one identity. */
export type IdentityState =
  /** Holding a certificate and waiting for its renewal time. */
  | 'issued'
  /** A CSR for the renewal is on its way to the CA now. */
  | 'renewing'
  /** The last renewal attempt failed; the current certificate is still served and a retry is scheduled. */
  | 'failed';

export interface IdentitySnapshot {
  /** The SPIFFE ID(s) in the leaf's SAN, comma-joined when there are several. */
  readonly identity: string;
  /** The current leaf (public data only: the key stays in the cache). */
  readonly leaf: ParsedCertificate;
  /** Local clock, epoch ms: when the current certificate arrived. */
  readonly receivedAt: number;
  /**
   * When the next renewal attempt is due: the certificate's renewal time, or the retry time after a failure; null
   * when none is scheduled (no valid token is left: a workload has to reconnect).
   */
  readonly nextRenewalAt: number | null;
  /** When the certificate expires by the local clock (NotAfter unless this node's clock is off). */
  readonly expiresAt: number;
  /** Leases held now: SDS streams watching the identity, and the OUTPUT_CERTS writer in sidecar mode. */
  readonly streams: number;
  /** Distinct workload credentials (tokens, token file) that proved this identity and may renew it. */
  readonly credentials: number;
  readonly state: IdentityState;
  /** The last failed renewal, cleared by the next success. */
  readonly lastError: { readonly message: string; readonly at: number } | null;
}

/** A first issuance that failed: no identity was cached for it, so this is the only trace besides the log. */
export interface FailedIssuance {
  /** The credential's log-safe label, e.g. `token sha256:0123456789ab (claims ns/sa)`. */
  readonly credential: string;
  /** gRPC-like code of the error the caller got (unauthenticated, unavailable, ...). */
  readonly code: string;
  readonly message: string;
  readonly at: number;
}

export interface CacheSnapshot {
  /** Local clock, epoch ms. */
  readonly at: number;
  readonly identities: readonly IdentitySnapshot[];
  /** The roots of the current trust bundle (public certificates), or null before the first certificate. */
  readonly roots: readonly ParsedCertificate[] | null;
  /** The latest first-issuance failures, newest last (bounded: MAX_REMEMBERED_FAILURES). */
  readonly recentFailures: readonly FailedIssuance[];
}

/** First-issuance failures kept for the snapshot; older ones are forgotten (the log has them all). */
export const MAX_REMEMBERED_FAILURES = 20;
