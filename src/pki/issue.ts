/**
 * Certificate building. `LeafIssuer` is the CA's hot path: everything that does not depend on the request
 * (issuer name, algorithm identifier, constant extensions, the parsed signing KeyObject) is encoded once,
 * and each certificate is a few concatenations around the CSR's own SPKI bytes plus one `crypto.sign`.
 */
import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';
import { signingProfileFor, type SigningProfile } from './algorithms.js';
import { encodeExtension, encodeGeneralNames } from './csr.js';
import {
  bitString,
  children,
  explicit,
  implicitPrimitive,
  oid,
  octetString,
  readSingle,
  sequence,
  set,
  smallInteger,
  time,
  unsignedInteger,
  utf8String,
} from './der.js';
import { PkiError } from './errors.js';
import { keysMatch, spkiDer as keySpki } from './keys.js';
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
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  return serial;
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey BIT STRING contents. */
export function subjectKeyIdFromSpki(spkiDer: Buffer): Buffer {
  const bits = children(readSingle(spkiDer, 'SubjectPublicKeyInfo'))[1]!.contents.subarray(1);
  return createHash('sha1').update(bits).digest();
}

function authorityKeyIdExtension(keyId: Buffer): Buffer {
  return encodeExtension(OID.authorityKeyIdentifier, false, sequence(implicitPrimitive(0, keyId)));
}

function signTbs(tbs: Buffer, profile: SigningProfile, key: KeyObject): Buffer {
  return sequence(tbs, profile.algorithmIdentifier, bitString(sign(profile.hash, tbs, key)));
}

/** The material a CA signs with: its certificate and the matching private key. */
export interface SigningMaterial {
  certificate: ParsedCertificate;
  privateKey: KeyObject;
}

/** Checks that the key belongs to the certificate and that the certificate may sign certificates. */
export function assertSigningMaterial(material: SigningMaterial, what = 'CA certificate'): void {
  if (!keysMatch(material.privateKey, certificatePublicKey(material.certificate))) {
    throw new PkiError('ERR_KEY_MISMATCH', `the private key does not match the ${what}`);
  }
  if (material.certificate.basicConstraints?.ca !== true) {
    throw new PkiError('ERR_CHAIN', `the ${what} is not a CA certificate (basicConstraints CA:true is missing)`);
  }
  if (material.certificate.keyUsage && !material.certificate.keyUsage.includes('keyCertSign')) {
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

/** Issues workload certificates with Istio's profile from one signing certificate and key. */
export class LeafIssuer {
  readonly issuerNotAfter: Date;
  private readonly profile: SigningProfile;
  private readonly prefix: Buffer;
  private readonly constantExtensions: Buffer;

  constructor(private readonly material: SigningMaterial) {
    const cert = material.certificate;
    this.profile = signingProfileFor(material.privateKey);
    this.issuerNotAfter = cert.notAfter;
    const keyId = cert.subjectKeyId ?? subjectKeyIdFromSpki(cert.spkiDer);
    // Everything between the serial and the validity is fixed: the algorithm and the issuer name.
    this.prefix = Buffer.concat([this.profile.algorithmIdentifier, cert.subjectDer]);
    this.constantExtensions = Buffer.concat([LEAF_KEY_USAGE, LEAF_EXT_KEY_USAGE, LEAF_BASIC_CONSTRAINTS, authorityKeyIdExtension(keyId)]);
  }

  get privateKey(): KeyObject {
    return this.material.privateKey;
  }

  issue(request: LeafRequest): IssuedLeaf {
    const now = request.now ?? Date.now();
    const nowSeconds = Math.floor(now / 1000) * 1000;
    const notBefore = new Date(nowSeconds - CLOCK_SKEW_GRACE_MS);
    const wanted = nowSeconds + request.ttlSeconds * 1000;
    const notAfter = new Date(Math.min(wanted, this.issuerNotAfter.getTime()));
    const serial = randomSerial();
    // Subject is empty, so the SAN extension is critical (RFC 5280 4.2.1.6).
    const san = encodeExtension(OID.subjectAltName, true, encodeGeneralNames(request.uris, request.dnsNames ?? []));
    const tbs = sequence(
      VERSION_3,
      unsignedInteger(serial),
      this.prefix,
      sequence(time(notBefore), time(notAfter)),
      EMPTY_NAME,
      request.spkiDer,
      explicit(3, sequence(san, this.constantExtensions)),
    );
    return { der: signTbs(tbs, this.profile, this.material.privateKey), serialHex: serial.toString('hex'), notBefore, notAfter };
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
  const spki = keySpki(options.subjectKey);
  const subjectKeyId = subjectKeyIdFromSpki(spki);
  const subjectName = encodeName(options.subject);
  const signingKey = options.issuer ? options.issuer.privateKey : options.subjectKey;
  if (signingKey.type !== 'private') throw new PkiError('ERR_KEY_MISMATCH', 'a self-signed root needs its private key');
  const issuerName = options.issuer ? options.issuer.certificate.subjectDer : subjectName;
  const authorityKeyId = options.issuer
    ? (options.issuer.certificate.subjectKeyId ?? subjectKeyIdFromSpki(options.issuer.certificate.spkiDer))
    : subjectKeyId;
  let notAfter = options.notAfter;
  if (options.issuer && notAfter > options.issuer.certificate.notAfter) notAfter = options.issuer.certificate.notAfter;
  const profile = signingProfileFor(signingKey);
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
  return signTbs(tbs, profile, signingKey);
}

