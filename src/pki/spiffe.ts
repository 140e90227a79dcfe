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

export function formatWorkloadId(identity: WorkloadIdentity): string {
  const id = `${SCHEME}${identity.trustDomain}/ns/${identity.namespace}/sa/${identity.serviceAccount}`;
  parseSpiffeId(id);
  return id;
}

/** Reads an Istio workload identity; null when the ID is valid SPIFFE but not of the ns/sa form. */
export function parseWorkloadId(text: string): WorkloadIdentity | null {
  const { trustDomain, path } = parseSpiffeId(text);
  const match = /^\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(path);
  return match ? { trustDomain, namespace: match[1]!, serviceAccount: match[2]! } : null;
}

function truncate(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
