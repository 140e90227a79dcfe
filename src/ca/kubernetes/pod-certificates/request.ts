/**
 * One PodCertificateRequest as the signer reads it, and the pure decisions about it: which key it carries (the
 * 1.36+ stub PKCS#10 request, or the 1.34/1.35 `pkixPublicKey` with a signature over the pod UID), whether this
 * signer takes that key, and the times written with an issued certificate. No I/O here.
 */
import { createPublicKey, constants, verify, X509Certificate, type KeyObject } from 'node:crypto';
import { encodePem } from '../../../pki/index.js';

export const PCR_GROUP = 'certificates.k8s.io';
export const PCR_PLURAL = 'podcertificaterequests';
/** Read through v1beta1 first: it carries both key encodings, so pre-1.36 kubelets are served too (KEP-4317 skew). */
export const PCR_VERSIONS = ['v1beta1', 'v1'] as const;
export type PcrVersion = (typeof PCR_VERSIONS)[number];

export const TERMINAL_CONDITIONS = ['Issued', 'Denied', 'Failed'] as const;

/** The API's bounds: the leaf's lifetime, the refresh window's margins, how far notBefore may be from now. */
export const MIN_LIFETIME_SECONDS = 3600;
export const REFRESH_MARGIN_SECONDS = 600;
export const MAX_NOT_BEFORE_SKEW_SECONDS = 300;
/** The default of spec.maxExpirationSeconds. */
export const DEFAULT_MAX_EXPIRATION_SECONDS = 86400;
/** Refresh once this share of the lifetime is left, as the agent does (SECRET_GRACE_PERIOD_RATIO's default). */
export const GRACE_PERIOD_RATIO = 0.5;

export interface PcrCondition {
  type?: string;
  status?: string;
  reason?: string;
  message?: string;
}

export interface PodCertificateRequest {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; uid?: string; resourceVersion?: string; [key: string]: unknown };
  spec?: {
    signerName?: string;
    podName?: string;
    podUID?: string;
    serviceAccountName?: string;
    nodeName?: string;
    maxExpirationSeconds?: number;
    pkixPublicKey?: string | null;
    proofOfPossession?: string | null;
    stubPKCS10Request?: string | null;
    unverifiedUserAnnotations?: Record<string, string> | null;
    [key: string]: unknown;
  };
  status?: {
    conditions?: PcrCondition[];
    certificateChain?: string;
    notBefore?: string;
    beginRefreshAt?: string;
    notAfter?: string;
  };
}

export function terminalCondition(pcr: PodCertificateRequest): string | undefined {
  for (const condition of pcr.status?.conditions ?? []) {
    if ((TERMINAL_CONDITIONS as readonly (string | undefined)[]).includes(condition.type) && condition.status === 'True') return condition.type;
  }
  return undefined;
}

export function pcrName(pcr: PodCertificateRequest): string {
  return `${pcr.metadata?.namespace ?? ''}/${pcr.metadata?.name ?? ''}`;
}

/** A refusal written to the PCR: Denied (the request is wrong) or Failed (the signer could not do it). */
export interface Refusal {
  type: 'Denied' | 'Failed';
  /** Matches the API's reason syntax: ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$ */
  reason: string;
  message: string;
}

export const SUPPORTED_KEY_TYPES = 'ECDSAP256, ECDSAP384, RSA3072 or RSA4096';

function unsupportedKey(what: string): Refusal {
  return {
    type: 'Denied',
    reason: 'UnsupportedKeyType',
    message: `this signer does not issue certificates for ${what} keys; set keyType of the podCertificate projected volume to ${SUPPORTED_KEY_TYPES}`,
  };
}

/** The key of the request: its SubjectPublicKeyInfo, and the CSR when the request has one. */
export type RequestKey = { kind: 'key'; spkiDer: Buffer; csrPem?: string } | { kind: 'refused'; refusal: Refusal };

