/**
 * CA material: a signing certificate + key, the chain up to the roots, and the trust bundle, validated together
 * and pre-encoded for the hot path. Every local key source (self-signed, cacerts, Vault intermediate) produces one.
 */
import { createHash, type KeyObject } from 'node:crypto';
import {
  assertSigningMaterial,
  certificateToPem,
  LeafIssuer,
  PkiError,
  verifyChain,
  type ParsedCertificate,
} from '../pki/index.js';

/** The signing certificate's path to the roots, validated, with the PEMs a response chain is made of. */
export interface CaChain {
  /** The signing certificate and the intermediates above it, signing cert first; empty when a root signs. */
  chain: ParsedCertificate[];
  /** PEM of each element of `chain`, each ending in "\n". */
  chainPems: string[];
  /** All trusted roots (the published bundle), deduplicated. */
  roots: ParsedCertificate[];
  /** The bundle as one PEM text, every root, each block ending in "\n". */
  rootsPem: string;
}

export interface CaMaterial extends CaChain {
  issuer: LeafIssuer;
  signingCert: ParsedCertificate;
  privateKey: KeyObject;
}

export interface CaMaterialInput {
  signingCert: ParsedCertificate;
  privateKey: KeyObject;
  /** Certificates above the signing cert (intermediates and optionally the root), in any order. */
  chain: readonly ParsedCertificate[];
  roots: readonly ParsedCertificate[];
  now?: Date;
}

/** SHA-256 fingerprint, colon-separated upper-case hex like `openssl x509 -fingerprint -sha256`. */
export function fingerprint(cert: ParsedCertificate): string {
  return createHash('sha256')
    .update(cert.der)
    .digest('hex')
    .toUpperCase()
    .replace(/(..)(?!$)/g, '$1:');
}

/** The certificates in order, each DER encoding kept once. */
export function dedupeCertificates(certs: readonly ParsedCertificate[]): ParsedCertificate[] {
  const seen = new Set<string>();
  return certs.filter((c) => {
    const key = c.der.toString('base64');
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * Validates that the signing certificate chains to a root of the bundle (through the given certificates, in any
 * order) and that no root has expired. Throws PkiError ERR_CHAIN with a reason a human can act on.
 */
export function resolveCaChain(input: Omit<CaMaterialInput, 'privateKey'>): CaChain {
  const now = input.now ?? new Date();
  const roots = dedupeCertificates(input.roots);
  if (roots.length === 0) throw new PkiError('ERR_CHAIN', 'no root certificate was given');
  for (const root of roots) {
    if (root.notAfter < now) throw new PkiError('ERR_CHAIN', `root certificate "${root.subject}" expired at ${root.notAfter.toISOString()}`);
  }
  const intermediates = dedupeCertificates(input.chain).filter((c) => !c.der.equals(input.signingCert.der) && !roots.some((r) => r.der.equals(c.der)));
  let path: ParsedCertificate[];
  try {
    path = verifyChain(input.signingCert, { intermediates, roots, at: now });
  } catch (error) {
    throw new PkiError('ERR_CHAIN', `the signing CA certificate does not chain to a root in the bundle: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const chain = path.slice(0, -1);
  return {
    chain,
    chainPems: chain.map((c) => certificateToPem(c.der)),
    roots,
    rootsPem: roots.map((r) => certificateToPem(r.der)).join(''),
  };
}

/**
 * Validates and assembles CA material. Throws PkiError with a reason a human can act on:
 * key/cert mismatch, non-CA signing cert, a chain that does not reach a root, anything expired.
 */
export function buildCaMaterial(input: CaMaterialInput): CaMaterial {
  const material = { certificate: input.signingCert, privateKey: input.privateKey };
  assertSigningMaterial(material, 'signing CA certificate');
  return {
    issuer: new LeafIssuer(material),
    signingCert: input.signingCert,
    privateKey: input.privateKey,
    ...resolveCaChain(input),
  };
}
