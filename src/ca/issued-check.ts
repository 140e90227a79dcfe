/**
 * The last check between a signer and a workload: before a chain is returned it must certify exactly the key and
 * identity the policy granted, in meshca's leaf profile (an empty subject, so no CN; a subjectAltName of exactly one
 * URI and nothing else: no DNS name, email or IP), be ordered leaf → intermediates → bundle, and verify against the
 * trust bundle the CA publishes. The profile holds for every key source (local, a `--workers` snapshot signer, Vault
 * role or intermediate mode): TLS clients fall back to the subject CN when a certificate has no DNS SAN, so a leaf
 * with a CN or DNS name a workload chose could pose as a server (the CA itself) to them. A signing fault (another key's certificate, a broken or reordered chain, a stale bundle) then
 * ends as an error instead of a certificate that workloads reject, or worse, accept.
 *
 * Cheap by design, since it runs on every request: the leaf is read once (the algorithm and validity decodings
 * are reused while their bytes repeat) and its signature verified with the issuer's public KeyObject, cached per
 * chain element. Chain elements are the signer's own PEM strings, which only change with the CA material, so the
 * links above the leaf are verified once per distinct pair and remembered.
 *
 * One exception to the per-leaf signature verification, see `mayTrustSignature`: RSA leaves of a key source that
 * declares it signs in this process with the issuer certificate's own key (`inProcessMaterial`) are verified for the
 * first leaf of each issuer certificate only, then checked structurally.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { signatureAlgorithmFor, type SignatureAlgorithm } from '../pki/algorithms.js';
import { children, decodeOid, decodeTime, expectTag, readSingle, Tag, type DerElement } from '../pki/der.js';
import { parseBasicConstraints, parseSubjectAltNames, type SubjectAltNames } from '../pki/x509.js';
import { certificatePublicKey, certificatesFromPem, certificateToPem, parseCertificate, verifyWithoutBlocking, type ParsedCertificate } from '../pki/index.js';
import { WithheldChainError } from './errors.js';
import type { SignedChain, WorkloadSigner } from './signer.js';

export interface IssuedChainExpectation {
  /** The URI SAN the leaf must carry: exactly one identity, and the leaf's only SAN. */
  identities: readonly string[];
  /** SubjectPublicKeyInfo DER of the CSR: the leaf must certify this key. */
  spkiDer: Buffer;
  /**
   * The trust bundles the CA published while the request ran (before and after signing): the last element of
   * the chain must be one of them, so that a material swap during signing is not mistaken for a fault.
   */
  advertisedBundles: readonly string[];
  /**
   * The key source that produced the chain. Only its declared capability is used: `inProcessMaterial()`, the key it
   * signs with in this process, lets RSA leaves of an issuer with that very key skip the per-leaf verification
   * (see `mayTrustSignature`); omitted, or declaring none, every leaf is verified.
   */
  signer?: Pick<WorkloadSigner, 'inProcessMaterial'>;
}

interface CachedCertificate {
  cert: ParsedCertificate;
  publicKey: KeyObject;
  /** RSA issuers: the modulus length in bytes, which every PKCS#1 v1.5 signature by this key has exactly. */
  rsaSignatureBytes: number | undefined;
  /** The signature AlgorithmIdentifier of the first in-process leaf verified against this certificate. */
  verifiedLocalLeafAlgorithm?: Buffer;
  /** The in-process private key last found to belong to this certificate (its public key equals the certificate's). */
  matchingKey?: KeyObject;
}

interface CachedBundle {
  roots: CachedCertificate[];
}

/** Material changes rarely; a few entries cover a rotation's overlap. Past this the caches start over. */
const MAX_CACHE_ENTRIES = 64;

function refuse(reason: string): WithheldChainError {
  return new WithheldChainError(`the issued certificate failed the final check and was not handed out: ${reason}`);
}

/** What the check needs of a leaf. */
interface LeafView {
  tbs: Buffer;
  /** The DER AlgorithmIdentifier (outer and signed, which must be identical) and what it names. */
  algorithmRaw: Buffer;
  algorithm: SignatureAlgorithm | undefined;
  signature: Buffer;
  serialHex: string;
  issuerDer: Buffer;
  spkiDer: Buffer;
  notBeforeMs: number;
  notAfterMs: number;
  /** The subject Name DER; the profile requires an empty SEQUENCE. */
  subjectDer: Buffer;
  sans: SubjectAltNames;
  /** GeneralNames across all subjectAltName extensions, of any type (otherName, directoryName... included). */
  sanCount: number;
  sanExtensions: number;
  isCa: boolean;
}

