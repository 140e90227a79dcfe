/** Reading X.509 certificates and the pieces shared with CSRs (names, extensions, SANs). */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { children, decodeOid, decodeTime, expectTag, readSingle, readTopSequence, Tag, type DerElement } from './der.js';
import { PkiError } from './errors.js';
import { OID } from './oids.js';

export interface Extension {
  oid: string;
  critical: boolean;
  /** The contents of the extnValue OCTET STRING. */
  value: Buffer;
}

export interface SubjectAltNames {
  uris: string[];
  dnsNames: string[];
  ipAddresses: string[];
  emails: string[];
}

export interface BasicConstraints {
  ca: boolean;
  pathLen?: number;
}

/** KeyUsage bit names in bit order (RFC 5280 4.2.1.3). */
const KEY_USAGE_NAMES = [
  'digitalSignature',
  'nonRepudiation',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
  'encipherOnly',
  'decipherOnly',
] as const;
export type KeyUsageName = (typeof KEY_USAGE_NAMES)[number];

export interface ParsedCertificate {
  der: Buffer;
  tbs: Buffer;
  version: number;
  serial: Buffer;
  serialHex: string;
  issuerDer: Buffer;
  subjectDer: Buffer;
  issuer: string;
  subject: string;
  notBefore: Date;
  notAfter: Date;
  spkiDer: Buffer;
  signatureAlgorithm: string;
  signature: Buffer;
  extensions: Extension[];
  sans: SubjectAltNames;
  basicConstraints: BasicConstraints | null;
  keyUsage: KeyUsageName[] | null;
  extKeyUsage: string[] | null;
  subjectKeyId: Buffer | null;
  authorityKeyId: Buffer | null;
}

function malformed(message: string): PkiError {
  return new PkiError('ERR_CERT_MALFORMED', message);
}

const NAME_LABELS: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '0.9.2342.19200300.100.1.25': 'DC',
  '1.2.840.113549.1.9.1': 'emailAddress',
  '2.5.4.5': 'serialNumber',
};

/** A Name rendered like OpenSSL's one-line form, RDNs in order: "O=cluster.local, CN=root". */
export function formatName(nameDer: Buffer): string {
  const parts: string[] = [];
  for (const rdn of children(readSingle(nameDer, 'Name'))) {
    for (const attribute of children(rdn)) {
      const [type, value] = children(attribute);
      if (!type || !value) continue;
      const oid = decodeOid(type.contents);
      const text = value.tag === 0x1e ? Buffer.from(value.contents).swap16().toString('utf16le') : value.contents.toString('utf8');
      parts.push(`${NAME_LABELS[oid] ?? oid}=${text}`);
    }
  }
  return parts.join(', ');
}

function parseExtensions(extensionsSequence: DerElement): Extension[] {
  return children(extensionsSequence).map((ext) => {
    const parts = children(ext);
    const id = expectTag(parts[0], Tag.OID, 'extension id');
    const critical = parts.length === 3 && parts[1]!.tag === Tag.BOOLEAN && parts[1]!.contents[0] !== 0;
    const value = expectTag(parts[parts.length - 1], Tag.OCTET_STRING, 'extension value');
    return { oid: decodeOid(id.contents), critical, value: value.contents };
  });
}

export function parseSubjectAltNames(value: Buffer): SubjectAltNames {
  const sans: SubjectAltNames = { uris: [], dnsNames: [], ipAddresses: [], emails: [] };
  for (const name of children(readSingle(value, 'subjectAltName'))) {
    switch (name.tag) {
      case 0x86:
        sans.uris.push(name.contents.toString('utf8'));
        break;
      case 0x82:
        sans.dnsNames.push(name.contents.toString('ascii'));
        break;
      case 0x81:
        sans.emails.push(name.contents.toString('ascii'));
        break;
      case 0x87:
        sans.ipAddresses.push(formatIp(name.contents));
        break;
      default:
        break;
    }
  }
  return sans;
}

