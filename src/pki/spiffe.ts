/** SPIFFE IDs (spiffe://<trust-domain>/<path>) and Istio's workload form .../ns/<ns>/sa/<sa>. */
import { PkiError } from './errors.js';

export interface SpiffeId {
  trustDomain: string;
  /** Path with its leading slash, '' for a trust-domain ID. */
  path: string;
}

export interface WorkloadIdentity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

const SCHEME = 'spiffe://';
const MAX_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN_BYTES = 255;
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;

function fail(message: string): never {
  throw new PkiError('ERR_SPIFFE_ID', message);
}

export function validateTrustDomain(trustDomain: string): string {
  if (trustDomain.length === 0) fail('SPIFFE trust domain is empty');
  if (Buffer.byteLength(trustDomain) > MAX_TRUST_DOMAIN_BYTES) fail('SPIFFE trust domain is longer than 255 bytes');
  if (!TRUST_DOMAIN_CHARS.test(trustDomain)) {
    fail(`SPIFFE trust domain "${trustDomain}" may contain only lowercase letters, digits, ".", "-" and "_"`);
  }
  return trustDomain;
}

/** Parses and validates by the SPIFFE ID rules; throws PkiError ERR_SPIFFE_ID with the broken rule. */
export function parseSpiffeId(text: string): SpiffeId {
  if (Buffer.byteLength(text) > MAX_ID_BYTES) fail('SPIFFE ID is longer than 2048 bytes');
  if (!text.startsWith(SCHEME)) fail(`"${truncate(text)}" is not a SPIFFE ID (must start with spiffe://)`);
  const rest = text.slice(SCHEME.length);
  if (/[?#]/.test(rest)) fail('SPIFFE ID must not have a query or fragment');
  const slash = rest.indexOf('/');
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  if (trustDomain.includes('@')) fail('SPIFFE ID must not have userinfo');
  if (trustDomain.includes(':')) fail('SPIFFE ID must not have a port');
  validateTrustDomain(trustDomain);
  const path = slash === -1 ? '' : rest.slice(slash);
  if (path !== '') {
    const segments = path.slice(1).split('/');
    for (const segment of segments) {
      if (segment === '') fail('SPIFFE ID path has an empty segment (or a trailing slash)');
      if (segment === '.' || segment === '..') fail('SPIFFE ID path must not contain "." or ".." segments');
      if (!SEGMENT_CHARS.test(segment)) {
        fail(`SPIFFE ID path segment "${truncate(segment)}" may contain only letters, digits, ".", "-" and "_"`);
      }
    }
  }
  return { trustDomain, path };
}

export function isSpiffeId(text: string): boolean {
  try {
    parseSpiffeId(text);
    return true;
  } catch {
    return false;
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const MAX_NAMESPACE_CHARS = 63;
const MAX_SERVICE_ACCOUNT_CHARS = 253;

/** A Kubernetes namespace name: an RFC 1123 label (lowercase alphanumerics and '-', at most 63 characters). */
export function isNamespaceName(name: string): boolean {
  return name.length <= MAX_NAMESPACE_CHARS && DNS_LABEL.test(name);
}

/** A Kubernetes service-account name: an RFC 1123 subdomain (dot-separated labels, at most 253 characters). */
export function isServiceAccountName(name: string): boolean {
  return name.length <= MAX_SERVICE_ACCOUNT_CHARS && name.split('.').every((label) => DNS_LABEL.test(label));
}

/**
 * An Istio workload identity, spiffe://<trust domain>/ns/<namespace>/sa/<service account>. The only way to make
 * one is `WorkloadId.of` (from parts) or `WorkloadId.parse` (from a URI), and both refuse any part that is not a
 * valid Kubernetes name, so a '/' in a namespace or service account can never add path segments.
 */
export class WorkloadId {
  /** The SPIFFE ID as written into a certificate's URI SAN. */
  readonly uri: string;

  private constructor(
    readonly trustDomain: string,
    readonly namespace: string,
    readonly serviceAccount: string,
  ) {
    this.uri = `${SCHEME}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  }

  /** Throws PkiError ERR_SPIFFE_ID naming the broken rule. */
  static of(parts: WorkloadIdentity): WorkloadId {
    validateTrustDomain(parts.trustDomain);
    if (!isNamespaceName(parts.namespace)) {
      fail(`namespace "${truncate(parts.namespace)}" is not a Kubernetes namespace name (an RFC 1123 label: a-z, 0-9 and "-", at most 63 characters)`);
    }
    if (!isServiceAccountName(parts.serviceAccount)) {
      fail(`service account "${truncate(parts.serviceAccount)}" is not a Kubernetes service-account name (an RFC 1123 subdomain: a-z, 0-9, "-" and ".", at most 253 characters)`);
    }
    return new WorkloadId(parts.trustDomain, parts.namespace, parts.serviceAccount);
  }

  /** Reads spiffe://<td>/ns/<ns>/sa/<sa>; throws PkiError ERR_SPIFFE_ID for anything else. */
  static parse(uri: string): WorkloadId {
    const { trustDomain, path } = parseSpiffeId(uri);
    const match = /^\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(path);
    if (!match) fail(`"${truncate(uri)}" is not of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>`);
    return WorkloadId.of({ trustDomain, namespace: match[1]!, serviceAccount: match[2]! });
  }

  equals(other: WorkloadId): boolean {
    return this.uri === other.uri;
  }

  toString(): string {
    return this.uri;
  }

  toJSON(): string {
    return this.uri;
  }
}

/** A workload identity the CA accepts as its own: `identity` is in the current trust domain. */
export interface AcceptedIdentity {
  identity: WorkloadId;
  /** Set when the identity was proven in an alias (a former trust domain): that identity's URI, for the audit. */
  migratedFrom?: string;
}

/**
 * Whether `identity` belongs to the CA's trust domain `current`, directly or through one of its `aliases` (Istio's
 * trustDomainAliases: the domains a mesh is migrating away from). An alias identity comes back as the same
 * namespace and service account in `current`, so the CA issues in the new trust domain only. Undefined for any
 * other trust domain.
 */
export function inTrustDomain(identity: WorkloadId, current: string, aliases: readonly string[]): AcceptedIdentity | undefined {
  if (identity.trustDomain === current) return { identity };
  if (!aliases.includes(identity.trustDomain)) return undefined;
  return { identity: WorkloadId.of({ trustDomain: current, namespace: identity.namespace, serviceAccount: identity.serviceAccount }), migratedFrom: identity.uri };
}

function truncate(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
