/** PKCS#10 certificate signing requests: create (as Istio agents do) and parse/verify (as the CA must). */
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { assertKeyStrength, describeSpki, signatureAlgorithmFor, signingProfileFor } from './algorithms.js';
import {
  bitString,
  boolean,
  children,
  decodeOid,
  expectTag,
  explicit,
  implicitPrimitive,
  oid,
  octetString,
  readSingle,
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

/** Imports the CSR's public key. Kept in one place so the import strategy can be tuned for speed. */
export function csrPublicKey(csr: ParsedCsr): KeyObject {
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
