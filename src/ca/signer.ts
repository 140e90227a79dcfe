/**
 * The narrow interface between issuance (authority.ts) and where signing happens. Key sources (sources/<name>/)
 * open a `WorkloadSigner`; nothing outside the source knows its class.
 */
import type { CaMaterial } from './material.js';

export interface WorkloadSignRequest {
  /** The verified CSR, as PEM (remote signers forward it) and its SubjectPublicKeyInfo DER (local signers embed it). */
  csrPem: string;
  spkiDer: Buffer;
  /** SANs to write: the caller's proven identities. */
  uris: readonly string[];
  /** DNS SANs, for the CA's own serving certificate (workload certificates carry none). */
  dnsNames?: readonly string[];
  ttlSeconds: number;
  /** Issue as of this time (epoch ms; default: the signer's clock). In-process signers honour it; remote ones sign at their own time. */
  now?: number;
}

export interface SignedChain {
  /** [leaf, intermediates..., root bundle]: one PEM certificate per element, each ending in "\n"; root bundle last. */
  chain: string[];
  leafDer: Buffer;
  serialHex: string;
  notAfter: Date;
}

export interface SignerStatus {
  /** The key source's plugin name (`--ca-source`). */
  source: string;
  mode?: string;
  signingCertSerial?: string;
  signingCertSubject?: string;
  signingCertNotAfter?: Date;
  /** The signing certificate's URI SANs (a SPIFFE CA certificate names its trust domain: spiffe://<td>). */
  signingCertUris?: readonly string[];
  roots: { subject: string; fingerprintSha256: string; notAfter: Date }[];
}

export interface WorkloadSigner {
  readonly source: string;
  sign(request: WorkloadSignRequest): Promise<SignedChain> | SignedChain;
  /** All trusted roots, PEM, for ROOTCA / the ConfigMap / the agent's trust bundle. */
  trustBundlePem(): string;
  /** The latest NotAfter a workload certificate may have (signing cert expiry), or null for remote signers. */
  maxNotAfter(): Date | null;
  status(): SignerStatus;
  /** Called with no arguments whenever the material or bundle changes. Returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
  /**
   * A capability, declared explicitly: the material (private key and certificates) with which `sign` signs, in
   * this process, through meshca's own LeafIssuer. The final check then verifies RSA leaves only once per issuer
   * certificate whose public key is this key's; `--workers` snapshots carry it so workers sign themselves.
   * Absent or null (remote signers, wrappers, forwarding workers): every leaf is verified, nothing is copied.
   */
  inProcessMaterial?(): CaMaterial | null;
}
