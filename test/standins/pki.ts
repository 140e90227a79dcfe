/**
 * Certificate helpers for the stand-ins (test code only): key generation, certificate issuance with
 * @peculiar/x509 over node's WebCrypto, PEM/serial formatting, and Go/Vault duration parsing/formatting.
 * Independent of the product's own PKI code on purpose.
 */
import './reflect-shim.js';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, randomBytes, webcrypto } from 'node:crypto';

export { x509 };

export type CryptoKey = webcrypto.CryptoKey;
export type CryptoKeyPair = webcrypto.CryptoKeyPair;
type Algorithm = webcrypto.Algorithm;
type EcdsaParams = webcrypto.EcdsaParams;

/** node's WebCrypto (the provider handed to @peculiar/x509). */
export const wc = webcrypto;
x509.cryptoProvider.set(wc);

export type KeyAlg = 'rsa' | 'ec';

export interface CaMaterial {
  cert: x509.X509Certificate;
  /** PEM without a trailing newline (Vault style). */
  pem: string;
  keys: CryptoKeyPair;
}

export function keyGenParams(alg: KeyAlg, rsaBits = 2048): webcrypto.RsaHashedKeyGenParams | webcrypto.EcKeyGenParams {
  return alg === 'rsa'
    ? { name: 'RSASSA-PKCS1-v1_5', modulusLength: rsaBits, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }
    : { name: 'ECDSA', namedCurve: 'P-256' };
}

export async function generateKeyPair(alg: KeyAlg, rsaBits = 2048): Promise<CryptoKeyPair> {
  return (await wc.subtle.generateKey(keyGenParams(alg, rsaBits), true, ['sign', 'verify'])) as CryptoKeyPair;
}

