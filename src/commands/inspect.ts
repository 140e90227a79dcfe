/** `meshca inspect FILE|-`: decode a PEM bundle of certificates and CSRs and say whether the chain verifies. */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import {
  certificatesFromPem,
  decodePem,
  describeSpki,
  isPkiError,
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

export interface InspectReport {
  items: (CertificateReport | CsrReport)[];
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

/**
 * Builds the report. The chain check treats the first certificate as the leaf, self-signed certificates
 * (and those in `rootsPem`) as trust anchors and the rest as intermediates.
 */
function inspectPem(text: string, options: { rootsPem?: string; now?: number } = {}): InspectReport {
  const now = options.now ?? Date.now();
  const blocks = decodePem(text);
  if (blocks.length === 0) throw new Error('no PEM block found in the input');
  const items: (CertificateReport | CsrReport)[] = [];
  const certs: ParsedCertificate[] = [];
  for (const block of blocks) {
    if (block.label === 'CERTIFICATE') {
      const cert = parseCertificate(block.der);
      certs.push(cert);
      items.push(certificateReport(cert, now));
    } else if (block.label === 'CERTIFICATE REQUEST' || block.label === 'NEW CERTIFICATE REQUEST') {
      items.push(csrReport(block.der));
    }
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

export function registerInspectCommand(program: Command): void {
  program
    .command('inspect')
    .description(COMMAND_DESCRIPTIONS.inspect)
    .argument('<file>', "PEM file, or '-' for standard input")
    .option('--roots <file>', 'extra trust anchors (PEM) for the chain check')
    .option('--json', 'print JSON for machines')
    .action((file: string, options: { roots?: string; json?: boolean }) => {
      const text = readFileSync(file === '-' ? 0 : file, 'utf8');
      const report = inspectPem(text, options.roots ? { rootsPem: readFileSync(options.roots, 'utf8') } : {});
      process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      if (report.chain && !report.chain.verified) process.exitCode = 1;
    });
}
