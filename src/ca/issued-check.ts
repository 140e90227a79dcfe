/**
 * The last check between a signer and a workload: before a chain is returned it must certify exactly the key and
 * identities the policy granted, be ordered leaf → intermediates → bundle, and verify against the trust bundle
 * the CA publishes. A signing fault (another key's certificate, a broken or reordered chain, a stale bundle) then
 * ends as an error instead of a certificate that workloads reject, or worse, accept.
 *
 * Cheap by design, since it runs on every request: the leaf is parsed once and its signature verified with the
 * issuer's public KeyObject, cached per chain element. Chain elements are the signer's own PEM strings, which only
 * change with the CA material, so the links above the leaf are verified once per distinct pair and remembered.
 */
import { verify, type KeyObject } from 'node:crypto';
import { signatureAlgorithmFor } from '../pki/algorithms.js';
import { children, decodeOid, decodeTime, expectTag, readSingle, Tag, type DerElement } from '../pki/der.js';
import { parseBasicConstraints, parseSubjectAltNames, type SubjectAltNames } from '../pki/x509.js';
import {
  certificatePublicKey,
  certificatesFromPem,
  certificateToPem,
  CSR_PEM_LABELS,
  decodeSinglePem,
  parseCertificate,
  type ParsedCertificate,
} from '../pki/index.js';
import { CaError } from './errors.js';
import type { SignedChain } from './signer.js';

export interface IssuedChainExpectation {
  /** The URI SANs the leaf must carry, exactly (order does not matter). */
  identities: readonly string[];
  /** DNS SANs the leaf must carry, exactly; none for workload certificates. */
  dnsNames?: readonly string[];
  /** SubjectPublicKeyInfo DER of the CSR: the leaf must certify this key. */
  spkiDer: Buffer;
  /**
   * The trust bundles the CA published while the request ran (before and after signing): the last element of
   * the chain must be one of them, so that a material swap during signing is not mistaken for a fault.
   */
  advertisedBundles: readonly string[];
}

interface CachedCertificate {
  cert: ParsedCertificate;
  publicKey: KeyObject;
}

interface CachedBundle {
  roots: CachedCertificate[];
}

/** Material changes rarely; a few entries cover a rotation's overlap. Past this the caches start over. */
const MAX_CACHE_ENTRIES = 64;

function refuse(reason: string): CaError {
  return new CaError('CERT_GEN_ERROR', `the issued certificate failed the final check and was not handed out: ${reason}`);
}

/** What the check needs of a leaf. */
interface LeafView {
  tbs: Buffer;
  signatureAlgorithm: string;
  signature: Buffer;
  serialHex: string;
  issuerDer: Buffer;
  spkiDer: Buffer;
  notBefore: Date;
  notAfter: Date;
  sans: SubjectAltNames;
  isCa: boolean;
}

// Extension OIDs as DER contents, compared as bytes: decoding every OID of every leaf would cost more.
const SUBJECT_ALT_NAME_OID = Buffer.from([0x55, 0x1d, 0x11]);
const BASIC_CONSTRAINTS_OID = Buffer.from([0x55, 0x1d, 0x13]);

/**
 * Reads a leaf for the check: a third of the cost of `parseCertificate`, which also renders names and decodes
 * every extension. Strict where the signature does not reach: one outer algorithm identical to the signed one,
 * a signature of whole bytes, nothing after the signature.
 */
