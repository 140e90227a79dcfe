/**
 * SPIFFE bundles (the SPIFFE Trust Domain and Bundle specification): a JWK Set whose `x509-svid` keys each carry
 * one X.509 authority (a CA certificate) in `x5c`, plus `spiffe_sequence` and `spiffe_refresh_hint`.
 *
 * A bundle arrives from another trust domain's endpoint, so it is parsed strictly and the whole document is refused
 * when any X.509 authority in it is wrong: a bundle that is half right is a sign that the endpoint is broken or
 * tampered with, and the last good bundle is the safer thing to keep using. `jwt-svid` keys (meshca issues no
 * JWT-SVIDs) and keys of an unknown use are skipped, as the specification asks of consumers.
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto';
import { PkiError } from './errors.js';
import { signatureVerifies } from './chain.js';
import { certificateToPem } from './pem.js';
import { parseSpiffeId, validateTrustDomain } from './spiffe.js';
import { certificatePublicKey, isCaCertificate, parseCertificate, type ParsedCertificate } from './x509.js';

export interface SpiffeBundle {
  /** The trust domain whose authorities these are (the document itself does not name it). */
  readonly trustDomain: string;
  /** The X.509 authorities, each parsed once, in document order, without duplicates. */
  readonly x509Authorities: readonly ParsedCertificate[];
  /** `spiffe_sequence`: grows whenever the bundle changes. */
  readonly sequence?: number;
  /** `spiffe_refresh_hint`, in seconds: how often the publisher suggests fetching it. */
  readonly refreshHintSeconds?: number;
}

/** Far above any real bundle (a few roots of a few KiB each), far below what could hurt to parse. */
export const MAX_BUNDLE_BYTES = 256 * 1024;
const MAX_KEYS = 100;
const MAX_REFRESH_HINT_SECONDS = 30 * 24 * 3600;

