/**
 * `meshca inspect FILE|-`: decode a PEM bundle of certificates, CSRs and private keys (or one DER certificate, CSR
 * or key) and say whether the chain verifies. A private key is described (type, size, public key fingerprint),
 * never printed.
 */
import { createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import {
  certificatesFromPem,
  decodePem,
  describeKey,
  describeSpki,
  isPkiError,
  isSingleDerSequence,
  spkiDer,
  parseCertificate,
  parseCsr,
  verifyChain,
  verifyCsr,
  type KeyDescription,
  type ParsedCertificate,
} from '../pki/index.js';
import { fingerprint } from '../ca/material.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

export interface CertificateReport {
  type: 'certificate';
  subject: string;
  spiffeId: string | null;
  uriSans: string[];
  dnsSans: string[];
  issuer: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  remainingSeconds: number;
  keyType: string;
  isCa: boolean;
  selfSigned: boolean;
  fingerprintSha256: string;
}

export interface CsrReport {
  type: 'csr';
  subject: string;
  uriSans: string[];
  dnsSans: string[];
  keyType: string;
  signatureValid: boolean;
  requestsCa: boolean;
  error?: string;
}

export interface PrivateKeyReport {
  type: 'private-key';
  /** PKCS#8, SEC1 or PKCS#1. */
  format: string;
  keyType: string;
  encrypted: boolean;
  /** SHA-256 of the public key (SubjectPublicKeyInfo DER), to match it with a certificate's key. */
  publicKeySha256: string | null;
  /** The index of the certificate in the input that carries this key's public key, if any. */
  matchesCertificate: number | null;
  error?: string;
}

type Item = CertificateReport | CsrReport | PrivateKeyReport;

export interface InspectReport {
  items: Item[];
  chain: { verified: boolean; path?: string[]; error?: string } | null;
}

function keyText(key: KeyDescription): string {
  return key.kind === 'rsa' ? `RSA ${key.bits}` : `ECDSA ${key.curve}`;
}

function certificateReport(cert: ParsedCertificate, now: number): CertificateReport {
  let keyType: string;
  try {
    keyType = keyText(describeSpki(cert.spkiDer));
  } catch (error) {
    keyType = `unsupported (${(error as Error).message})`;
  }
  return {
    type: 'certificate',
    subject: cert.subject,
    spiffeId: cert.sans.uris.find((u) => u.startsWith('spiffe://')) ?? null,
    uriSans: cert.sans.uris,
    dnsSans: cert.sans.dnsNames,
    issuer: cert.issuer,
    serial: cert.serialHex,
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    remainingSeconds: Math.floor((cert.notAfter.getTime() - now) / 1000),
    keyType,
    isCa: cert.basicConstraints?.ca === true,
    selfSigned: cert.subjectDer.equals(cert.issuerDer),
    fingerprintSha256: fingerprint(cert),
  };
}

function csrReport(der: Buffer): CsrReport {
  try {
    const csr = parseCsr(der);
    let signatureValid = true;
    let error: string | undefined;
    try {
      verifyCsr(csr);
    } catch (e) {
      if (isPkiError(e, 'ERR_CSR_SIGNATURE')) signatureValid = false;
      error = (e as Error).message;
    }
    return {
      type: 'csr',
      subject: csr.subject,
      uriSans: csr.sans.uris,
      dnsSans: csr.sans.dnsNames,
      keyType: keyText(csr.key),
      signatureValid,
      requestsCa: csr.requestsCa,
      ...(error ? { error } : {}),
    };
  } catch (e) {
    return { type: 'csr', subject: '', uriSans: [], dnsSans: [], keyType: 'unknown', signatureValid: false, requestsCa: false, error: (e as Error).message };
  }
}

const KEY_FORMATS: Record<string, { format: string; type: 'pkcs8' | 'sec1' | 'pkcs1' }> = {
  'PRIVATE KEY': { format: 'PKCS#8', type: 'pkcs8' },
  'EC PRIVATE KEY': { format: 'SEC1', type: 'sec1' },
  'RSA PRIVATE KEY': { format: 'PKCS#1', type: 'pkcs1' },
};

function colonHex(digest: Buffer): string {
  return digest.toString('hex').toUpperCase().replace(/(..)(?!$)/g, '$1:');
}

function keyReport(key: KeyObject, format: string): PrivateKeyReport {
  let keyType: string;
  try {
    keyType = keyText(describeKey(key));
  } catch {
    keyType = key.asymmetricKeyType ?? 'unknown';
  }
  return {
    type: 'private-key',
    format,
    keyType,
    encrypted: false,
    publicKeySha256: colonHex(createHash('sha256').update(spkiDer(key)).digest()),
    matchesCertificate: null,
  };
}

/** A private key block, described; undefined when `label` is no private key. */
function privateKeyItem(label: string, der: Buffer): PrivateKeyReport | undefined {
  if (label === 'ENCRYPTED PRIVATE KEY') {
    return { type: 'private-key', format: 'PKCS#8', keyType: 'unknown', encrypted: true, publicKeySha256: null, matchesCertificate: null, error: 'encrypted: not decoded' };
  }
  const known = KEY_FORMATS[label];
  if (!known) return undefined;
  try {
    return keyReport(createPrivateKey({ key: der, format: 'der', type: known.type }), known.format);
  } catch (error) {
    return { type: 'private-key', format: known.format, keyType: 'unknown', encrypted: false, publicKeySha256: null, matchesCertificate: null, error: `not a readable ${known.format} key: ${(error as Error).message}` };
  }
}

/**
 * The input as PEM blocks. Input without a PEM header is taken as DER only when it is exactly one DER SEQUENCE
 * (nothing after it) that parses as a certificate, a CSR or a private key, in that order.
 */
function blocksOf(input: Buffer): { label: string; der: Buffer }[] {
  const text = input.toString('latin1');
  if (text.includes('-----BEGIN ')) return decodePem(input.toString('utf8'));
  const notDer = 'no PEM block found in the input, and it is not one DER certificate, certificate request or private key';
  if (!isSingleDerSequence(input)) throw new Error(notDer);
  const attempts: [string, () => void][] = [
    ['CERTIFICATE', () => parseCertificate(input)],
    ['CERTIFICATE REQUEST', () => parseCsr(input)],
    ...Object.entries(KEY_FORMATS).map(([label, { type }]): [string, () => void] => [label, () => createPrivateKey({ key: input, format: 'der', type })]),
  ];
  for (const [label, parse] of attempts) {
    try {
      parse();
      return [{ label, der: input }];
    } catch {
      // Try the next kind.
    }
  }
  throw new Error(notDer);
}

/**
 * Builds the report. The chain check treats the first certificate as the leaf, self-signed certificates
 * (and those in `rootsPem`) as trust anchors and the rest as intermediates.
 */
function inspectInput(input: Buffer, options: { rootsPem?: string; now?: number } = {}): InspectReport {
  const now = options.now ?? Date.now();
  const blocks = blocksOf(input);
  if (blocks.length === 0) throw new Error('no PEM block found in the input');
  const items: Item[] = [];
  const certs: ParsedCertificate[] = [];
  const certIndex = new Map<ParsedCertificate, number>();
  for (const block of blocks) {
    if (block.label === 'CERTIFICATE') {
      const cert = parseCertificate(block.der);
      certs.push(cert);
      certIndex.set(cert, items.length);
      items.push(certificateReport(cert, now));
    } else if (block.label === 'CERTIFICATE REQUEST' || block.label === 'NEW CERTIFICATE REQUEST') {
      items.push(csrReport(block.der));
    } else {
      const key = privateKeyItem(block.label, block.der);
      if (key) items.push(key);
    }
  }
  for (const item of items) {
    if (item.type !== 'private-key' || item.publicKeySha256 === null) continue;
    const match = certs.find((c) => colonHex(createHash('sha256').update(c.spkiDer).digest()) === item.publicKeySha256);
    if (match) item.matchesCertificate = certIndex.get(match)!;
  }
  let chain: InspectReport['chain'] = null;
  if (certs.length > 0) {
    const extraRoots = options.rootsPem ? certificatesFromPem(options.rootsPem).map(parseCertificate) : [];
    const roots = [...certs.filter((c) => c.subjectDer.equals(c.issuerDer)), ...extraRoots];
    const leaf = certs[0]!;
    try {
      if (roots.length === 0) throw new Error('no trust anchor: the bundle holds no self-signed root (pass --roots FILE)');
      const path = verifyChain(leaf, { intermediates: certs.slice(1), roots, at: new Date(now) });
      chain = { verified: true, path: path.map((c) => c.subject || c.sans.uris[0] || c.serialHex) };
    } catch (error) {
      chain = { verified: false, error: (error as Error).message };
    }
  }
  return { items, chain };
}

function formatRemaining(seconds: number): string {
  if (seconds <= 0) return `expired ${formatSpan(-seconds)} ago`;
  return `${formatSpan(seconds)} left`;
}

function formatSpan(seconds: number): string {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  return `${m}m${seconds % 60}s`;
}

function formatReport(report: InspectReport): string {
  const lines: string[] = [];
  report.items.forEach((item, index) => {
    if (item.type === 'certificate') {
      lines.push(`[${index}] certificate${item.isCa ? ' (CA)' : ''}${item.selfSigned ? ' (self-signed)' : ''}`);
      lines.push(`    subject:     ${item.subject || '(empty)'}`);
      if (item.spiffeId) lines.push(`    SPIFFE ID:   ${item.spiffeId}`);
      const otherSans = [...item.uriSans.filter((u) => u !== item.spiffeId).map((u) => `URI:${u}`), ...item.dnsSans.map((d) => `DNS:${d}`)];
      if (otherSans.length) lines.push(`    SANs:        ${otherSans.join(', ')}`);
      lines.push(`    issuer:      ${item.issuer || '(empty)'}`);
      lines.push(`    serial:      ${item.serial}`);
      lines.push(`    not before:  ${item.notBefore}`);
      lines.push(`    not after:   ${item.notAfter} (${formatRemaining(item.remainingSeconds)})`);
      lines.push(`    key:         ${item.keyType}`);
      lines.push(`    sha256:      ${item.fingerprintSha256}`);
    } else if (item.type === 'private-key') {
      lines.push(`[${index}] private key (${item.format}${item.encrypted ? ', encrypted' : ''}; not printed)`);
      lines.push(`    key:         ${item.keyType}`);
      if (item.publicKeySha256) lines.push(`    public key:  sha256 ${item.publicKeySha256}`);
      if (item.matchesCertificate !== null) lines.push(`    matches:     certificate [${item.matchesCertificate}]`);
      if (item.error) lines.push(`    problem:     ${item.error}`);
    } else {
      lines.push(`[${index}] certificate request`);
      lines.push(`    subject:     ${item.subject || '(empty)'}`);
      const sans = [...item.uriSans.map((u) => `URI:${u}`), ...item.dnsSans.map((d) => `DNS:${d}`)];
      lines.push(`    SANs:        ${sans.join(', ') || '(none)'}`);
      lines.push(`    key:         ${item.keyType}`);
      lines.push(`    signature:   ${item.signatureValid ? 'valid' : 'INVALID'}${item.requestsCa ? ' (requests a CA certificate)' : ''}`);
      if (item.error) lines.push(`    problem:     ${item.error}`);
    }
  });
  if (report.chain) {
    lines.push(report.chain.verified ? `chain: verifies (${report.chain.path!.join(' -> ')})` : `chain: does NOT verify: ${report.chain.error}`);
  }
  return lines.join('\n') + '\n';
}

/** The bytes of `file` ('-': standard input), or one line saying why they cannot be read. */
function readInput(file: string, what: string): Buffer {
  try {
    return readFileSync(file === '-' ? 0 : file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${what} ${file} does not exist: check the path (or give '-' to read standard input)`);
    if (code === 'EISDIR') throw new Error(`${what} ${file} is a directory: give a PEM or DER file`);
    if (code === 'EACCES') throw new Error(`${what} ${file} is not readable by this user (permission denied)`);
    throw new Error(`cannot read ${what} ${file}: ${code ?? (error as Error).message}`);
  }
}

export function registerInspectCommand(program: Command): void {
  program
    .command('inspect')
    .description(COMMAND_DESCRIPTIONS.inspect)
    .argument('<file>', "PEM or DER file (certificates, CSRs, private keys), or '-' for standard input")
    .option('--roots <file>', 'extra trust anchors (PEM) for the chain check')
    .option('--json', 'print JSON for machines')
    .action((file: string, options: { roots?: string; json?: boolean }) => {
      const input = readInput(file, 'input file');
      const report = inspectInput(input, options.roots ? { rootsPem: readInput(options.roots, '--roots file').toString('utf8') } : {});
      process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      if (report.chain && !report.chain.verified) process.exitCode = 1;
    });
}
