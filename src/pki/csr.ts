/** PKCS#10 certificate signing requests: create (as Istio agents do) and parse/verify (as the CA must). */
import { createPublicKey, sign, verify, type JsonWebKey, type KeyObject } from 'node:crypto';
import { assertKeyStrength, describeSpki, signatureAlgorithmFor, signingProfileFor } from './algorithms.js';
import {
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
  sequence,
  set,
  smallInteger,
  Tag,
  unsignedInteger,
  type DerElement,
} from './der.js';
import { PkiError } from './errors.js';
import { spkiDer as publicKeySpki, type KeyDescription } from './keys.js';
import { OID } from './oids.js';
import { decodeSinglePem, encodePem } from './pem.js';
import { formatName, parseBasicConstraints, parseExtensions, parseSubjectAltNames, type Extension, type SubjectAltNames } from './x509.js';

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

export interface ParsedCsr {
  der: Buffer;
  /** The signed CertificationRequestInfo bytes. */
  info: Buffer;
  subject: string;
  /** SubjectPublicKeyInfo DER, copied verbatim into issued certificates. */
  spkiDer: Buffer;
  key: KeyDescription;
  signatureAlgorithm: string;
  signature: Buffer;
  extensions: Extension[];
  sans: SubjectAltNames;
  requestsCa: boolean;
}

function malformed(message: string): PkiError {
  return new PkiError('ERR_CSR_MALFORMED', message);
}

/** Decodes a CSR from PEM (string) or DER (Buffer). Checks structure and key type, not the signature. */
export function parseCsr(input: string | Buffer): ParsedCsr {
  const der = typeof input === 'string' ? pemToDer(input) : input;
  let top: DerElement;
  try {
    top = expectTag(readSingle(der, 'CSR'), Tag.SEQUENCE, 'CSR');
  } catch (error) {
    throw malformed(`CSR is not valid DER: ${(error as Error).message}`);
  }
  let parsed: Omit<ParsedCsr, 'key'>;
  try {
    const [infoElement, algorithm, signatureElement] = children(top);
    const info = expectTag(infoElement, Tag.SEQUENCE, 'CertificationRequestInfo');
    const [version, subject, spki, attributes] = children(info);
    expectTag(version, Tag.INTEGER, 'CSR version');
    if (version!.contents.length !== 1 || version!.contents[0] !== 0) throw malformed('CSR version must be 1 (0)');
    expectTag(subject, Tag.SEQUENCE, 'CSR subject');
    expectTag(spki, Tag.SEQUENCE, 'CSR public key');
    const extensions = attributes && attributes.tag === 0xa0 ? readRequestedExtensions(attributes) : [];
    const sanExtension = extensions.find((e) => e.oid === OID.subjectAltName);
    const bcExtension = extensions.find((e) => e.oid === OID.basicConstraints);
    const algorithmOid = children(expectTag(algorithm, Tag.SEQUENCE, 'CSR signature algorithm'))[0];
    parsed = {
      der,
      info: info.raw,
      subject: formatName(subject!.raw),
      spkiDer: spki!.raw,
      signatureAlgorithm: decodeOid(expectTag(algorithmOid, Tag.OID, 'CSR signature algorithm').contents),
      signature: expectTag(signatureElement, Tag.BIT_STRING, 'CSR signature').contents.subarray(1),
      extensions,
      sans: sanExtension ? parseSubjectAltNames(sanExtension.value) : { uris: [], dnsNames: [], ipAddresses: [], emails: [] },
      requestsCa: bcExtension ? parseBasicConstraints(bcExtension.value).ca : false,
    };
  } catch (error) {
    if (error instanceof PkiError && error.code === 'ERR_CSR_MALFORMED') throw error;
    throw malformed(`CSR is malformed: ${(error as Error).message}`);
  }
  let key: KeyDescription;
  try {
    key = describeSpki(parsed.spkiDer);
  } catch (error) {
    if (error instanceof PkiError && error.code === 'ERR_KEY_UNSUPPORTED') throw error;
    throw malformed(`CSR public key is malformed: ${(error as Error).message}`);
  }
  return { ...parsed, key };
}

function pemToDer(pem: string): Buffer {
  try {
    return decodeSinglePem(pem, CSR_PEM_LABELS, 'CSR');
  } catch (error) {
    throw malformed((error as Error).message);
  }
}

function readRequestedExtensions(attributes: DerElement): Extension[] {
  const out: Extension[] = [];
  for (const attribute of children(attributes)) {
    const [type, values] = children(expectTag(attribute, Tag.SEQUENCE, 'CSR attribute'));
    if (decodeOid(expectTag(type, Tag.OID, 'CSR attribute type').contents) !== OID.extensionRequest) continue;
    for (const value of children(expectTag(values, Tag.SET, 'CSR attribute values'))) {
      out.push(...parseExtensions(expectTag(value, Tag.SEQUENCE, 'requested extensions')));
    }
  }
  return out;
}

// AlgorithmIdentifier { rsaEncryption, NULL }: the only form the JWK fast path accepts.
const RSA_ALGORITHM_IDENTIFIER = sequence(oid(OID.rsaEncryption), nullValue());

/** A positive INTEGER's magnitude (leading zero dropped), or undefined when the INTEGER is negative or not minimal. */
function positiveIntegerBytes(element: DerElement | undefined): Buffer | undefined {
  if (!element || element.tag !== Tag.INTEGER || element.contents.length === 0) return undefined;
  const bytes = element.contents;
  if ((bytes[0]! & 0x80) !== 0) return undefined;
  if (bytes[0] === 0) return bytes.length > 1 && (bytes[1]! & 0x80) !== 0 ? bytes.subarray(1) : undefined;
  return bytes;
}