function readLeaf(der: Buffer): LeafView {
  const [tbsElement, algorithm, signatureElement, extra] = children(expectTag(readSingle(der, 'certificate'), Tag.SEQUENCE, 'certificate'));
  if (extra) throw new Error('trailing data after the signature');
  const tbs = expectTag(tbsElement, Tag.SEQUENCE, 'TBSCertificate');
  const fields = children(tbs);
  const at = fields[0]?.tag === 0xa0 ? 1 : 0;
  const serial = expectTag(fields[at], Tag.INTEGER, 'serial number').contents;
  if (!expectTag(algorithm, Tag.SEQUENCE, 'signatureAlgorithm').raw.equals(expectTag(fields[at + 1], Tag.SEQUENCE, 'signature').raw)) {
    throw new Error('the outer signature algorithm differs from the signed one');
  }
  const validity = children(expectTag(fields[at + 3], Tag.SEQUENCE, 'validity'));
  const bits = expectTag(signatureElement, Tag.BIT_STRING, 'signature').contents;
  if (bits[0] !== 0) throw new Error('the signature BIT STRING has unused bits');
  let sans: SubjectAltNames = { uris: [], dnsNames: [], ipAddresses: [], emails: [] };
  let isCa = false;
  const extensions = fields.slice(at + 6).find((f) => f.tag === 0xa3);
  if (extensions) {
    for (const extension of children(expectTag(children(extensions)[0], Tag.SEQUENCE, 'extensions'))) {
      const parts: DerElement[] = children(extension);
      const id = expectTag(parts[0], Tag.OID, 'extension id').contents;
      const value = expectTag(parts[parts.length - 1], Tag.OCTET_STRING, 'extension value').contents;
      if (id.equals(SUBJECT_ALT_NAME_OID)) sans = parseSubjectAltNames(value);
      else if (id.equals(BASIC_CONSTRAINTS_OID)) isCa = parseBasicConstraints(value).ca;
    }
  }
  return {
    tbs: tbs.raw,
    signatureAlgorithm: decodeOid(expectTag(children(algorithm!)[0], Tag.OID, 'signature algorithm').contents),
    signature: bits.subarray(1),
    serialHex: (serial[0] === 0 && serial.length > 1 ? serial.subarray(1) : serial).toString('hex'),
    issuerDer: expectTag(fields[at + 2], Tag.SEQUENCE, 'issuer').raw,
    spkiDer: expectTag(fields[at + 5], Tag.SEQUENCE, 'subjectPublicKeyInfo').raw,
    notBefore: decodeTime(validity[0]!.tag, validity[0]!.contents),
    notAfter: decodeTime(validity[1]!.tag, validity[1]!.contents),
    sans,
    isCa,
  };
}

function signedBy(cert: Pick<ParsedCertificate, 'issuerDer' | 'signatureAlgorithm' | 'tbs' | 'signature'>, issuer: CachedCertificate): boolean {
  if (!cert.issuerDer.equals(issuer.cert.subjectDer)) return false;
  const algorithm = signatureAlgorithmFor(cert.signatureAlgorithm);
  if (!algorithm) return false;
  try {
    return verify(algorithm.hash, cert.tbs, issuer.publicKey, cert.signature);
  } catch {
    return false;
  }
}

function sameSet(actual: readonly string[], expected: readonly string[]): boolean {
  if (actual.length !== expected.length) return false;
  const wanted = new Set(expected);
  return wanted.size === actual.length && actual.every((value) => wanted.has(value));
}

function normalSerial(hex: string): string {
  return hex.toLowerCase().replace(/^0+(?=.)/, '');
}

function setCapped<K, V>(map: Map<K, V>, key: K, value: V): void {
  if (map.size >= MAX_CACHE_ENTRIES) map.clear();
  map.set(key, value);
}

export class IssuedChainChecker {
  private readonly elements = new Map<string, CachedCertificate>();
  private readonly bundles = new Map<string, CachedBundle>();
  /** child PEM → parent PEM (or bundle) it was verified against. */
  private readonly verifiedLinks = new Map<string, string>();
  private readonly now: () => number;

  constructor(options: { now?: () => number } = {}) {
    this.now = options.now ?? Date.now;
  }