/** Signature algorithm to use with a given signing key (SHA-256 in all cases, like Vault's defaults). */
export function signingAlgorithmFor(key: CryptoKey): Algorithm | EcdsaParams {
  return key.algorithm.name === 'ECDSA'
    ? ({ name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams)
    : ({ name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as Algorithm);
}

export async function privateKeyPem(key: CryptoKey, format: 'pkcs8' | 'traditional' = 'pkcs8'): Promise<string> {
  const der = Buffer.from(await wc.subtle.exportKey('pkcs8', key));
  const ko = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  if (format === 'pkcs8') return String(ko.export({ format: 'pem', type: 'pkcs8' })).trim();
  const type = ko.asymmetricKeyType === 'ec' ? 'sec1' : 'pkcs1';
  return String(ko.export({ format: 'pem', type })).trim();
}

export function certPem(cert: x509.X509Certificate): string {
  return cert.toString('pem').replace(/\r\n/g, '\n').trim();
}

/** Split a PEM bundle into individual PEM blocks (trimmed, no trailing newline). */
export function splitPem(bundle: string): string[] {
  return bundle.match(/-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g) ?? [];
}

/** 20 random bytes, positive, no leading zero byte — like Vault's serials. */
export function randomSerialHex(): string {
  const b = randomBytes(20);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
}

/** Vault's `serial_number` format: lower-case hex bytes joined by ':'. */
export function colonHex(hex: string): string {
  const h = hex.length % 2 ? `0${hex}` : hex;
  return (h.toLowerCase().match(/../g) ?? []).join(':');
}

export interface PublicKeyInfo {
  type: string;
  bits: number;
  curve?: string;
}

export function describePublicKey(pk: x509.PublicKey): PublicKeyInfo {
  const ko = createPublicKey({ key: Buffer.from(pk.rawData), format: 'der', type: 'spki' });
  const details = ko.asymmetricKeyDetails ?? {};
  const type = ko.asymmetricKeyType ?? 'unknown';
  if (type === 'ec') {
    const curve = details.namedCurve ?? '';
    const bits = curve === 'prime256v1' ? 256 : curve === 'secp384r1' ? 384 : curve === 'secp521r1' ? 521 : 224;
    return { type, bits, curve };
  }
  return { type, bits: details.modulusLength ?? 0 };
}

export interface CertSpec {
  /** RFC 4514-ish DN string understood by @peculiar/x509 ("CN=x, O=y"); '' for an empty subject. */
  subject: string;
  publicKey: x509.PublicKey | CryptoKey;
  notBefore: Date;
  notAfter: Date;
  serialHex?: string;
  /** Present ⇒ CA:TRUE (critical); pathLen optional. */
  ca?: { pathLen?: number };
  /** Emit BasicConstraints CA:FALSE on a leaf. */
  basicConstraintsForLeaf?: boolean;
  keyUsage: number;
  extKeyUsage?: string[];
  sans?: x509.JsonGeneralName[];
  /** Override the SubjectKeyIdentifier (hex); default = SHA-1 of the public key. */
  skiHex?: string;
  /** Override the AuthorityKeyIdentifier (hex); default = the issuer's SKI. */
  akiHex?: string;
  /** Override the issuer name (self-signed impostors). */
  issuerName?: x509.Name | string;
}

/** Issue a certificate. `issuer` undefined ⇒ self-signed with `selfKeys`. */
export async function issueCert(
  spec: CertSpec,
  issuer: CaMaterial | undefined,
  selfKeys?: CryptoKeyPair,
): Promise<x509.X509Certificate> {
  const signingKey = issuer ? issuer.keys.privateKey : selfKeys?.privateKey;
  if (!signingKey) throw new Error('issueCert: no signing key');
  const extensions: x509.Extension[] = [];
  if (spec.ca) extensions.push(new x509.BasicConstraintsExtension(true, spec.ca.pathLen, true));
  else if (spec.basicConstraintsForLeaf) extensions.push(new x509.BasicConstraintsExtension(false, undefined, true));
  if (spec.keyUsage) extensions.push(new x509.KeyUsagesExtension(spec.keyUsage, true));
  if (spec.extKeyUsage?.length) extensions.push(new x509.ExtendedKeyUsageExtension(spec.extKeyUsage, false));
  extensions.push(
    spec.skiHex
      ? new x509.SubjectKeyIdentifierExtension(spec.skiHex)
      : await x509.SubjectKeyIdentifierExtension.create(spec.publicKey, false, wc),
  );
  const aki = spec.akiHex ?? issuer?.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  if (aki) extensions.push(new x509.AuthorityKeyIdentifierExtension(aki));
  if (spec.sans?.length) {
    // RFC 5280 §4.2.1.6: SAN is critical when the subject is empty (Go's x509 does the same).
    extensions.push(new x509.SubjectAlternativeNameExtension(spec.sans, spec.subject === ''));
  }
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: spec.serialHex ?? randomSerialHex(),
      subject: spec.subject,
      issuer: spec.issuerName ?? (issuer ? issuer.cert.subjectName : spec.subject),
      notBefore: spec.notBefore,
      notAfter: spec.notAfter,
      publicKey: spec.publicKey,
      signingKey,
      signingAlgorithm: signingAlgorithmFor(signingKey),
      extensions,
    },
    wc,
  );
}

export const CA_KEY_USAGE = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign;

export async function makeSelfSignedCa(
  commonName: string,
  alg: KeyAlg,
  notBefore: Date,
  notAfter: Date,
  pathLen?: number,
): Promise<CaMaterial> {
  const keys = await generateKeyPair(alg);
  const cert = await issueCert(
    { subject: `CN=${commonName}`, publicKey: keys.publicKey, notBefore, notAfter, ca: { pathLen }, keyUsage: CA_KEY_USAGE },
    undefined,
    keys,
  );
  return { cert, pem: certPem(cert), keys };
}

export async function makeIntermediateCa(
  commonName: string,
  alg: KeyAlg,
  parent: CaMaterial,
  notBefore: Date,
  notAfter: Date,
): Promise<CaMaterial> {
  const keys = await generateKeyPair(alg);
  const cert = await issueCert(
    { subject: `CN=${commonName}`, publicKey: keys.publicKey, notBefore, notAfter, ca: {}, keyUsage: CA_KEY_USAGE },
    parent,
  );
  return { cert, pem: certPem(cert), keys };
}

