/** Chain verification: leaf -> intermediates -> a trusted root, checking signatures, validity, CA flags and key usage. */
import { verify } from 'node:crypto';
import { signatureAlgorithmFor } from './algorithms.js';
import { PkiError } from './errors.js';
import { certificatesFromPem } from './pem.js';
import { certificatePublicKey, parseCertificate, type ParsedCertificate } from './x509.js';

const MAX_DEPTH = 10;

export interface VerifyChainOptions {
  intermediates?: readonly ParsedCertificate[];
  roots: readonly ParsedCertificate[];
  /** Validity is checked at this time (default: now). */
  at?: Date;
  /**
   * The leaf's own signature is verified by the caller (the CA's final check of what it issues): its issuer is
   * found by name only, and everything above it is verified as usual. Not for chains that get no other check.
   */
  leafSignatureVerifiedElsewhere?: boolean;
}

export function describeCertificate(cert: ParsedCertificate): string {
  const name = cert.subject || cert.sans.uris[0] || cert.sans.dnsNames[0] || '(empty subject)';
  return `"${name}" (serial ${cert.serialHex})`;
}

function chainError(message: string): PkiError {
  return new PkiError('ERR_CHAIN', message);
}

export function signatureVerifies(cert: ParsedCertificate, issuer: ParsedCertificate): boolean {
  const algorithm = signatureAlgorithmFor(cert.signatureAlgorithm);
  if (!algorithm) return false;
  try {
    return verify(algorithm.hash, cert.tbs, certificatePublicKey(issuer), cert.signature);
  } catch {
    return false;
  }
}

function checkValidity(cert: ParsedCertificate, at: Date): void {
  if (at < cert.notBefore) throw chainError(`${describeCertificate(cert)} is not valid before ${cert.notBefore.toISOString()}`);
  if (at > cert.notAfter) throw chainError(`${describeCertificate(cert)} expired at ${cert.notAfter.toISOString()}`);
}

function checkCanIssue(issuer: ParsedCertificate, depthBelow: number): void {
  if (issuer.basicConstraints?.ca !== true) throw chainError(`${describeCertificate(issuer)} is not a CA certificate`);
  if (issuer.keyUsage && !issuer.keyUsage.includes('keyCertSign')) {
    throw chainError(`${describeCertificate(issuer)} lacks keyUsage keyCertSign`);
  }
  const pathLen = issuer.basicConstraints.pathLen;
  if (pathLen !== undefined && depthBelow > pathLen) {
    throw chainError(`${describeCertificate(issuer)} has pathLen ${pathLen} but ${depthBelow} CA certificates follow it`);
  }
}

/**
 * Finds and checks a path from `leaf` to one of `roots`. Returns it leaf first, root last.
 * Throws PkiError ERR_CHAIN with the first reason the chain fails.
 */
export function verifyChain(leaf: ParsedCertificate, options: VerifyChainOptions): ParsedCertificate[] {
  const at = options.at ?? new Date();
  const intermediates = options.intermediates ?? [];
  const path: ParsedCertificate[] = [leaf];
  let current = leaf;
  checkValidity(current, at);
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const caBelow = path.length - 1;
    const verifies = (issuer: ParsedCertificate): boolean => (depth === 0 && options.leafSignatureVerifiedElsewhere === true) || signatureVerifies(current, issuer);
    const root = options.roots.find((r) => r.subjectDer.equals(current.issuerDer) && verifies(r));
    if (root) {
      checkValidity(root, at);
      checkCanIssue(root, caBelow);
      if (!root.der.equals(current.der)) path.push(root);
      return path;
    }
    const candidates = intermediates.filter((c) => c.subjectDer.equals(current.issuerDer) && !path.includes(c));
    const issuer = candidates.find(verifies);
    if (!issuer) {
      if (candidates.length > 0) throw chainError(`the signature of ${describeCertificate(current)} does not verify with its issuer's key`);
      throw chainError(`no trusted issuer found for ${describeCertificate(current)} (issuer "${current.issuer}")`);
    }
    checkValidity(issuer, at);
    checkCanIssue(issuer, caBelow);
    path.push(issuer);
    current = issuer;
  }
  throw chainError(`chain is longer than ${MAX_DEPTH} certificates`);
}

/** Convenience for PEM input: the first certificate is the leaf, the rest are intermediates. */
export function verifyPemChain(chainPem: string, rootsPem: string, at?: Date): ParsedCertificate[] {
  const chain = certificatesFromPem(chainPem).map(parseCertificate);
  const roots = certificatesFromPem(rootsPem).map(parseCertificate);
  if (chain.length === 0) throw chainError('the chain holds no certificate');
  if (roots.length === 0) throw chainError('the trust bundle holds no certificate');
  return verifyChain(chain[0]!, { intermediates: chain.slice(1), roots, ...(at ? { at } : {}) });
}