function decodeBase64(value: string, field: string): Buffer | Refusal {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4 !== 0) {
    return { type: 'Denied', reason: 'InvalidRequest', message: `spec.${field} is not base64; the kubelet that created this request is broken` };
  }
  return Buffer.from(value, 'base64');
}

/** Which key types this signer issues for: the API's list (RSA 3072/4096, P-256/384/521, Ed25519) within meshca's policy. */
export function checkKeyType(key: KeyObject): Refusal | undefined {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec': {
      const curve = details.namedCurve;
      if (curve === 'prime256v1' || curve === 'secp384r1') return undefined;
      return unsupportedKey(curve === 'secp521r1' ? 'ECDSA P-521' : `ECDSA ${curve ?? 'unknown-curve'}`);
    }
    case 'rsa': {
      const bits = details.modulusLength ?? 0;
      if (bits === 3072 || bits === 4096) return undefined;
      return unsupportedKey(`RSA-${bits}`);
    }
    case 'ed25519':
      return unsupportedKey('Ed25519');
    default:
      return unsupportedKey(key.asymmetricKeyType ?? 'unknown');
  }
}

/**
 * The stub PKCS#10 request's public key. Only the key is used: the API server has verified the request's
 * signature, and the issuance pipeline checks it again.
 */
function spkiOfStub(csrDer: Buffer): Buffer | undefined {
  // CertificationRequest ::= SEQUENCE { info SEQUENCE { version, subject, spki, [0] attributes }, ... }
  const element = (buffer: Buffer, at: number): { start: number; end: number; next: number } | undefined => {
    if (at + 2 > buffer.length) return undefined;
    let length = buffer[at + 1]!;
    let header = 2;
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count < 1 || count > 3 || at + 2 + count > buffer.length) return undefined;
      length = buffer.readUIntBE(at + 2, count);
      header += count;
    }
    const end = at + header + length;
    return end > buffer.length ? undefined : { start: at + header, end, next: end };
  };
  const top = element(csrDer, 0);
  const info = top && element(csrDer, top.start);
  const version = info && element(csrDer, info.start);
  const subject = version && element(csrDer, version.next);
  const spki = subject && element(csrDer, subject.next);
  return spki ? csrDer.subarray(subject.next, spki.end) : undefined;
}

/** The proof of the legacy encoding: a signature over the ASCII pod UID (ECDSA and RSA-PSS over SHA-256, pure Ed25519). */
export function proofVerifies(key: KeyObject, podUid: string, proof: Buffer): boolean {
  const message = Buffer.from(podUid, 'ascii');
  try {
    switch (key.asymmetricKeyType) {
      case 'ed25519':
        return verify(null, message, key, proof);
      case 'ec':
        return verify('sha256', message, { key, dsaEncoding: 'der' }, proof);
      case 'rsa':
        return verify('sha256', message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, proof);
      default:
        return false;
    }
  } catch {
    return false;
  }
}

