/**
 * Signing in another process from a snapshot of a signer (`meshca ca --workers N`): the primary process owns
 * the key source (files, watches, rotation, Vault) and sends each worker a `SignerSnapshot` at start and after
 * every change. A snapshot of a local signer carries the CA material, so the worker signs in-process on its
 * own hot path; a snapshot of a remote signer (Vault role mode) carries none, and the worker forwards each
 * request to the primary.
 *
 * The snapshot holds the private key as PKCS#8 DER: it travels only over the IPC channel between the primary
 * and the workers it forked, and is never written or logged.
 */
import { createPrivateKey } from 'node:crypto';
import { parseCertificate } from '../pki/index.js';
import { CaError } from './errors.js';
import { LocalSigner } from './local-signer.js';
import { buildCaMaterial, type CaMaterial } from './material.js';
import type { SignedChain, SignerStatus, WorkloadSignRequest, WorkloadSigner } from './signer.js';

export interface SnapshotMaterial {
  privateKeyPkcs8Der: Uint8Array;
  signingCertDer: Uint8Array;
  /** Certificates above the signing certificate. */
  chainDers: Uint8Array[];
  rootDers: Uint8Array[];
}

/** Everything a worker needs to stand in for the primary's signer; structured-clone friendly (no classes). */
export interface SignerSnapshot {
  status: SignerStatus;
  trustBundlePem: string;
  maxNotAfter: Date | null;
  /** Present when the primary signs locally. */
  material?: SnapshotMaterial;
}

/** Takes a snapshot of a signer; the material only when the signer signs in-process. */
export function takeSignerSnapshot(signer: WorkloadSigner): SignerSnapshot {
  const snapshot: SignerSnapshot = { status: signer.status(), trustBundlePem: signer.trustBundlePem(), maxNotAfter: signer.maxNotAfter() };
  const material = signer.inProcessMaterial?.() ?? null;
  if (material) {
    snapshot.material = {
      privateKeyPkcs8Der: material.privateKey.export({ format: 'der', type: 'pkcs8' }),
      signingCertDer: material.signingCert.der,
      chainDers: material.chain.slice(1).map((c) => c.der),
      rootDers: material.roots.map((r) => r.der),
    };
  }
  return snapshot;
}

/** Structured clone turns Buffers into plain Uint8Arrays; our parsers want Buffers. */
function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * A WorkloadSigner built from snapshots. `forward` signs a request in the primary; it is used only while the
 * current snapshot carries no material.
 */
export class SnapshotSigner implements WorkloadSigner {
  private snapshot: SignerSnapshot;
  private local: LocalSigner | undefined;
  private readonly listeners = new Set<() => void>();

  constructor(
    snapshot: SignerSnapshot,
    private readonly forward: (request: WorkloadSignRequest) => Promise<SignedChain>,
  ) {
    this.snapshot = snapshot;
    this.local = SnapshotSigner.localSigner(snapshot);
  }

  get source(): string {
    return this.snapshot.status.source;
  }

  /** Switches to a newer snapshot (the material was reloaded or rotated in the primary) and tells listeners. */
  replace(snapshot: SignerSnapshot): void {
    const local = SnapshotSigner.localSigner(snapshot);
    this.snapshot = snapshot;
    this.local = local;
    for (const listener of this.listeners) listener();
  }

  private static localSigner(snapshot: SignerSnapshot): LocalSigner | undefined {
    const m = snapshot.material;
    if (!m) return undefined;
    // The primary validated this material when it loaded it; building it again re-checks the key against the
    // certificate and the chain, so a snapshot damaged on the way cannot sign. Expiry is the primary's to judge
    // (the authority refuses to sign past the signing certificate's NotAfter): the chain is checked at the latest
    // NotBefore of its certificates, so material that expired while running still reaches the workers.
    const signingCert = parseCertificate(toBuffer(m.signingCertDer));
    const chain = m.chainDers.map((der) => parseCertificate(toBuffer(der)));
    const roots = m.rootDers.map((der) => parseCertificate(toBuffer(der)));
    const checkedAt = new Date(Math.max(...[signingCert, ...chain, ...roots].map((c) => c.notBefore.getTime())));
    const material = buildCaMaterial({
      signingCert,
      privateKey: createPrivateKey({ key: toBuffer(m.privateKeyPkcs8Der), format: 'der', type: 'pkcs8' }),
      chain,
      roots,
      now: checkedAt,
    });
    return new LocalSigner(snapshot.status.source, material, snapshot.status.mode);
  }

  /** The material this worker signs with itself while the snapshot carries it; null when forwarding. */
  inProcessMaterial(): CaMaterial | null {
    return this.local?.inProcessMaterial() ?? null;
  }

  sign(request: WorkloadSignRequest): Promise<SignedChain> | SignedChain {
    if (this.local) return this.local.sign(request);
    return this.forward(request).catch((error: unknown) => {
      if (error instanceof CaError) throw error;
      throw new CaError('CERT_GEN_ERROR', `the CA's primary process could not sign: ${(error as Error).message}`, { cause: error });
    });
  }

  trustBundlePem(): string {
    return this.snapshot.trustBundlePem;
  }

  maxNotAfter(): Date | null {
    return this.snapshot.maxNotAfter;
  }

  status(): SignerStatus {
    return this.snapshot.status;
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }
}
