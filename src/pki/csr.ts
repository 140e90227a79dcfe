/** PKCS#10 certificate signing requests: create (as Istio agents do) and parse/verify (as the CA must). */
import { createPublicKey, sign, verify, type JsonWebKey, type KeyObject } from 'node:crypto';
import { verifyWithoutBlocking } from './off-thread.js';
import { assertKeyStrength, signatureAlgorithmFor, signingProfileFor } from './algorithms.js';
import {
  assertDer,
  bitString,
  boolean,
  children,
  decodeOid,
  expectTag,
  explicit,
  implicitPrimitive,
  nullValue,
  oid,
  octetString,
  readSingle,
  readTopSequence,
  readUnsignedInteger,
  sequence,
  set,
  smallInteger,
  Tag,
  type DerElement,
} from './der.js';
import { PkiError } from './errors.js';
import { spkiDer as publicKeySpki, type KeyDescription } from './keys.js';
import { OID } from './oids.js';
import { decodeSinglePem, encodePem } from './pem.js';
import { EC_CURVES, ecSpki, RSA_ALGORITHM_IDENTIFIER, rsaSpki } from './spki.js';
import { formatName, parseBasicConstraints, parseSubjectAltNames, type Extension, type SubjectAltNames } from './x509.js';

export const CSR_PEM_LABELS = ['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST'] as const;

export interface CreateCsrOptions {
  privateKey: KeyObject;
  uris?: string[];
  dnsNames?: string[];
  /** Adds basicConstraints CA:true to the requested extensions (for intermediate CA requests). */
  requestCa?: boolean;
}

/** Encodes a GeneralNames SEQUENCE of URIs and DNS names. */
export function encodeGeneralNames(uris: readonly string[], dnsNames: readonly string[] = []): Buffer {
  return sequence(
    ...uris.map((uri) => implicitPrimitive(6, Buffer.from(uri, 'utf8'))),
    ...dnsNames.map((dns) => implicitPrimitive(2, Buffer.from(dns, 'ascii'))),
  );
}

export function encodeExtension(oidText: string, critical: boolean, value: Buffer): Buffer {
  return critical ? sequence(oid(oidText), boolean(true), octetString(value)) : sequence(oid(oidText), octetString(value));
}

/** A CSR with an empty subject and the SANs in a critical subjectAltName extension request, like istio-agent's. */
export function createCsr(options: CreateCsrOptions): string {
  const uris = options.uris ?? [];
  const dnsNames = options.dnsNames ?? [];
  const extensions: Buffer[] = [];
  if (uris.length + dnsNames.length > 0) {
    extensions.push(encodeExtension(OID.subjectAltName, true, encodeGeneralNames(uris, dnsNames)));
  }
  if (options.requestCa) extensions.push(encodeExtension(OID.basicConstraints, true, sequence(boolean(true))));
  const attributes =
    extensions.length > 0 ? explicit(0, sequence(oid(OID.extensionRequest), set(sequence(...extensions)))) : explicit(0);
  const info = sequence(smallInteger(0), sequence(), publicKeySpki(options.privateKey), attributes);
  const profile = signingProfileFor(options.privateKey);
  const signature = sign(profile.hash, info, options.privateKey);
  return encodePem('CERTIFICATE REQUEST', sequence(info, profile.algorithmIdentifier, bitString(signature)));
}

/** The CSR's public key, read strictly: its SubjectPublicKeyInfo is exactly the canonical DER of these values. */
export type CsrPublicKey =
  | { kind: 'rsa'; bits: number; modulus: Buffer; exponent: Buffer }
  | { kind: 'ec'; curve: 'P-256' | 'P-384' | 'P-521'; x: Buffer; y: Buffer };

export interface ParsedCsr {
  der: Buffer;
  /** The signed CertificationRequestInfo: the exact bytes received, never a re-encoding. */
  info: Buffer;
  subject: string;
  /** SubjectPublicKeyInfo DER: the canonical encoding of `publicKey` (equal to the CSR's bytes, which must be canonical). */
  spkiDer: Buffer;
  key: KeyDescription;
  publicKey: CsrPublicKey;
  /** Dotted OID of the signature algorithm; its AlgorithmIdentifier was checked to be exactly the standard form. */
  signatureAlgorithm: string;
  signature: Buffer;
  extensions: Extension[];
  sans: SubjectAltNames;
  requestsCa: boolean;
}