/** Reads the request's key, in whichever encoding it came, and checks it is one this signer issues for. */
export function requestKey(pcr: PodCertificateRequest): RequestKey {
  const spec = pcr.spec ?? {};
  const refused = (refusal: Refusal): RequestKey => ({ kind: 'refused', refusal });
  if (spec.stubPKCS10Request) {
    const der = decodeBase64(spec.stubPKCS10Request, 'stubPKCS10Request');
    if (!Buffer.isBuffer(der)) return refused(der);
    const spkiDer = spkiOfStub(der);
    let key: KeyObject;
    try {
      key = createPublicKey({ key: spkiDer ?? Buffer.alloc(0), format: 'der', type: 'spki' });
    } catch {
      return refused({ type: 'Denied', reason: 'InvalidRequest', message: 'spec.stubPKCS10Request is not a PKCS#10 request with a readable public key' });
    }
    const unsupported = checkKeyType(key);
    if (unsupported) return refused(unsupported);
    return { kind: 'key', spkiDer: spkiDer!, csrPem: encodePem('CERTIFICATE REQUEST', der) };
  }
  if (spec.pkixPublicKey) {
    const der = decodeBase64(spec.pkixPublicKey, 'pkixPublicKey');
    if (!Buffer.isBuffer(der)) return refused(der);
    let key: KeyObject;
    try {
      key = createPublicKey({ key: der, format: 'der', type: 'spki' });
    } catch {
      return refused({ type: 'Denied', reason: 'InvalidRequest', message: 'spec.pkixPublicKey is not a DER SubjectPublicKeyInfo' });
    }
    const unsupported = checkKeyType(key);
    if (unsupported) return refused(unsupported);
    const proof = decodeBase64(spec.proofOfPossession ?? '', 'proofOfPossession');
    if (!Buffer.isBuffer(proof)) return refused(proof);
    if (!proofVerifies(key, spec.podUID ?? '', proof)) {
      return refused({
        type: 'Denied',
        reason: 'InvalidProofOfPossession',
        message: `spec.proofOfPossession is not a signature of pod UID ${spec.podUID ?? '(none)'} by spec.pkixPublicKey; the kubelet must sign the pod UID with the key it asks a certificate for`,
      });
    }
    return { kind: 'key', spkiDer: der };
  }
  return refused({ type: 'Denied', reason: 'InvalidRequest', message: 'the request carries no public key (neither spec.stubPKCS10Request nor spec.pkixPublicKey)' });
}

/** spec.maxExpirationSeconds, defaulted as the API server does. */
export function maxExpirationSeconds(pcr: PodCertificateRequest): number {
  const value = pcr.spec?.maxExpirationSeconds;
  return typeof value === 'number' && Number.isFinite(value) && value > 0 ? Math.floor(value) : DEFAULT_MAX_EXPIRATION_SECONDS;
}

/** RFC 3339 at whole seconds, UTC: what the API compares with the certificate's times. */
export function rfc3339(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export interface IssuedTimes {
  notBefore: string;
  beginRefreshAt: string;
  notAfter: string;
}

/**
 * The times written with a leaf, checked against the API's rules first (so a status the API would refuse is
 * never sent): notBefore within 5 minutes of now, lifetime from 1 h to maxExpirationSeconds, beginRefreshAt at
 * the grace-period ratio, kept 10 minutes inside both ends. Returns a Failed refusal when the leaf breaks them.
 */
export function issuedTimes(leafPem: string, maxExpiration: number, nowMs: number): IssuedTimes | Refusal {
  const leaf = new X509Certificate(leafPem);
  const notBeforeMs = Date.parse(leaf.validFrom);
  const notAfterMs = Date.parse(leaf.validTo);
  const lifetime = (notAfterMs - notBeforeMs) / 1000;
  const failed = (message: string): Refusal => ({ type: 'Failed', reason: 'CertificateOutOfBounds', message });
  if (Math.abs(notBeforeMs - nowMs) >= MAX_NOT_BEFORE_SKEW_SECONDS * 1000) {
    return failed(`the key source issued a certificate valid from ${rfc3339(notBeforeMs)}, more than 5 minutes from now; check the CA's clock and the key source's backdating`);
  }
  if (lifetime < MIN_LIFETIME_SECONDS || lifetime > maxExpiration) {
    return failed(
      `the key source issued a certificate valid for ${lifetime}s, outside 3600s..${maxExpiration}s (spec.maxExpirationSeconds); the CA's signing certificate may expire within the hour, or the key source shortens lifetimes`,
    );
  }
  const refreshMs = Math.min(
    Math.max(notBeforeMs + Math.floor(lifetime * (1 - GRACE_PERIOD_RATIO)) * 1000, notBeforeMs + REFRESH_MARGIN_SECONDS * 1000),
    notAfterMs - REFRESH_MARGIN_SECONDS * 1000,
  );
  return { notBefore: rfc3339(notBeforeMs), beginRefreshAt: rfc3339(refreshMs), notAfter: rfc3339(notAfterMs) };
}