export interface TlsMaterial {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** A throw-away CA plus a serverAuth certificate for 127.0.0.1/localhost (EC P-256: fast). */
export async function makeServerTls(dnsNames: string[] = ['localhost'], ips: string[] = ['127.0.0.1']): Promise<TlsMaterial> {
  const now = Date.now();
  const nb = new Date(now - 60_000);
  const na = new Date(now + 24 * 3600_000);
  const ca = await makeSelfSignedCa(`standin-ca-${randomBytes(4).toString('hex')}`, 'ec', nb, na);
  const keys = await generateKeyPair('ec');
  const cert = await issueCert(
    {
      subject: 'CN=standin-server',
      publicKey: keys.publicKey,
      notBefore: nb,
      notAfter: na,
      keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
      extKeyUsage: [x509.ExtendedKeyUsage.serverAuth],
      sans: [...dnsNames.map((value) => ({ type: 'dns' as const, value })), ...ips.map((value) => ({ type: 'ip' as const, value }))],
    },
    ca,
  );
  return { caPem: `${ca.pem}\n`, certPem: `${certPem(cert)}\n`, keyPem: `${await privateKeyPem(keys.privateKey)}\n` };
}

// ---------------------------------------------------------------------------------------------------------------
// Durations (Vault accepts Go duration strings, plain seconds as numbers or strings, and a 'd' suffix).

const UNIT_SECONDS: Record<string, number> = { ns: 1e-9, us: 1e-6, 'µs': 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600, d: 86400 };

/** Parse a Vault duration into seconds; undefined/'' ⇒ undefined; throws on garbage. */
export function parseDurationSeconds(v: unknown): number | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error(`time: invalid duration "${String(v)}"`);
    return Math.floor(v);
  }
  if (typeof v !== 'string') throw new Error(`time: invalid duration "${String(v)}"`);
  const s = v.trim();
  if (/^-?\d+$/.test(s)) return Number(s);
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * UNIT_SECONDS[m[2]!]!;
    consumed = re.lastIndex;
  }
  if (consumed !== s.length || consumed === 0) throw new Error(`time: invalid duration "${s}"`);
  return Math.floor(total);
}

/** Go's time.Duration.String() for whole seconds: 72h0m0s, 1m30s, 45s, 0s. */
export function goDuration(seconds: number): string {
  const s = Math.floor(seconds);
  if (s === 0) return '0s';
  const neg = s < 0 ? '-' : '';
  const a = Math.abs(s);
  const h = Math.floor(a / 3600);
  const m = Math.floor((a % 3600) / 60);
  const sec = a % 60;
  if (h > 0) return `${neg}${h}h${m}m${sec}s`;
  if (m > 0) return `${neg}${m}m${sec}s`;
  return `${neg}${sec}s`;
}

/** Go-style glob (ryanuber/go-glob, as Vault uses for allowed_uri_sans): only '*', which also matches '/'. */
export function globMatch(pattern: string, value: string): boolean {
  if (pattern === '*') return true;
  const parts = pattern.split('*');
  if (parts.length === 1) return pattern === value;
  if (!value.startsWith(parts[0]!)) return false;
  let pos = parts[0]!.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const idx = value.indexOf(parts[i]!, pos);
    if (idx < 0) return false;
    pos = idx + parts[i]!.length;
  }
  const last = parts[parts.length - 1]!;
  return value.length - pos >= last.length && value.endsWith(last);
}

export interface CsrOptions {
  alg?: KeyAlg;
  rsaBits?: number;
  /** Common name; omitted ⇒ empty subject (what Istio clients send). */
  cn?: string;
  uris?: string[];
  dns?: string[];
  ips?: string[];
  /** Ask for CA:TRUE (intermediate CA CSR). */
  ca?: boolean;
}

/** Build a PKCS#10 CSR (PEM) plus its key — a test fixture helper. */
export async function makeCsr(opts: CsrOptions = {}): Promise<{ csrPem: string; keys: CryptoKeyPair; keyPem: string }> {
  const keys = await generateKeyPair(opts.alg ?? 'rsa', opts.rsaBits ?? 2048);
  const sans: x509.JsonGeneralName[] = [
    ...(opts.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(opts.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ];
  const extensions: x509.Extension[] = [];
  if (sans.length) extensions.push(new x509.SubjectAlternativeNameExtension(sans, !opts.cn));
  if (opts.ca) {
    extensions.push(new x509.BasicConstraintsExtension(true, undefined, true));
    extensions.push(new x509.KeyUsagesExtension(CA_KEY_USAGE, true));
  }
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    { name: opts.cn ? `CN=${opts.cn}` : '', keys, signingAlgorithm: signingAlgorithmFor(keys.privateKey), extensions },
    wc,
  );
  return { csrPem: csr.toString('pem').replace(/\r\n/g, '\n').trim(), keys, keyPem: await privateKeyPem(keys.privateKey) };
}