  /** Throws CaError CERT_GEN_ERROR naming the first problem; returns normally when the chain may be handed out. */
  check(signed: SignedChain, expected: IssuedChainExpectation): void {
    const chain = signed.chain;
    if (chain.length < 2) throw refuse(`the chain has ${chain.length} element(s); a leaf and the trust bundle are required`);
    const bundlePem = chain[chain.length - 1]!;
    if (!expected.advertisedBundles.includes(bundlePem)) throw refuse('the last element of the chain is not the trust bundle this CA publishes');
    const bundle = this.bundle(bundlePem);

    if (chain[0] !== certificateToPem(signed.leafDer)) throw refuse('the first element of the chain is not the issued leaf certificate');
    let leaf: LeafView;
    try {
      leaf = readLeaf(signed.leafDer);
    } catch (error) {
      throw refuse(`the leaf cannot be parsed: ${(error as Error).message}`);
    }
    if (!leaf.spkiDer.equals(expected.spkiDer)) throw refuse('the leaf certifies a different public key than the CSR');
    if (leaf.isCa) throw refuse('the leaf is a CA certificate');
    if (!sameSet(leaf.sans.uris, expected.identities)) {
      throw refuse(`the leaf names URI SANs [${leaf.sans.uris.join(', ')}] but the caller was granted [${expected.identities.join(', ')}]`);
    }
    if (!sameSet(leaf.sans.dnsNames, expected.dnsNames ?? []) || leaf.sans.ipAddresses.length > 0 || leaf.sans.emails.length > 0) {
      throw refuse('the leaf names SANs that were not granted');
    }
    const now = this.now();
    if (leaf.notAfter.getTime() <= now || leaf.notBefore.getTime() > now) throw refuse('the leaf is not valid now');
    if (normalSerial(signed.serialHex) !== normalSerial(leaf.serialHex)) throw refuse("the reported serial number is not the leaf's");

    // The leaf's issuer is the element after it; with no intermediates, a root of the bundle.
    if (chain.length === 2) {
      if (!bundle.roots.some((root) => signedBy(leaf, root))) throw refuse('the leaf does not verify against any root of the trust bundle');
      return;
    }
    const issuer = this.element(chain[1]!);
    if (!signedBy(leaf, issuer)) throw refuse('the leaf is not signed by the next certificate of the chain');
    for (let index = 1; index < chain.length - 1; index++) {
      const childPem = chain[index]!;
      const parentPem = chain[index + 1]!;
      if (this.verifiedLinks.get(childPem) === parentPem) continue;
      const child = this.element(childPem);
      const last = index === chain.length - 2;
      const linked = last ? bundle.roots.some((root) => signedBy(child.cert, root)) : signedBy(child.cert, this.element(parentPem));
      if (!linked) {
        throw refuse(
          last
            ? `chain element ${index} ("${child.cert.subject}") does not verify against any root of the trust bundle`
            : `chain element ${index} ("${child.cert.subject}") is not signed by the element after it`,
        );
      }
      setCapped(this.verifiedLinks, childPem, parentPem);
    }
  }

  /** One intermediate element: exactly one CA certificate, parsed and its key imported once. */
  private element(pem: string): CachedCertificate {
    const cached = this.elements.get(pem);
    if (cached) return cached;
    let certs: Buffer[];
    try {
      certs = certificatesFromPem(pem);
    } catch (error) {
      throw refuse(`a chain element is not PEM: ${(error as Error).message}`);
    }
    if (certs.length !== 1) throw refuse(`a chain element holds ${certs.length} certificates; each intermediate must be its own element`);
    const entry = this.load(certs[0]!);
    if (entry.cert.basicConstraints?.ca !== true) throw refuse(`chain element "${entry.cert.subject}" is not a CA certificate`);
    setCapped(this.elements, pem, entry);
    return entry;
  }

  private bundle(pem: string): CachedBundle {
    const cached = this.bundles.get(pem);
    if (cached) return cached;
    let roots: CachedCertificate[];
    try {
      roots = certificatesFromPem(pem).map((der) => this.load(der));
    } catch (error) {
      throw refuse(`the trust bundle cannot be read: ${(error as Error).message}`);
    }
    if (roots.length === 0) throw refuse('the trust bundle holds no certificate');
    const entry = { roots };
    setCapped(this.bundles, pem, entry);
    return entry;
  }

  private load(der: Buffer): CachedCertificate {
    try {
      const cert = parseCertificate(der);
      return { cert, publicKey: certificatePublicKey(cert) };
    } catch (error) {
      throw refuse(`a CA certificate of the chain cannot be read: ${(error as Error).message}`);
    }
  }
}

/**
 * The SubjectPublicKeyInfo of a PEM CSR, read without the full parse and checks of `parseCsr` (which the policy
 * has already run on the same text): only to know which key the issued leaf must certify.
 */
export function csrPublicKeyInfo(csrPem: string): Buffer {
  try {
    const der = decodeSinglePem(csrPem, CSR_PEM_LABELS, 'CSR');
    const [info] = children(readSingle(der, 'CSR'));
    const spki = children(expectTag(info, Tag.SEQUENCE, 'CertificationRequestInfo'))[2];
    return expectTag(spki, Tag.SEQUENCE, 'CSR public key').raw;
  } catch (error) {
    throw refuse(`the CSR's public key cannot be read: ${(error as Error).message}`);
  }
}