function fail(trustDomain: string, message: string): never {
  throw new PkiError('ERR_BUNDLE', `SPIFFE bundle for "${trustDomain}": ${message}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A JSON integer in [min, Number.MAX_SAFE_INTEGER]: larger sequences cannot be compared exactly in JS. */
function optionalInteger(trustDomain: string, document: Record<string, unknown>, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const value = document[field];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    fail(trustDomain, `${field} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** A certificate that may sign others: basicConstraints CA, and keyCertSign when it has a keyUsage at all. */
function isAuthority(cert: ParsedCertificate): boolean {
  return isCaCertificate(cert) && (cert.keyUsage === null || cert.keyUsage.includes('keyCertSign'));
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

function x509Authority(trustDomain: string, key: Record<string, unknown>, index: number): ParsedCertificate {
  const where = `key ${index} (x509-svid)`;
  const x5c = key.x5c;
  if (!Array.isArray(x5c) || x5c.length !== 1 || typeof x5c[0] !== 'string') fail(trustDomain, `${where}: x5c must hold exactly one certificate`);
  const text = x5c[0];
  // Standard base64 (RFC 7517 4.7), not base64url; Buffer.from would quietly skip anything else.
  if (!BASE64.test(text) || text.length % 4 !== 0) fail(trustDomain, `${where}: x5c[0] is not standard base64`);
  let cert: ParsedCertificate;
  try {
    cert = parseCertificate(Buffer.from(text, 'base64'));
  } catch (error) {
    fail(trustDomain, `${where}: x5c[0] is not a DER certificate: ${(error as Error).message}`);
  }
  if (!isAuthority(cert)) fail(trustDomain, `${where}: ${cert.subject} is not a CA certificate (basicConstraints CA and keyCertSign)`);
  // A self-issued root's only integrity check: a flipped bit anywhere in it should not pass for a trust anchor.
  if (cert.issuerDer.equals(cert.subjectDer) && !signatureVerifies(cert, cert)) fail(trustDomain, `${where}: ${cert.subject} is self-issued but its signature does not verify`);
  // The JWK's own parameters must be the certificate's key, or two readers of the bundle could trust different keys.
  let jwkSpki: Buffer;
  try {
    const { x5c: _chain, use: _use, kid: _kid, ...params } = key;
    jwkSpki = createPublicKey({ key: params as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'der' });
  } catch (error) {
    fail(trustDomain, `${where}: its key parameters are not a public key: ${(error as Error).message}`);
  }
  if (!jwkSpki.equals(cert.spkiDer)) fail(trustDomain, `${where}: its key parameters are not the key of the certificate in x5c`);
  for (const uri of cert.sans.uris) {
    let named: string | undefined;
    try {
      named = parseSpiffeId(uri).trustDomain;
    } catch {
      continue;
    }
    if (named !== trustDomain) fail(trustDomain, `${where}: ${cert.subject} belongs to trust domain "${named}", not "${trustDomain}"`);
  }
  return cert;
}

/** Parses a bundle document for `trustDomain`; throws PkiError ERR_BUNDLE naming what is wrong. */
export function parseSpiffeBundle(trustDomain: string, document: string | Buffer): SpiffeBundle {
  validateTrustDomain(trustDomain);
  const size = typeof document === 'string' ? Buffer.byteLength(document) : document.length;
  if (size > MAX_BUNDLE_BYTES) fail(trustDomain, `the document is ${size} bytes, more than the ${MAX_BUNDLE_BYTES} allowed`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof document === 'string' ? document : document.toString('utf8'));
  } catch (error) {
    fail(trustDomain, `not JSON: ${(error as Error).message}`);
  }
  if (!isObject(parsed)) fail(trustDomain, 'not a JSON object (a JWK Set)');
  const keys = parsed.keys;
  if (!Array.isArray(keys)) fail(trustDomain, 'has no "keys" array');
  if (keys.length > MAX_KEYS) fail(trustDomain, `has ${keys.length} keys, more than the ${MAX_KEYS} allowed`);
  const sequence = optionalInteger(trustDomain, parsed, 'spiffe_sequence', 0);
  const refreshHintSeconds = optionalInteger(trustDomain, parsed, 'spiffe_refresh_hint', 1, MAX_REFRESH_HINT_SECONDS);
  const authorities: ParsedCertificate[] = [];
  keys.forEach((key: unknown, index) => {
    if (!isObject(key)) fail(trustDomain, `key ${index} is not a JSON object`);
    if (typeof key.kty !== 'string') fail(trustDomain, `key ${index} has no kty`);
    if (key.use !== 'x509-svid') return;
    const cert = x509Authority(trustDomain, key, index);
    if (!authorities.some((known) => known.der.equals(cert.der))) authorities.push(cert);
  });
  if (authorities.length === 0) fail(trustDomain, 'holds no X.509 authority (no "x509-svid" key)');
  return {
    trustDomain,
    x509Authorities: authorities,
    ...(sequence !== undefined ? { sequence } : {}),
    ...(refreshHintSeconds !== undefined ? { refreshHintSeconds } : {}),
  };
}

/** A bundle from certificates we hold (our own roots, or a PEM file an admin gave); each must be a CA certificate. */
export function spiffeBundleOf(trustDomain: string, authorities: readonly ParsedCertificate[], fields: { sequence?: number; refreshHintSeconds?: number } = {}): SpiffeBundle {
  validateTrustDomain(trustDomain);
  if (authorities.length === 0) fail(trustDomain, 'holds no X.509 authority');
  for (const cert of authorities) if (!isAuthority(cert)) fail(trustDomain, `${cert.subject} is not a CA certificate`);
  const unique = authorities.filter((cert, i) => authorities.findIndex((other) => other.der.equals(cert.der)) === i);
  return { trustDomain, x509Authorities: unique, ...fields };
}

/** The bundle as its JSON document (the form a bundle endpoint serves). */
export function formatSpiffeBundle(bundle: SpiffeBundle): string {
  const keys = bundle.x509Authorities.map((cert) => ({
    use: 'x509-svid',
    ...(certificatePublicKey(cert).export({ format: 'jwk' }) as Record<string, unknown>),
    x5c: [cert.der.toString('base64')],
  }));
  return `${JSON.stringify(
    {
      keys,
      ...(bundle.sequence !== undefined ? { spiffe_sequence: bundle.sequence } : {}),
      ...(bundle.refreshHintSeconds !== undefined ? { spiffe_refresh_hint: bundle.refreshHintSeconds } : {}),
    },
    null,
    2,
  )}\n`;
}

/** The authorities as a PEM bundle (what Envoy's trusted_ca and SPIFFECertValidatorConfig take). */
export function bundlePem(bundle: SpiffeBundle): string {
  return bundle.x509Authorities.map((cert) => certificateToPem(cert.der)).join('');
}

/** Same authorities (order aside): a fetched bundle equal to the current one changes nothing but its sequence. */
export function sameAuthorities(a: SpiffeBundle, b: SpiffeBundle): boolean {
  return a.x509Authorities.length === b.x509Authorities.length && a.x509Authorities.every((cert) => b.x509Authorities.some((other) => other.der.equals(cert.der)));
}