function malformed(message: string): PkiError {
  return new PkiError('ERR_CSR_MALFORMED', message);
}

/** Children of a constructed element, exactly `count` of them (DER has no room for extra or missing fields). */
function exactChildren(element: DerElement, count: number, what: string): DerElement[] {
  const items = children(element);
  if (items.length !== count) throw malformed(`${what} has ${items.length} fields, expected ${count}`);
  return items;
}

const VERSION_1 = Buffer.from([Tag.INTEGER, 1, 0]);
const OID_RSASSA_PSS = '1.2.840.113549.1.1.10';

// Each signature algorithm's one standard AlgorithmIdentifier: NULL parameters for RSA PKCS#1 v1.5 (RFC 4055 5),
// absent parameters for ECDSA (RFC 5758 3.2). Any other encoding is refused.
const SIGNATURE_ALGORITHM_IDENTIFIERS: readonly { oid: string; der: Buffer; parameters: 'NULL' | 'absent' }[] = [
  ...[OID.sha256WithRSA, OID.sha384WithRSA, OID.sha512WithRSA].map((o) => ({ oid: o, der: sequence(oid(o), nullValue()), parameters: 'NULL' as const })),
  ...[OID.ecdsaWithSHA256, OID.ecdsaWithSHA384, OID.ecdsaWithSHA512].map((o) => ({ oid: o, der: sequence(oid(o)), parameters: 'absent' as const })),
];