function formatIp(bytes: Buffer): string {
  if (bytes.length === 4) return [...bytes].join('.');
  const groups: string[] = [];
  for (let i = 0; i + 1 < bytes.length; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return groups.join(':');
}

export function parseBasicConstraints(value: Buffer): BasicConstraints {
  const parts = children(readSingle(value, 'basicConstraints'));
  let ca = false;
  let pathLen: number | undefined;
  for (const part of parts) {
    if (part.tag === Tag.BOOLEAN) ca = part.contents[0] !== 0;
    else if (part.tag === Tag.INTEGER) pathLen = part.contents.readUIntBE(0, Math.min(part.contents.length, 6));
  }
  return pathLen === undefined ? { ca } : { ca, pathLen };
}

function parseKeyUsage(value: Buffer): KeyUsageName[] {
  const bits = expectTag(readSingle(value, 'keyUsage'), Tag.BIT_STRING, 'keyUsage').contents.subarray(1);
  const names: KeyUsageName[] = [];
  KEY_USAGE_NAMES.forEach((name, index) => {
    const byte = bits[index >> 3];
    if (byte !== undefined && (byte & (0x80 >> (index & 7))) !== 0) names.push(name);
  });
  return names;
}

function parseExtKeyUsage(value: Buffer): string[] {
  return children(readSingle(value, 'extKeyUsage')).map((e) => decodeOid(e.contents));
}

function parseAuthorityKeyId(value: Buffer): Buffer | null {
  const keyId = children(readSingle(value, 'authorityKeyIdentifier')).find((e) => e.tag === 0x80);
  return keyId ? keyId.contents : null;
}

export function parseCertificate(der: Buffer): ParsedCertificate {
  const top = readTopSequence(der, 'certificate', malformed);
  try {
    const [tbsElement, sigAlg, sigValue] = children(top);
    const tbs = expectTag(tbsElement, Tag.SEQUENCE, 'TBSCertificate');
    const fields = children(tbs);
    let index = 0;
    let version = 1;
    if (fields[0]?.tag === 0xa0) {
      version = children(fields[0])[0]!.contents[0]! + 1;
      index = 1;
    }
    const serial = expectTag(fields[index], Tag.INTEGER, 'serial number').contents;
    const issuerDer = expectTag(fields[index + 2], Tag.SEQUENCE, 'issuer').raw;
    const validity = children(expectTag(fields[index + 3], Tag.SEQUENCE, 'validity'));
    const subjectDer = expectTag(fields[index + 4], Tag.SEQUENCE, 'subject').raw;
    const spkiDer = expectTag(fields[index + 5], Tag.SEQUENCE, 'subjectPublicKeyInfo').raw;
    const extensionsWrapper = fields.slice(index + 6).find((f) => f.tag === 0xa3);
    const extensions = extensionsWrapper ? parseExtensions(expectTag(children(extensionsWrapper)[0], Tag.SEQUENCE, 'extensions')) : [];
    const find = (oid: string): Extension | undefined => extensions.find((e) => e.oid === oid);
    const san = find(OID.subjectAltName);
    const bc = find(OID.basicConstraints);
    const ku = find(OID.keyUsage);
    const eku = find(OID.extKeyUsage);
    const ski = find(OID.subjectKeyIdentifier);
    const aki = find(OID.authorityKeyIdentifier);
    const algorithm = children(expectTag(sigAlg, Tag.SEQUENCE, 'signatureAlgorithm'))[0];
    // Neither is covered by the signature, so both are pinned down here: RFC 5280 4.1.1.2 wants the outer
    // algorithm identical to the signed one, and a signature is a whole number of bytes.
    if (!sigAlg!.raw.equals(expectTag(fields[index + 1], Tag.SEQUENCE, 'TBSCertificate signature').raw)) {
      throw malformed('signatureAlgorithm differs from the signature algorithm in the TBSCertificate');
    }
    const signatureBits = expectTag(sigValue, Tag.BIT_STRING, 'signature').contents;
    if (signatureBits[0] !== 0) throw malformed('signature BIT STRING has unused bits');
    const signature = signatureBits.subarray(1);
    const serialTrimmed = serial[0] === 0 && serial.length > 1 ? serial.subarray(1) : serial;
    return {
      der,
      tbs: tbs.raw,
      version,
      serial,
      serialHex: serialTrimmed.toString('hex'),
      issuerDer,
      subjectDer,
      issuer: formatName(issuerDer),
      subject: formatName(subjectDer),
      notBefore: decodeTime(validity[0]!.tag, validity[0]!.contents),
      notAfter: decodeTime(validity[1]!.tag, validity[1]!.contents),
      spkiDer,
      signatureAlgorithm: decodeOid(expectTag(algorithm, Tag.OID, 'signature algorithm').contents),
      signature,
      extensions,
      sans: san ? parseSubjectAltNames(san.value) : { uris: [], dnsNames: [], ipAddresses: [], emails: [] },
      basicConstraints: bc ? parseBasicConstraints(bc.value) : null,
      keyUsage: ku ? parseKeyUsage(ku.value) : null,
      extKeyUsage: eku ? parseExtKeyUsage(eku.value) : null,
      subjectKeyId: ski ? expectTag(readSingle(ski.value, 'subjectKeyIdentifier'), Tag.OCTET_STRING, 'subjectKeyIdentifier').contents : null,
      authorityKeyId: aki ? parseAuthorityKeyId(aki.value) : null,
    };
  } catch (error) {
    if (error instanceof PkiError && error.code === 'ERR_CERT_MALFORMED') throw error;
    throw malformed(`certificate is malformed: ${(error as Error).message}`);
  }
}

/**
 * Imported public keys, per parsed certificate: OpenSSL's SPKI import costs ~100 µs, and a root or CA
 * certificate verifies every chain it anchors. KeyObjects are immutable, so sharing one is safe.
 */
const publicKeys = new WeakMap<ParsedCertificate, KeyObject>();

export function certificatePublicKey(cert: ParsedCertificate): KeyObject {
  let key = publicKeys.get(cert);
  if (!key) {
    key = createPublicKey({ key: cert.spkiDer, format: 'der', type: 'spki' });
    publicKeys.set(cert, key);
  }
  return key;
}

export function isCaCertificate(cert: ParsedCertificate): boolean {
  return cert.basicConstraints?.ca === true;
}
