/**
 * Certificate building. `LeafIssuer` is the CA's hot path: everything that does not depend on the request
 * (issuer name, algorithm identifier, constant extensions, the parsed signing KeyObject) is encoded once,
 * and each certificate is written into one buffer around the CSR's own SPKI bytes, plus one `crypto.sign`.
 * `LeafTemplate` is its first half, the TBSCertificate alone, for keys that sign outside this process.
 */
import { createHash, randomBytes, randomFillSync, sign, type KeyObject } from 'node:crypto';
import { signingProfileFor, type SigningProfile } from './algorithms.js';
import { encodeExtension, encodeGeneralNames } from './csr.js';
import {
  boolean,
  children,
  explicit,
  headerLength,
  implicitPrimitive,
  oid,
  octetString,
  readSingle,
  sequence,
  set,
  smallInteger,
  Tag,
  time,
  unsignedInteger,
  utf8String,
  writeHeader,
} from './der.js';
import { PkiError } from './errors.js';
import { keysMatch, spkiDer as keySpki } from './keys.js';
import { signWithoutBlocking } from './off-thread.js';
import { OID } from './oids.js';
import { certificatePublicKey, type ParsedCertificate } from './x509.js';

/** Istio's ClockSkewGracePeriod: certificates are backdated so that slightly slow clocks accept them. */
export const CLOCK_SKEW_GRACE_MS = 2 * 60 * 1000;

const VERSION_3 = explicit(0, smallInteger(2));
const EMPTY_NAME = sequence();
// keyUsage digitalSignature (bit 0) + keyEncipherment (bit 2): 0b1010_0000, 5 unused bits.
const LEAF_KEY_USAGE = encodeExtension(OID.keyUsage, true, Buffer.from([0x03, 0x02, 0x05, 0xa0]));
const LEAF_EXT_KEY_USAGE = encodeExtension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth), oid(OID.clientAuth)));
const LEAF_BASIC_CONSTRAINTS = encodeExtension(OID.basicConstraints, true, sequence());
// Extension { extnID subjectAltName, critical TRUE, ... }: the part of the SAN extension before its OCTET STRING.
const SAN_EXTENSION_PREFIX = Buffer.concat([oid(OID.subjectAltName), boolean(true)]);
// keyUsage keyCertSign (bit 5) + cRLSign (bit 6): 0b0000_0110, 1 unused bit.
const CA_KEY_USAGE = encodeExtension(OID.keyUsage, true, Buffer.from([0x03, 0x02, 0x01, 0x06]));

export interface NameAttributes {
  organization?: string;
  commonName?: string;
}

export function encodeName(attributes: NameAttributes): Buffer {
  const rdns: Buffer[] = [];
  if (attributes.organization !== undefined) rdns.push(set(sequence(oid(OID.organizationName), utf8String(attributes.organization))));
  if (attributes.commonName !== undefined) rdns.push(set(sequence(oid(OID.commonName), utf8String(attributes.commonName))));
  return sequence(...rdns);
}

/** 128 random bits as a positive INTEGER of exactly 16 bytes. */
export function randomSerial(): Buffer {
  const serial = randomBytes(SERIAL_BYTES);
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  return serial;
}

const SERIAL_BYTES = 16;
// INTEGER tag + length + 16 bytes: the first byte is forced into 0x01..0x7f, so no sign byte is ever needed.
const SERIAL_ELEMENT_LENGTH = 2 + SERIAL_BYTES;
// CSPRNG bytes for serials, drawn 256 serials at a time: one randomFillSync per call cost ~3 us.
const serialPool = Buffer.alloc(SERIAL_BYTES * 256);
let serialPoolOffset = serialPool.length;