/**
 * Decodings the leaves of one signer share: every leaf carries the same AlgorithmIdentifier, and leaves issued in
 * the same second with the same TTL the same Validity. Keyed by the exact bytes, so a different encoding is
 * always decoded afresh.
 */
interface ReadCache {
  algorithmRaw?: Buffer;
  algorithm?: SignatureAlgorithm | undefined;
  validityRaw?: Buffer;
  notBeforeMs?: number;
  notAfterMs?: number;
}

// Extension OIDs as DER contents, compared as bytes: decoding every OID of every leaf would cost more.
const SUBJECT_ALT_NAME_OID = Buffer.from([0x55, 0x1d, 0x11]);
const BASIC_CONSTRAINTS_OID = Buffer.from([0x55, 0x1d, 0x13]);

/**
 * Reads a leaf for the check: a third of the cost of `parseCertificate`, which also renders names and decodes
 * every extension. Strict where the signature does not reach: one outer algorithm identical to the signed one,
 * a signature of whole bytes, nothing after the signature.
 */
function readLeaf(der: Buffer, cache: ReadCache): LeafView {
  const [tbsElement, algorithm, signatureElement, extra] = children(expectTag(readSingle(der, 'certificate'), Tag.SEQUENCE, 'certificate'));
  if (extra) throw new Error('trailing data after the signature');
  const tbs = expectTag(tbsElement, Tag.SEQUENCE, 'TBSCertificate');
  const fields = children(tbs);
  const at = fields[0]?.tag === 0xa0 ? 1 : 0;
  const serial = expectTag(fields[at], Tag.INTEGER, 'serial number').contents;
  const algorithmRaw = expectTag(algorithm, Tag.SEQUENCE, 'signatureAlgorithm').raw;
  if (!algorithmRaw.equals(expectTag(fields[at + 1], Tag.SEQUENCE, 'signature').raw)) {
    throw new Error('the outer signature algorithm differs from the signed one');
  }
  if (!cache.algorithmRaw?.equals(algorithmRaw)) {
    const resolved = signatureAlgorithmFor(decodeOid(expectTag(children(algorithm!)[0], Tag.OID, 'signature algorithm').contents));
    cache.algorithm = resolved;
    cache.algorithmRaw = Buffer.from(algorithmRaw);
  }
  const validityElement = expectTag(fields[at + 3], Tag.SEQUENCE, 'validity');
  const validityRaw = validityElement.raw;
  if (!cache.validityRaw?.equals(validityRaw)) {
    const validity = children(validityElement);
    if (validity.length !== 2) throw new Error('the validity is malformed');
    const notBeforeMs = decodeTime(validity[0]!.tag, validity[0]!.contents).getTime();
    const notAfterMs = decodeTime(validity[1]!.tag, validity[1]!.contents).getTime();
    // Copied: the cache must not keep a view of (and be changed with) one leaf's buffer.
    Object.assign(cache, { validityRaw: Buffer.from(validityRaw), notBeforeMs, notAfterMs });
  }
  const bits = expectTag(signatureElement, Tag.BIT_STRING, 'signature').contents;
  if (bits[0] !== 0) throw new Error('the signature BIT STRING has unused bits');
  let sans: SubjectAltNames = { uris: [], dnsNames: [], ipAddresses: [], emails: [] };
  let sanCount = 0;
  let sanExtensions = 0;
  let isCa = false;
  let extensions: DerElement | undefined;
  for (let index = at + 6; index < fields.length && !extensions; index++) if (fields[index]!.tag === 0xa3) extensions = fields[index];
  if (extensions) {
    for (const extension of children(expectTag(children(extensions)[0], Tag.SEQUENCE, 'extensions'))) {
      const parts: DerElement[] = children(extension);
      const id = expectTag(parts[0], Tag.OID, 'extension id').contents;
      const value = expectTag(parts[parts.length - 1], Tag.OCTET_STRING, 'extension value').contents;
      if (id.equals(SUBJECT_ALT_NAME_OID)) {
        sans = parseSubjectAltNames(value);
        sanCount += children(readSingle(value, 'subjectAltName')).length;
        sanExtensions++;
      }
      else if (id.equals(BASIC_CONSTRAINTS_OID)) isCa = parseBasicConstraints(value).ca;
    }
  }
  return {
    tbs: tbs.raw,
    algorithmRaw,
    algorithm: cache.algorithm,
    signature: bits.subarray(1),
    serialHex: (serial[0] === 0 && serial.length > 1 ? serial.subarray(1) : serial).toString('hex'),
    issuerDer: expectTag(fields[at + 2], Tag.SEQUENCE, 'issuer').raw,
    spkiDer: expectTag(fields[at + 5], Tag.SEQUENCE, 'subjectPublicKeyInfo').raw,
    subjectDer: expectTag(fields[at + 4], Tag.SEQUENCE, 'subject').raw,
    notBeforeMs: cache.notBeforeMs!,
    notAfterMs: cache.notAfterMs!,
    sans,
    sanCount,
    sanExtensions,
    isCa,
  };
}