/**
 * The JWK of an RSA SubjectPublicKeyInfo, only when the SPKI is exactly the canonical DER of that (n, e): then
 * importing the JWK gives the very key OpenSSL would read from the SPKI that the certificate will carry.
 * Anything unusual returns undefined and goes through OpenSSL's SPKI parser instead.
 */
function canonicalRsaJwk(spkiDer: Buffer): JsonWebKey | undefined {
  try {
    const [algorithm, keyBits, extra] = children(readSingle(spkiDer, 'SubjectPublicKeyInfo'));
    if (extra || !algorithm || !algorithm.raw.equals(RSA_ALGORITHM_IDENTIFIER)) return undefined;
    if (!keyBits || keyBits.tag !== Tag.BIT_STRING || keyBits.contents[0] !== 0) return undefined;
    const rsaKey = readSingle(keyBits.contents.subarray(1), 'RSAPublicKey');
    if (rsaKey.tag !== Tag.SEQUENCE) return undefined;
    const [modulus, exponent, rest] = children(rsaKey);
    const n = positiveIntegerBytes(modulus);
    const e = positiveIntegerBytes(exponent);
    if (rest || !n || !e) return undefined;
    // Re-encoding proves every length and tag was minimal DER: no byte of the SPKI escapes the check.
    const canonical = sequence(RSA_ALGORITHM_IDENTIFIER, bitString(sequence(unsignedInteger(n), unsignedInteger(e))));
    if (!canonical.equals(spkiDer)) return undefined;
    return { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') };
  } catch {
    return undefined;
  }
}

// The canonical SPKI of an EC key on each named curve, up to the uncompressed point's coordinates:
// SEQUENCE { SEQUENCE { ecPublicKey, curve }, BIT STRING { 0x04 || X || Y } }. Built with our own encoder.
const EC_SPKI_PREFIXES: readonly { curve: 'P-256' | 'P-384' | 'P-521'; coordinateBytes: number; prefix: Buffer }[] = (
  [
    ['P-256', OID.prime256v1, 32],
    ['P-384', OID.secp384r1, 48],
    ['P-521', OID.secp521r1, 66],
  ] as const
).map(([curve, curveOid, coordinateBytes]) => {
  const point = Buffer.alloc(1 + 2 * coordinateBytes);
  point[0] = 0x04;
  const spki = sequence(sequence(oid(OID.ecPublicKey), oid(curveOid)), bitString(point));
  return { curve, coordinateBytes, prefix: spki.subarray(0, spki.length - 2 * coordinateBytes) };
});

/**
 * The JWK of an EC SubjectPublicKeyInfo, only when the SPKI is exactly the canonical encoding of an uncompressed
 * point on a named curve; anything else (compressed points, explicit parameters, odd lengths) returns undefined
 * and goes through OpenSSL's SPKI parser. The JWK import checks that the point is on the curve.
 */
function canonicalEcJwk(spkiDer: Buffer): JsonWebKey | undefined {
  for (const { curve, coordinateBytes, prefix } of EC_SPKI_PREFIXES) {
    if (spkiDer.length !== prefix.length + 2 * coordinateBytes) continue;
    if (spkiDer.compare(prefix, 0, prefix.length, 0, prefix.length) !== 0) return undefined;
    const x = spkiDer.subarray(prefix.length, prefix.length + coordinateBytes);
    const y = spkiDer.subarray(prefix.length + coordinateBytes);
    return { kty: 'EC', crv: curve, x: x.toString('base64url'), y: y.toString('base64url') };
  }
  return undefined;
}

/**
 * Imports the CSR's public key through JWK when its SPKI is canonical: OpenSSL 3's SPKI decoder costs more than
 * the signature check itself (~110 us per RSA key, ~150 us per EC key in a signing loop), the JWK import a
 * fraction of that (see bench/NOTES.md). Anything unusual takes the SPKI path, so both read the same key.
 */
export function csrPublicKey(csr: ParsedCsr): KeyObject {
  const jwk = csr.key.kind === 'rsa' ? canonicalRsaJwk(csr.spkiDer) : canonicalEcJwk(csr.spkiDer);
  if (jwk) return createPublicKey({ key: jwk, format: 'jwk' });
  return createPublicKey({ key: csr.spkiDer, format: 'der', type: 'spki' });
}

/**
 * The CA's acceptance check: key strong enough, self-signature valid, no CA request.
 * Returns the imported public key. Throws ERR_KEY_WEAK, ERR_CSR_SIGNATURE or ERR_CSR_CA_REQUESTED.
 */
export function verifyCsr(csr: ParsedCsr): KeyObject {
  assertKeyStrength(csr.key, 'CSR key');
  const algorithm = signatureAlgorithmFor(csr.signatureAlgorithm);
  if (!algorithm) throw new PkiError('ERR_CSR_SIGNATURE', `CSR signature algorithm ${csr.signatureAlgorithm} is not supported`);
  if (algorithm.keyKind !== csr.key.kind) {
    throw new PkiError('ERR_CSR_SIGNATURE', 'CSR signature algorithm does not match its key type');
  }
  let publicKey: KeyObject;
  try {
    publicKey = csrPublicKey(csr);
  } catch (error) {
    throw malformed(`CSR public key cannot be read: ${(error as Error).message}`);
  }
  let valid = false;
  try {
    valid = verify(algorithm.hash, csr.info, publicKey, csr.signature);
  } catch {
    valid = false;
  }
  if (!valid) throw new PkiError('ERR_CSR_SIGNATURE', 'CSR signature does not verify');
  if (csr.requestsCa) throw new PkiError('ERR_CSR_CA_REQUESTED', 'CSR requests a CA certificate (basicConstraints CA:true)');
  return publicKey;
}
