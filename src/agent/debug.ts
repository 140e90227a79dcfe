/**
 * The agent's /debug/secrets view: what `meshca secrets` prints. It is built from the identity cache's snapshot
 * (cache/snapshot.ts), so it lists identities and public certificate data only: no key, no token, no PEM.
 */
import { createHash } from 'node:crypto';
import type { CacheSnapshot, IdentityState } from './cache/snapshot.js';

/** The SDS resource name a workload certificate is served as (node and sidecar mode alike). */
const WORKLOAD_RESOURCE = 'default';
const ROOT_RESOURCE = 'ROOTCA';

export interface SecretsReportIdentity {
  spiffeId: string;
  resourceNames: string[];
  /** Hex, as `openssl x509 -serial` prints it. */
  serial: string;
  issuer: string;
  notBefore: string;
  notAfter: string;
  /** When the agent will next ask the CA (its renewal time, or the retry after a failure); null when it will not. */
  nextRenewal: string | null;
  /** Open SDS streams (and the OUTPUT_CERTS writer) watching this identity. */
  streams: number;
  state: IdentityState;
  lastError: { message: string; at: string } | null;
}

export interface SecretsReportRoot {
  subject: string;
  notAfter: string;
  /** SHA-256 of the certificate's DER, colon-separated hex (as `openssl x509 -fingerprint -sha256` prints it). */
  fingerprintSha256: string;
}

export interface SecretsReport {
  /** The agent's clock when the report was made. */
  time: string;
  identities: SecretsReportIdentity[];
  trustBundle: { resourceName: string; roots: SecretsReportRoot[] } | null;
  /** The latest first issuances that failed (a workload that got no certificate), newest last. */
  recentFailures: { credential: string; code: string; message: string; at: string }[];
}

const iso = (ms: number): string => new Date(ms).toISOString();

function fingerprint(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex').toUpperCase().match(/../g)!.join(':');
}

export function secretsReport(snapshot: CacheSnapshot): SecretsReport {
  return {
    time: iso(snapshot.at),
    identities: snapshot.identities.map((entry) => ({
      spiffeId: entry.identity,
      resourceNames: [WORKLOAD_RESOURCE],
      serial: entry.leaf.serialHex,
      issuer: entry.leaf.issuer,
      notBefore: entry.leaf.notBefore.toISOString(),
      notAfter: entry.leaf.notAfter.toISOString(),
      nextRenewal: entry.nextRenewalAt === null ? null : iso(entry.nextRenewalAt),
      streams: entry.streams,
      state: entry.state,
      lastError: entry.lastError && { message: entry.lastError.message, at: iso(entry.lastError.at) },
    })),
    trustBundle: snapshot.roots && {
      resourceName: ROOT_RESOURCE,
      roots: snapshot.roots.map((root) => ({ subject: root.subject, notAfter: root.notAfter.toISOString(), fingerprintSha256: fingerprint(root.der) })),
    },
    recentFailures: snapshot.recentFailures.map((failure) => ({ ...failure, at: iso(failure.at) })),
  };
}