function signedBy(cert: Pick<ParsedCertificate, 'issuerDer' | 'signatureAlgorithm' | 'tbs' | 'signature'>, issuer: CachedCertificate): boolean {
  if (!cert.issuerDer.equals(issuer.cert.subjectDer)) return false;
  return verifies(signatureAlgorithmFor(cert.signatureAlgorithm), cert.tbs, cert.signature, issuer);
}

function verifies(algorithm: SignatureAlgorithm | undefined, tbs: Buffer, signature: Buffer, issuer: CachedCertificate): boolean {
  if (!algorithm) return false;
  try {
    return verify(algorithm.hash, tbs, issuer.publicKey, signature);
  } catch {
    return false;
  }
}

/**
 * Whether the leaf's signature may be trusted without verifying it: only for an RSA issuer whose public key is that
 * of the private key the key source declares it signs with in this process (`inProcessMaterial`), and against which an
 * earlier leaf with the same signature AlgorithmIdentifier has been verified.
 *
 * Fault by fault, what verifying every leaf caught and what catches it on this path:
 * - A leaf signed by another key than the issuer certificate's (a mixed-up material, a stale key): the declared
 *   key is compared with the issuer certificate here (and `buildCaMaterial` → `assertSigningMaterial` asserted the
 *   match when the material was built); a key source swapping material between signing and this check makes the
 *   key and the issuer differ, and the leaf is verified. Structurally the leaf must still name this issuer and use
 *   the verified algorithm.
 * - A systematic encoding fault (wrong hash for the algorithm, signature or TBS bytes misplaced): the first leaf
 *   of every issuer certificate is verified, so the material's first certificate is refused, and LeafIssuer writes
 *   every RSA leaf the same way (the signature is always the modulus length, checked here).
 * - A computation fault in the private-key operation (the RSA-CRT "Bellcore" fault): OpenSSL 3.0 checks the CRT
 *   exponentiation of every RSA private operation itself (rsa_ossl_mod_exp raises the result to e and compares it
 *   with its input; on a mismatch it recomputes without CRT), so a faulted CRT result never leaves `crypto.sign`.
 *   Left unverified per leaf: the steps around it (hash, padding, unblinding, the copy into the certificate),
 *   deterministic code whose systematic faults the first-leaf verification catches; a random hardware fault there
 *   is of the kind the check never covered (bytes changed after it).
 * ECDSA has no such self-check in OpenSSL, so EC leaves are always verified; so are chains from any key source that
 * declares no in-process key (Vault, wrappers, a worker forwarding to its primary): this process cannot vouch for it.
 */
function mayTrustSignature(leaf: LeafView, issuer: CachedCertificate, inProcess: boolean): boolean {
  return (
    inProcess &&
    issuer.rsaSignatureBytes !== undefined &&
    leaf.signature.length === issuer.rsaSignatureBytes &&
    issuer.verifiedLocalLeafAlgorithm !== undefined &&
    issuer.verifiedLocalLeafAlgorithm.equals(leaf.algorithmRaw)
  );
}

/**
 * The leaf against one issuer certificate before any signature work: false when it names another issuer, true when
 * `mayTrustSignature` allows it, 'verify' when its signature must be verified.
 */
function leafVerdict(leaf: LeafView, issuer: CachedCertificate, inProcessKey: KeyObject | null): boolean | 'verify' {
  if (!leaf.issuerDer.equals(issuer.cert.subjectDer)) return false;
  const inProcess = inProcessKey !== null && keyBelongsTo(inProcessKey, issuer);
  return mayTrustSignature(leaf, issuer, inProcess) ? true : 'verify';
}