/** Writes a fresh random serial (same form as randomSerial) at `offset`; returns the offset after it. */
function writeSerial(target: Buffer, offset: number): number {
  if (serialPoolOffset === serialPool.length) {
    randomFillSync(serialPool);
    serialPoolOffset = 0;
  }
  serialPool.copy(target, offset, serialPoolOffset, serialPoolOffset + SERIAL_BYTES);
  serialPoolOffset += SERIAL_BYTES;
  target[offset] = (target[offset]! & 0x7f) | 0x01;
  return offset + SERIAL_BYTES;
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey BIT STRING contents. */
export function subjectKeyIdFromSpki(spkiDer: Buffer): Buffer {
  const bits = children(readSingle(spkiDer, 'SubjectPublicKeyInfo'))[1]!.contents.subarray(1);
  return createHash('sha1').update(bits).digest();
}

function authorityKeyIdExtension(keyId: Buffer): Buffer {
  return encodeExtension(OID.authorityKeyIdentifier, false, sequence(implicitPrimitive(0, keyId)));
}

/** Certificate ::= SEQUENCE { tbs, algorithm, BIT STRING signature }, written into one buffer. */
function signTbs(tbs: Buffer, profile: SigningProfile, key: KeyObject): Buffer {
  return certificateFromTbs(tbs, profile.algorithmIdentifier, sign(profile.hash, tbs, key));
}

/**
 * The Certificate around a TBSCertificate and its signature, made anywhere (in this process, or in an HSM through
 * PKCS#11): `algorithm` must be the AlgorithmIdentifier inside the TBS, `signature` in X.509's encoding.
 */
export function certificateFromTbs(tbs: Buffer, algorithm: Buffer, signature: Buffer): Buffer {
  const signatureLength = headerLength(signature.length + 1) + signature.length + 1;
  const contentLength = tbs.length + algorithm.length + signatureLength;
  const certificate = Buffer.allocUnsafe(headerLength(contentLength) + contentLength);
  let at = writeHeader(certificate, 0, Tag.SEQUENCE, contentLength);
  at += tbs.copy(certificate, at);
  at += algorithm.copy(certificate, at);
  at = writeHeader(certificate, at, Tag.BIT_STRING, signature.length + 1);
  certificate[at++] = 0;
  at += signature.copy(certificate, at);
  if (at !== certificate.length) throw new PkiError('ERR_DER_ENCODE', 'internal error: certificate length mismatch');
  return certificate;
}

/** The material a CA signs with: its certificate and the matching private key. */
export interface SigningMaterial {
  certificate: ParsedCertificate;
  privateKey: KeyObject;
}

/** Checks that the key belongs to the certificate and that the certificate may sign certificates. */
export function assertSigningMaterial(material: SigningMaterial, what = 'CA certificate'): void {
  assertCaSigningKey(material.certificate, material.privateKey, { what });
}

/**
 * The same checks for a key held elsewhere (an HSM): `key` may be the public half. `keyName` names the key in
 * the mismatch message ("the private key", "the token key").
 */
export function assertCaSigningKey(certificate: ParsedCertificate, key: KeyObject, names: { what?: string; keyName?: string } = {}): void {
  const what = names.what ?? 'CA certificate';
  if (!keysMatch(key, certificatePublicKey(certificate))) {
    throw new PkiError('ERR_KEY_MISMATCH', `${names.keyName ?? 'the private key'} does not match the ${what}`);
  }
  if (certificate.basicConstraints?.ca !== true) {
    throw new PkiError('ERR_CHAIN', `the ${what} is not a CA certificate (basicConstraints CA:true is missing)`);
  }
  if (certificate.keyUsage && !certificate.keyUsage.includes('keyCertSign')) {
    throw new PkiError('ERR_CHAIN', `the ${what} lacks keyUsage keyCertSign`);
  }
}

export interface LeafRequest {
  /** SubjectPublicKeyInfo DER (from a verified CSR). */
  spkiDer: Buffer;
  /** URI SANs, normally exactly one SPIFFE ID. */
  uris: readonly string[];
  dnsNames?: readonly string[];
  /** Requested lifetime; clamped to the issuer's NotAfter. */
  ttlSeconds: number;
  now?: number;
}

export interface IssuedLeaf {
  der: Buffer;
  serialHex: string;
  notBefore: Date;
  notAfter: Date;
}

/** A leaf's TBSCertificate and what its signer needs: the hash to sign it with and the AlgorithmIdentifier inside it. */
export interface LeafTbs {
  /** DER TBSCertificate; its signature must be made with `hash` by the key the template was made for. */
  tbs: Buffer;
  serialHex: string;
  notBefore: Date;
  notAfter: Date;
  /** The signature AlgorithmIdentifier written in the TBS; the Certificate repeats it (see certificateFromTbs). */
  algorithmIdentifier: Buffer;
  hash: SigningProfile['hash'];
}

/**
 * The TBSCertificate of workload certificates with Istio's profile, for one issuer certificate and the key that
 * signs for it. Only the key's type and size count, so its public half is enough: the signature can be made
 * anywhere (in this process by LeafIssuer, in an HSM through PKCS#11). Everything that does not depend on the
 * request is encoded once; each TBS is written into one buffer around the CSR's own SPKI bytes.
 */
export class LeafTemplate {
  readonly issuerNotAfter: Date;
  readonly profile: SigningProfile;
  private readonly prefix: Buffer;
  private readonly constantExtensions: Buffer;
  private lastValidity: { notBeforeMs: number; notAfterMs: number; der: Buffer } | undefined;

  /** `signerKey`: the issuer certificate's key, public or private (the caller checks that the two match). */
  constructor(issuer: ParsedCertificate, signerKey: KeyObject) {
    this.profile = signingProfileFor(signerKey);
    this.issuerNotAfter = issuer.notAfter;
    const keyId = issuer.subjectKeyId ?? subjectKeyIdFromSpki(issuer.spkiDer);
    // Everything between the serial and the validity is fixed: the algorithm and the issuer name.
    this.prefix = Buffer.concat([this.profile.algorithmIdentifier, issuer.subjectDer]);
    this.constantExtensions = Buffer.concat([LEAF_KEY_USAGE, LEAF_EXT_KEY_USAGE, LEAF_BASIC_CONSTRAINTS, authorityKeyIdExtension(keyId)]);
  }

  /**
   * One TBSCertificate: sized first, then written into a single buffer around the precomputed parts (see
   * bench/NOTES.md for what each step costs). NotAfter is clamped to the issuer's.
   */
  build(request: LeafRequest): LeafTbs {
    const now = request.now ?? Date.now();
    const nowSeconds = Math.floor(now / 1000) * 1000;
    const notBeforeMs = nowSeconds - CLOCK_SKEW_GRACE_MS;
    const notAfterMs = Math.min(nowSeconds + request.ttlSeconds * 1000, this.issuerNotAfter.getTime());
    const validity = this.validityFor(notBeforeMs, notAfterMs);
    const uris = request.uris;
    const dnsNames = request.dnsNames ?? [];
    const spki = request.spkiDer;

    // Sizes, innermost first. Subject is empty, so the SAN extension is critical (RFC 5280 4.2.1.6).
    let namesLength = 0;
    for (const uri of uris) {
      const length = Buffer.byteLength(uri, 'utf8');
      namesLength += headerLength(length) + length;
    }
    for (const dns of dnsNames) namesLength += headerLength(dns.length) + dns.length;
    const generalNamesLength = headerLength(namesLength) + namesLength;
    const sanValueLength = headerLength(generalNamesLength) + generalNamesLength;
    const sanContentLength = SAN_EXTENSION_PREFIX.length + sanValueLength;
    const extensionsContentLength = headerLength(sanContentLength) + sanContentLength + this.constantExtensions.length;
    const extensionsLength = headerLength(extensionsContentLength) + extensionsContentLength;
    const tbsContentLength =
      VERSION_3.length + SERIAL_ELEMENT_LENGTH + this.prefix.length + validity.length + EMPTY_NAME.length + spki.length +
      headerLength(extensionsLength) + extensionsLength;
    const tbsLength = headerLength(tbsContentLength) + tbsContentLength;

    const tbs = Buffer.allocUnsafe(tbsLength);
    let at = writeHeader(tbs, 0, Tag.SEQUENCE, tbsContentLength);
    at += VERSION_3.copy(tbs, at);
    at = writeHeader(tbs, at, Tag.INTEGER, SERIAL_BYTES);
    const serialAt = at;
    at = writeSerial(tbs, at);
    at += this.prefix.copy(tbs, at);
    at += validity.copy(tbs, at);
    at += EMPTY_NAME.copy(tbs, at);
    at += spki.copy(tbs, at);
    at = writeHeader(tbs, at, 0xa3, extensionsLength);
    at = writeHeader(tbs, at, Tag.SEQUENCE, extensionsContentLength);
    at = writeHeader(tbs, at, Tag.SEQUENCE, sanContentLength);
    at += SAN_EXTENSION_PREFIX.copy(tbs, at);
    at = writeHeader(tbs, at, Tag.OCTET_STRING, generalNamesLength);
    at = writeHeader(tbs, at, Tag.SEQUENCE, namesLength);
    for (const uri of uris) {
      at = writeHeader(tbs, at, 0x86, Buffer.byteLength(uri, 'utf8'));
      at += tbs.write(uri, at, 'utf8');
    }
    for (const dns of dnsNames) {
      at = writeHeader(tbs, at, 0x82, dns.length);
      at += tbs.write(dns, at, 'latin1');
    }
    at += this.constantExtensions.copy(tbs, at);
    // Every byte of the unzeroed buffer must have been written; a mismatch would be a bug in the sizes above.
    if (at !== tbsLength) throw new PkiError('ERR_DER_ENCODE', `internal error: TBSCertificate is ${at} bytes, expected ${tbsLength}`);

    return {
      tbs,
      serialHex: tbs.toString('hex', serialAt, serialAt + SERIAL_BYTES),
      notBefore: new Date(notBeforeMs),
      notAfter: new Date(notAfterMs),
      algorithmIdentifier: this.profile.algorithmIdentifier,
      hash: this.profile.hash,
    };
  }

  /** The encoded Validity; the last one is kept because every certificate issued in the same second shares it. */
  private validityFor(notBeforeMs: number, notAfterMs: number): Buffer {
    const cached = this.lastValidity;
    if (cached && cached.notBeforeMs === notBeforeMs && cached.notAfterMs === notAfterMs) return cached.der;
    const der = sequence(time(new Date(notBeforeMs)), time(new Date(notAfterMs)));
    this.lastValidity = { notBeforeMs, notAfterMs, der };
    return der;
  }
}

/** Issues workload certificates with Istio's profile from one signing certificate and key, signed in this process. */
export class LeafIssuer {
  readonly template: LeafTemplate;

  constructor(private readonly material: SigningMaterial) {
    this.template = new LeafTemplate(material.certificate, material.privateKey);
  }

  get issuerNotAfter(): Date {
    return this.template.issuerNotAfter;
  }

  get privateKey(): KeyObject {
    return this.material.privateKey;
  }

  /** One certificate: the template's TBSCertificate, signed once with `crypto.sign`. */
  issue(request: LeafRequest): IssuedLeaf {
    const leaf = this.template.build(request);
    const der = certificateFromTbs(leaf.tbs, leaf.algorithmIdentifier, sign(leaf.hash, leaf.tbs, this.material.privateKey));
    return { der, serialHex: leaf.serialHex, notBefore: leaf.notBefore, notAfter: leaf.notAfter };
  }

  /** `issue` for servers: a costly signature (RSA, P-384) is made on libuv's thread pool (off-thread.ts), not on the event loop. */
  async issueWithoutBlocking(request: LeafRequest): Promise<IssuedLeaf> {
    const leaf = this.template.build(request);
    const signature = await signWithoutBlocking(leaf.hash, leaf.tbs, this.material.privateKey);
    return { der: certificateFromTbs(leaf.tbs, leaf.algorithmIdentifier, signature), serialHex: leaf.serialHex, notBefore: leaf.notBefore, notAfter: leaf.notAfter };
  }
}

export interface CaCertificateOptions {
  subject: NameAttributes;
  /** The new CA's public (or private) key. */
  subjectKey: KeyObject;
  /** Omit for a self-signed root; then `subjectKey` must be the private key. */
  issuer?: SigningMaterial;
  notBefore?: Date;
  notAfter: Date;
  pathLen?: number;
  /** SANs for the CA certificate itself (e.g. a SPIFFE trust-domain URI). */
  uris?: string[];
}

/** Builds a CA certificate (root or intermediate): CA:true, keyCertSign+cRLSign, SKI, AKI. */
export function createCaCertificate(options: CaCertificateOptions): Buffer {
  const signingKey = options.issuer ? options.issuer.privateKey : options.subjectKey;
  if (signingKey.type !== 'private') throw new PkiError('ERR_KEY_MISMATCH', 'a self-signed root needs its private key');
  const { tbs, profile } = caCertificateTbs(options, signingKey);
  return signTbs(tbs, profile, signingKey);
}

/**
 * The TBSCertificate of a CA certificate, and the profile (hash, AlgorithmIdentifier) its signer signs it with,
 * for a signer outside this process such as an HSM key: `signerKey` is that key (its public half is enough; only
 * its type and size count). The issuer's private key is not needed, only its certificate.
 */
export function caCertificateTbs(
  options: Omit<CaCertificateOptions, 'issuer'> & { issuer?: Pick<SigningMaterial, 'certificate'> },
  signerKey: KeyObject,
): { tbs: Buffer; profile: SigningProfile } {
  const spki = keySpki(options.subjectKey);
  const subjectKeyId = subjectKeyIdFromSpki(spki);
  const subjectName = encodeName(options.subject);
  const issuerName = options.issuer ? options.issuer.certificate.subjectDer : subjectName;
  const authorityKeyId = options.issuer
    ? (options.issuer.certificate.subjectKeyId ?? subjectKeyIdFromSpki(options.issuer.certificate.spkiDer))
    : subjectKeyId;
  let notAfter = options.notAfter;
  if (options.issuer && notAfter > options.issuer.certificate.notAfter) notAfter = options.issuer.certificate.notAfter;
  const profile = signingProfileFor(signerKey);
  const basicConstraints = sequence(Buffer.from([0x01, 0x01, 0xff]), ...(options.pathLen !== undefined ? [smallInteger(options.pathLen)] : []));
  const extensions = [
    encodeExtension(OID.basicConstraints, true, basicConstraints),
    CA_KEY_USAGE,
    encodeExtension(OID.subjectKeyIdentifier, false, octetString(subjectKeyId)),
    authorityKeyIdExtension(authorityKeyId),
  ];
  if (options.uris?.length) extensions.push(encodeExtension(OID.subjectAltName, false, encodeGeneralNames(options.uris)));
  const notBefore = options.notBefore ?? new Date(Math.floor(Date.now() / 1000) * 1000 - CLOCK_SKEW_GRACE_MS);
  const tbs = sequence(
    VERSION_3,
    unsignedInteger(randomSerial()),
    profile.algorithmIdentifier,
    issuerName,
    sequence(time(notBefore), time(notAfter)),
    subjectName,
    spki,
    explicit(3, sequence(...extensions)),
  );
  return { tbs, profile };
}