function readSignatureAlgorithm(element: DerElement | undefined): string {
  const algorithm = expectTag(element, Tag.SEQUENCE, 'CSR signature algorithm');
  for (const known of SIGNATURE_ALGORITHM_IDENTIFIERS) if (known.der.equals(algorithm.raw)) return known.oid;
  const [algorithmOid, parameters, extra] = children(algorithm);
  const text = decodeOid(expectTag(algorithmOid, Tag.OID, 'CSR signature algorithm').contents);
  if (extra) throw malformed('CSR signature algorithm has extra fields');
  const known = SIGNATURE_ALGORITHM_IDENTIFIERS.find((k) => k.oid === text);
  if (known) {
    throw malformed(
      known.parameters === 'NULL'
        ? `CSR signature algorithm ${text} must have NULL parameters (RFC 4055)`
        : `CSR signature algorithm ${text} must have no parameters (RFC 5758)`,
    );
  }
  // Unknown algorithms are refused by verifyCsr with ERR_CSR_SIGNATURE; their parameters must still be DER.
  if (parameters) assertDer(parameters, 'CSR signature algorithm parameters');
  return text;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Whether a Name attribute value is a well-formed directory string (what OpenSSL and Go read in names). */
function isDirectoryString(value: DerElement): boolean {
  const bytes = value.contents;
  switch (value.tag) {
    case 0x0c: // UTF8String
      try {
        utf8.decode(bytes);
        return true;
      } catch {
        return false;
      }
    case 0x12: // NumericString
      return /^[0-9 ]*$/.test(bytes.toString('latin1'));
    case 0x13: // PrintableString
      return /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(bytes.toString('latin1'));
    case 0x14: // TeletexString
      return true;
    case 0x16: // IA5String
      return bytes.every((byte) => byte < 0x80);
    case 0x1c: // UniversalString: UCS-4 code points
      if (bytes.length % 4 !== 0) return false;
      for (let i = 0; i < bytes.length; i += 4) if (bytes.readUInt32BE(i) > 0x10ffff) return false;
      return true;
    case 0x1e: // BMPString
      return bytes.length % 2 === 0;
    default:
      return false;
  }
}

/** A Name: SEQUENCE OF SET (non-empty) OF SEQUENCE { OID, directory string }, strict DER throughout. */
function checkName(name: DerElement): void {
  for (const rdn of children(name)) {
    const attributes = children(expectTag(rdn, Tag.SET, 'CSR subject RDN'));
    if (attributes.length === 0) throw malformed('CSR subject has an empty RDN');
    for (const attribute of attributes) {
      const [type, value] = exactChildren(expectTag(attribute, Tag.SEQUENCE, 'CSR subject attribute'), 2, 'CSR subject attribute');
      const typeText = decodeOid(expectTag(type, Tag.OID, 'CSR subject attribute type').contents);
      if (!isDirectoryString(value!)) {
        throw malformed(`CSR subject attribute ${typeText} is not a well-formed string (UTF8String, PrintableString, IA5String, BMPString, ...)`);
      }
    }
  }
}

/** Decodes a CSR from PEM (string) or DER (Buffer). Checks structure, strict DER and key encoding, not the signature. */
export function parseCsr(input: string | Buffer): ParsedCsr {
  const der = typeof input === 'string' ? pemToDer(input) : input;
  const top = readTopSequence(der, 'CSR', malformed);
  try {
    const [infoElement, algorithm, signatureElement] = exactChildren(top, 3, 'CSR');
    const info = expectTag(infoElement, Tag.SEQUENCE, 'CertificationRequestInfo');
    const [version, subject, spki, attributes] = exactChildren(info, 4, 'CertificationRequestInfo');
    if (!version!.raw.equals(VERSION_1)) {
      const contents = version!.contents;
      const shown = version!.tag === Tag.INTEGER && contents.length >= 1 && contents.length <= 4 ? String(contents.readIntBE(0, contents.length)) : 'not a small INTEGER';
      throw malformed(`CSR version must be v1 (INTEGER 0 in DER), got ${shown}`);
    }
    checkName(expectTag(subject, Tag.SEQUENCE, 'CSR subject'));
    const publicKey = readCsrPublicKey(expectTag(spki, Tag.SEQUENCE, 'CSR public key').raw);
    if (!attributes || attributes.tag !== 0xa0) throw malformed('CSR attributes ([0] IMPLICIT SET) are missing or mistagged');
    const extensions = readRequestedExtensions(attributes);
    const signatureAlgorithm = readSignatureAlgorithm(algorithm);
    const signatureBits = expectTag(signatureElement, Tag.BIT_STRING, 'CSR signature').contents;
    if (signatureBits.length < 2 || signatureBits[0] !== 0) throw malformed('CSR signature BIT STRING must be non-empty with 0 unused bits');
    const sanExtension = extensions.find((e) => e.oid === OID.subjectAltName);
    const bcExtension = extensions.find((e) => e.oid === OID.basicConstraints);
    return {
      der,
      info: info.raw,
      subject: formatName(subject!.raw),
      spkiDer: publicKey.spkiDer,
      key: publicKey.key.kind === 'rsa' ? { kind: 'rsa', bits: publicKey.key.bits } : { kind: 'ec', curve: publicKey.key.curve },
      publicKey: publicKey.key,
      signatureAlgorithm,
      signature: signatureBits.subarray(1),
      extensions,
      sans: sanExtension ? parseSubjectAltNames(sanExtension.value) : { uris: [], dnsNames: [], ipAddresses: [], emails: [] },
      requestsCa: bcExtension ? parseBasicConstraints(bcExtension.value).ca : false,
    };
  } catch (error) {
    if (error instanceof PkiError && (error.code === 'ERR_CSR_MALFORMED' || error.code === 'ERR_KEY_UNSUPPORTED')) throw error;
    throw malformed(`CSR is malformed: ${(error as Error).message}`);
  }
}

function pemToDer(pem: string): Buffer {
  try {
    return decodeSinglePem(pem, CSR_PEM_LABELS, 'CSR');
  } catch (error) {
    throw malformed((error as Error).message);
  }
}

/**
 * Attributes ::= [0] IMPLICIT SET OF Attribute { type OID, values SET SIZE(1..MAX) }. At most one extensionRequest,
 * with exactly one Extensions value; no extension twice; critical written only as TRUE (DER omits DEFAULT FALSE);
 * every extnValue one strict DER element. Other attributes must be strict DER too.
 */
function readRequestedExtensions(attributes: DerElement): Extension[] {
  const out: Extension[] = [];
  let seenRequest = false;
  for (const attribute of children(attributes)) {
    const [type, values] = exactChildren(expectTag(attribute, Tag.SEQUENCE, 'CSR attribute'), 2, 'CSR attribute');
    const typeText = decodeOid(expectTag(type, Tag.OID, 'CSR attribute type').contents);
    const items = children(expectTag(values, Tag.SET, 'CSR attribute values'));
    if (items.length === 0) throw malformed(`CSR attribute ${typeText} has no values`);
    if (typeText !== OID.extensionRequest) {
      for (const item of items) assertDer(item, `CSR attribute ${typeText}`);
      continue;
    }
    if (seenRequest) throw malformed('CSR has more than one extensionRequest attribute');
    seenRequest = true;
    if (items.length !== 1) throw malformed('CSR extensionRequest must have exactly one value');
    const requested = children(expectTag(items[0], Tag.SEQUENCE, 'requested extensions'));
    for (const extension of requested) {
      const parts = children(expectTag(extension, Tag.SEQUENCE, 'requested extension'));
      if (parts.length !== 2 && parts.length !== 3) throw malformed(`requested extension has ${parts.length} fields, expected 2 or 3`);
      const id = decodeOid(expectTag(parts[0], Tag.OID, 'requested extension id').contents);
      if (parts.length === 3) {
        const critical = expectTag(parts[1], Tag.BOOLEAN, 'requested extension critical flag');
        if (critical.contents.length !== 1 || critical.contents[0] !== 0xff) {
          throw malformed(`requested extension ${id}: critical must be absent or DER TRUE (0xff)`);
        }
      }
      const value = expectTag(parts[parts.length - 1], Tag.OCTET_STRING, 'requested extension value').contents;
      assertDer(readSingle(value, `requested extension ${id}`), `requested extension ${id}`);
      if (out.some((e) => e.oid === id)) throw malformed(`CSR requests extension ${id} twice`);
      out.push({ oid: id, critical: parts.length === 3, value });
    }
  }
  return out;
}

/**
 * Reads a CSR's SubjectPublicKeyInfo strictly: an RSA key { rsaEncryption NULL } with a minimal (n, e), or an EC
 * key on a named curve as an uncompressed point (0x04 || X || Y). Compressed and hybrid points, explicit curve
 * parameters and any non-canonical encoding are refused, so the SPKI a leaf carries is always the canonical one.
 * Policy (key sizes, exponent range) is verifyCsr's; whether the point is on the curve is checked at import.
 */
export function readCsrPublicKey(spkiDer: Buffer): { key: CsrPublicKey; spkiDer: Buffer } {
  const [algorithm, keyBits] = exactChildren(expectTag(readSingle(spkiDer, 'SubjectPublicKeyInfo'), Tag.SEQUENCE, 'SubjectPublicKeyInfo'), 2, 'CSR public key');
  const algorithmParts = children(expectTag(algorithm, Tag.SEQUENCE, 'CSR key algorithm'));
  const algorithmText = decodeOid(expectTag(algorithmParts[0], Tag.OID, 'CSR key algorithm').contents);
  const keyBitString = expectTag(keyBits, Tag.BIT_STRING, 'CSR public key bits').contents;
  if (keyBitString.length < 2 || keyBitString[0] !== 0) throw malformed('CSR public key BIT STRING must be non-empty with 0 unused bits');
  const bits = keyBitString.subarray(1);
  let key: CsrPublicKey;
  let canonical: Buffer;
  if (algorithmText === OID.rsaEncryption) {
    if (!algorithm!.raw.equals(RSA_ALGORITHM_IDENTIFIER)) throw malformed('CSR RSA key algorithm must have NULL parameters (RFC 3279)');
    const [modulusElement, exponentElement] = exactChildren(expectTag(readSingle(bits, 'RSAPublicKey'), Tag.SEQUENCE, 'RSAPublicKey'), 2, 'RSAPublicKey');
    const modulus = readUnsignedInteger(modulusElement, 'RSA modulus');
    const exponent = readUnsignedInteger(exponentElement, 'RSA public exponent');
    const modulusBits = modulus[0] === 0 ? 0 : (modulus.length - 1) * 8 + (32 - Math.clz32(modulus[0]!));
    key = { kind: 'rsa', bits: modulusBits, modulus, exponent };
    canonical = rsaSpki(modulus, exponent);
  } else if (algorithmText === OID.ecPublicKey) {
    const parameters = algorithmParts[1];
    if (!parameters || parameters.tag !== Tag.OID || algorithmParts.length !== 2) {
      throw new PkiError('ERR_KEY_UNSUPPORTED', 'EC keys must name their curve (namedCurve OID); explicit or implicit curve parameters are not supported');
    }
    const curveOid = decodeOid(parameters.contents);
    const curve = EC_CURVES.find((c) => c.oid === curveOid);
    if (!curve) throw new PkiError('ERR_KEY_UNSUPPORTED', `unsupported elliptic curve ${curveOid} (use P-256 or P-384)`);
    const form = bits[0];
    if (form === 0x02 || form === 0x03) throw malformed(`CSR EC public key is a compressed point; meshca accepts only the uncompressed form (0x04 || X || Y)`);
    if (form === 0x06 || form === 0x07) throw malformed(`CSR EC public key is a hybrid point; meshca accepts only the uncompressed form (0x04 || X || Y)`);
    if (form !== 0x04) throw malformed(`CSR EC public key has point form 0x${(form ?? 0).toString(16).padStart(2, '0')}; expected 0x04 (uncompressed)`);
    const expected = 1 + 2 * curve.coordinateBytes;
    if (bits.length !== expected) throw malformed(`CSR EC public key point is ${bits.length} bytes; ${curve.curve} needs ${expected}`);
    key = { kind: 'ec', curve: curve.curve, x: bits.subarray(1, 1 + curve.coordinateBytes), y: bits.subarray(1 + curve.coordinateBytes) };
    canonical = ecSpki(curve, bits);
  } else {
    throw new PkiError('ERR_KEY_UNSUPPORTED', `unsupported public key algorithm ${algorithmText} (use RSA or ECDSA)`);
  }
  // Every field above was read strictly, so this holds; comparing makes "the leaf gets the canonical SPKI" hold by check.
  if (!canonical.equals(spkiDer)) throw malformed('CSR public key is not in canonical DER');
  return { key, spkiDer: canonical };
}

/** Cheap policy checks on the key's numbers, done before any import or signature work. */
function assertCsrKeyPolicy(csr: ParsedCsr): void {
  assertKeyStrength(csr.key, 'CSR key');
  const key = csr.publicKey;
  if (key.kind !== 'rsa') return;
  if ((key.modulus[key.modulus.length - 1]! & 1) === 0) throw new PkiError('ERR_KEY_UNSUPPORTED', 'CSR key is not a valid RSA key: its modulus is even');
  const e = key.exponent;
  if (e.length > 4) {
    const eBits = (e.length - 1) * 8 + (32 - Math.clz32(e[0]!));
    throw new PkiError('ERR_KEY_UNSUPPORTED', `CSR key has a ${eBits}-bit RSA public exponent; meshca accepts odd exponents from 3 to 2^32-1 (use 65537)`);
  }
  const value = e.readUIntBE(0, e.length);
  if (value < 3 || value % 2 === 0) {
    throw new PkiError('ERR_KEY_UNSUPPORTED', `CSR key has RSA public exponent ${value}; meshca accepts odd exponents from 3 to 2^32-1 (use 65537)`);
  }
}

/** The signature's shape for its key, before any verification: RSA exactly the modulus size, ECDSA a DER Ecdsa-Sig-Value. */
function assertSignatureShape(csr: ParsedCsr): void {
  const key = csr.publicKey;
  if (key.kind === 'rsa') {
    if (csr.signature.length !== key.modulus.length) {
      throw new PkiError('ERR_CSR_SIGNATURE', `CSR signature is ${csr.signature.length} bytes; an RSA-${key.bits} signature is ${key.modulus.length}`);
    }
    return;
  }
  try {
    const [r, s] = exactChildren(expectTag(readSingle(csr.signature, 'ECDSA signature'), Tag.SEQUENCE, 'ECDSA signature'), 2, 'ECDSA signature');
    for (const value of [readUnsignedInteger(r, 'ECDSA r'), readUnsignedInteger(s, 'ECDSA s')]) {
      if (value.length > key.x.length || (value.length === 1 && value[0] === 0)) throw malformed('out of range');
    }
  } catch {
    throw new PkiError('ERR_CSR_SIGNATURE', 'CSR signature is not a DER ECDSA-Sig-Value { r, s } for its curve');
  }
}

/**
 * Imports the CSR's public key from its already-checked numbers through JWK: OpenSSL 3's SPKI decoder costs more
 * than the signature check itself (~110 us per RSA key, ~150 us per EC key in a signing loop), the JWK import a
 * fraction of that (see bench/NOTES.md). The JWK import refuses an EC point that is not on the curve.
 */
export function csrPublicKey(csr: ParsedCsr): KeyObject {
  const key = csr.publicKey;
  const jwk: JsonWebKey =
    key.kind === 'rsa'
      ? { kty: 'RSA', n: key.modulus.toString('base64url'), e: key.exponent.toString('base64url') }
      : { kty: 'EC', crv: key.curve, x: key.x.toString('base64url'), y: key.y.toString('base64url') };
  try {
    return createPublicKey({ key: jwk, format: 'jwk' });
  } catch (error) {
    throw malformed(
      key.kind === 'ec'
        ? `CSR EC public key is not a point on ${key.curve}`
        : `CSR RSA public key cannot be read: ${(error as Error).message}`,
    );
  }
}

/** Every check of verifyCsr before the signature: policy, algorithm, signature shape, key import. */
function csrVerification(csr: ParsedCsr): { hash: string; publicKey: KeyObject } {
  assertCsrKeyPolicy(csr);
  const algorithm = signatureAlgorithmFor(csr.signatureAlgorithm);
  if (!algorithm) {
    if (csr.signatureAlgorithm === OID_RSASSA_PSS) {
      throw new PkiError('ERR_CSR_SIGNATURE', 'CSR is signed with RSASSA-PSS, which meshca does not accept; sign it with sha256WithRSAEncryption (PKCS#1 v1.5) or ECDSA');
    }
    throw new PkiError('ERR_CSR_SIGNATURE', `CSR signature algorithm ${csr.signatureAlgorithm} is not supported`);
  }
  if (algorithm.keyKind !== csr.key.kind) {
    throw new PkiError('ERR_CSR_SIGNATURE', 'CSR signature algorithm does not match its key type');
  }
  assertSignatureShape(csr);
  return { hash: algorithm.hash, publicKey: csrPublicKey(csr) };
}

function acceptVerified(csr: ParsedCsr, valid: boolean, publicKey: KeyObject): KeyObject {
  if (!valid) throw new PkiError('ERR_CSR_SIGNATURE', 'CSR signature does not verify');
  if (csr.requestsCa) throw new PkiError('ERR_CSR_CA_REQUESTED', 'CSR requests a CA certificate (basicConstraints CA:true)');
  return publicKey;
}

/**
 * The CA's acceptance check: key within policy, algorithm matching the key, self-signature valid over the exact
 * CertificationRequestInfo bytes received, no CA request. Every cheap check runs before the key import and the
 * signature verification. Returns the imported public key.
 * Throws ERR_KEY_WEAK, ERR_KEY_UNSUPPORTED, ERR_CSR_MALFORMED, ERR_CSR_SIGNATURE or ERR_CSR_CA_REQUESTED.
 */
export function verifyCsr(csr: ParsedCsr): KeyObject {
  const { hash, publicKey } = csrVerification(csr);
  let valid = false;
  try {
    valid = verify(hash, csr.info, publicKey, csr.signature);
  } catch {
    valid = false;
  }
  return acceptVerified(csr, valid, publicKey);
}

/**
 * verifyCsr for servers: the same checks in the same order, but a costly verification (a P-384 key, ~1 ms) runs on
 * libuv's thread pool instead of the event loop (off-thread.ts). Rejects with the same PkiErrors.
 */
export async function verifyCsrWithoutBlocking(csr: ParsedCsr): Promise<KeyObject> {
  const { hash, publicKey } = csrVerification(csr);
  const valid = await verifyWithoutBlocking(hash, csr.info, publicKey, csr.signature);
  return acceptVerified(csr, valid, publicKey);
}