/** After a verified leaf: remembers the algorithm an in-process RSA key's leaves may be trusted with. */
function noteVerifiedLeaf(leaf: LeafView, issuer: CachedCertificate, inProcessKey: KeyObject | null): void {
  const inProcess = inProcessKey !== null && keyBelongsTo(inProcessKey, issuer);
  if (inProcess && issuer.rsaSignatureBytes !== undefined && leaf.signature.length === issuer.rsaSignatureBytes) {
    issuer.verifiedLocalLeafAlgorithm = Buffer.from(leaf.algorithmRaw);
  }
}

/** The leaf against one issuer certificate: the name, then the signature, verified unless `mayTrustSignature`. */
function leafSignedBy(leaf: LeafView, issuer: CachedCertificate, inProcessKey: KeyObject | null): boolean {
  const verdict = leafVerdict(leaf, issuer, inProcessKey);
  if (verdict !== 'verify') return verdict;
  if (!verifies(leaf.algorithm, leaf.tbs, leaf.signature, issuer)) return false;
  noteVerifiedLeaf(leaf, issuer, inProcessKey);
  return true;
}

/** leafSignedBy with a costly verification (a P-384 issuer) on libuv's thread pool, not the event loop. */
async function leafSignedByWithoutBlocking(leaf: LeafView, issuer: CachedCertificate, inProcessKey: KeyObject | null): Promise<boolean> {
  const verdict = leafVerdict(leaf, issuer, inProcessKey);
  if (verdict !== 'verify') return verdict;
  if (!leaf.algorithm || !(await verifyWithoutBlocking(leaf.algorithm.hash, leaf.tbs, issuer.publicKey, leaf.signature))) return false;
  noteVerifiedLeaf(leaf, issuer, inProcessKey);
  return true;
}

/** True when `key` is the private key of the issuer certificate; remembered per certificate for the last key seen. */
function keyBelongsTo(key: KeyObject, issuer: CachedCertificate): boolean {
  if (issuer.matchingKey === key) return true;
  let matches: boolean;
  try {
    matches = createPublicKey(key).equals(issuer.publicKey);
  } catch {
    matches = false;
  }
  if (!matches) return false;
  if (issuer.matchingKey !== undefined) issuer.verifiedLocalLeafAlgorithm = undefined;
  issuer.matchingKey = key;
  return true;
}

/** An empty subject: a SEQUENCE with no RDN (DER 30 00). */
function emptyName(der: Buffer): boolean {
  return der.length === 2 && der[1] === 0;
}

/**
 * meshca's leaf profile: the subject is empty (no CN, nothing a TLS client could match a host name against), and
 * the one subjectAltName extension names exactly the granted URI, nothing else.
 */
function checkProfile(leaf: LeafView, leafDer: Buffer, expected: IssuedChainExpectation): void {
  if (!emptyName(leaf.subjectDer)) {
    let subject: string;
    try {
      subject = parseCertificate(leafDer).subject;
    } catch {
      subject = '(unreadable)';
    }
    throw refuse(`the leaf has a subject ("${subject}"); workload certificates carry an empty subject (no CN) and only their URI SAN`);
  }
  if (leaf.sans.dnsNames.length > 0 || leaf.sans.ipAddresses.length > 0 || leaf.sans.emails.length > 0) {
    const extra = [...leaf.sans.dnsNames.map((n) => `DNS:${n}`), ...leaf.sans.emails.map((n) => `email:${n}`), ...leaf.sans.ipAddresses.map((n) => `IP:${n}`)];
    throw refuse(`the leaf names SANs that were not granted (${extra.join(', ')}); workload certificates carry exactly one URI SAN`);
  }
  if (leaf.sanExtensions !== 1 || leaf.sanCount !== 1 || leaf.sans.uris.length !== 1 || expected.identities.length !== 1) {
    throw refuse(
      `the leaf names ${leaf.sanCount} subjectAltName(s) in ${leaf.sanExtensions} extension(s) (URIs [${leaf.sans.uris.join(', ')}]); workload certificates carry exactly one, the granted URI [${expected.identities.join(', ')}]`,
    );
  }
  if (!sameSet(leaf.sans.uris, expected.identities)) {
    throw refuse(`the leaf names URI SANs [${leaf.sans.uris.join(', ')}] but the caller was granted [${expected.identities.join(', ')}]`);
  }
}

