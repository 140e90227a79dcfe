/**
 * The narrow interface between the CA's policy (authority.ts) and where signing happens.
 * A key source is swapped by touching one file that implements `WorkloadSigner`.
 */
export interface WorkloadSignRequest {
  /** The verified CSR, as PEM (remote signers forward it) and its SubjectPublicKeyInfo DER (local signers embed it). */
  csrPem: string;
  spkiDer: Buffer;
  /** SANs to write: the caller's proven identities. */
  uris: readonly string[];
  /** DNS SANs, for the CA's own serving certificate (workload certificates carry none). */
  dnsNames?: readonly string[];
  ttlSeconds: number;
}

export interface SignedChain {
  /** [leaf, intermediates..., root bundle]: one PEM certificate per element, each ending in "\n"; root bundle last. */
  chain: string[];
  leafDer: Buffer;
  serialHex: string;
  notAfter: Date;
}

export interface SignerStatus {
  source: 'self-signed' | 'cacerts' | 'vault';
  mode?: string;
  signingCertSerial?: string;
  signingCertSubject?: string;
  signingCertNotAfter?: Date;
  roots: { subject: string; fingerprintSha256: string; notAfter: Date }[];
}

export interface WorkloadSigner {
  readonly source: SignerStatus['source'];
  sign(request: WorkloadSignRequest): Promise<SignedChain> | SignedChain;
  /** All trusted roots, PEM, for ROOTCA / the ConfigMap / the agent's trust bundle. */
  trustBundlePem(): string;
  /** The latest NotAfter a workload certificate may have (signing cert expiry), or null for remote signers. */
  maxNotAfter(): Date | null;
  status(): SignerStatus;
  /** Called with no arguments whenever the material or bundle changes. Returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
}