function sameSet(actual: readonly string[], expected: readonly string[]): boolean {
  if (actual.length !== expected.length) return false;
  if (actual.length === 1) return actual[0] === expected[0];
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
  private readonly readCache: ReadCache = {};
  private readonly now: () => number;

  constructor(options: { now?: () => number } = {}) {
    this.now = options.now ?? Date.now;
  }

  /** Throws CaError CERT_GEN_ERROR naming the first problem; returns normally when the chain may be handed out. */
  check(signed: SignedChain, expected: IssuedChainExpectation): void {
    const leaf = this.leafToVerify(signed, expected);
    if (!leaf.issuers.some((issuer) => leafSignedBy(leaf.view, issuer, leaf.inProcessKey))) throw refuse(leaf.refusal);
    this.checkLinks(signed.chain, leaf.bundle);
  }

  /**
   * `check` for the request path: the leaf's signature, when costly to verify (a P-384 issuer, ~1 ms), is verified
   * on libuv's thread pool instead of the event loop (pki/off-thread.ts). Rejects with the same CaErrors.
   */
  async checkWithoutBlocking(signed: SignedChain, expected: IssuedChainExpectation): Promise<void> {
    const leaf = this.leafToVerify(signed, expected);
    let signedByIssuer = false;
    for (const issuer of leaf.issuers) {
      if (await leafSignedByWithoutBlocking(leaf.view, issuer, leaf.inProcessKey)) {
        signedByIssuer = true;
        break;
      }
    }
    if (!signedByIssuer) throw refuse(leaf.refusal);
    this.checkLinks(signed.chain, leaf.bundle);
  }

  /**
   * Every check but the signatures: the chain's shape and bundle, the leaf's key, profile, validity and serial.
   * Returns the leaf and the certificates that may have signed it: the element after it, or with no intermediates
   * the bundle's roots.
   */
  private leafToVerify(
    signed: SignedChain,
    expected: IssuedChainExpectation,
  ): { view: LeafView; issuers: readonly CachedCertificate[]; inProcessKey: KeyObject | null; bundle: CachedBundle; refusal: string } {
    const chain = signed.chain;
    if (chain.length < 2) throw refuse(`the chain has ${chain.length} element(s); a leaf and the trust bundle are required`);
    const bundlePem = chain[chain.length - 1]!;
    if (!expected.advertisedBundles.includes(bundlePem)) throw refuse('the last element of the chain is not the trust bundle this CA publishes');
    const bundle = this.bundle(bundlePem);

    if (chain[0] !== certificateToPem(signed.leafDer)) throw refuse('the first element of the chain is not the issued leaf certificate');
    let leaf: LeafView;
    try {
      leaf = readLeaf(signed.leafDer, this.readCache);
    } catch (error) {
      throw refuse(`the leaf cannot be parsed: ${(error as Error).message}`);
    }
    if (!leaf.spkiDer.equals(expected.spkiDer)) throw refuse('the leaf certifies a different public key than the CSR');
    if (leaf.isCa) throw refuse('the leaf is a CA certificate');
    checkProfile(leaf, signed.leafDer, expected);
    const now = this.now();
    if (leaf.notAfterMs <= now || leaf.notBeforeMs > now) throw refuse('the leaf is not valid now');
    if (normalSerial(signed.serialHex) !== normalSerial(leaf.serialHex)) throw refuse("the reported serial number is not the leaf's");

    const inProcessKey = expected.signer?.inProcessMaterial?.()?.privateKey ?? null;
    if (chain.length === 2) return { view: leaf, issuers: bundle.roots, inProcessKey, bundle, refusal: 'the leaf does not verify against any root of the trust bundle' };
    return { view: leaf, issuers: [this.element(chain[1]!)], inProcessKey, bundle, refusal: 'the leaf is not signed by the next certificate of the chain' };
  }

  /** Each intermediate against the element after it, the last against the bundle's roots; verified links are remembered. */
  private checkLinks(chain: readonly string[], bundle: CachedBundle): void {
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
      const publicKey = certificatePublicKey(cert);
      const modulusBits = publicKey.asymmetricKeyType === 'rsa' ? publicKey.asymmetricKeyDetails?.modulusLength : undefined;
      return { cert, publicKey, rsaSignatureBytes: modulusBits === undefined ? undefined : Math.ceil(modulusBits / 8) };
    } catch (error) {
      throw refuse(`a CA certificate of the chain cannot be read: ${(error as Error).message}`);
    }
  }
}
