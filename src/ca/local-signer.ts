/**
 * Signs workloads in-process with the current CA material. Material is swapped by replacing one reference,
 * so every request sees either the old or the new set, never a mix.
 */
import { certificateToPem } from '../pki/index.js';
import { fingerprint, type CaMaterial } from './material.js';
import type { SignedChain, SignerStatus, WorkloadSignRequest, WorkloadSigner } from './signer.js';

export class LocalSigner implements WorkloadSigner {
  private material: CaMaterial;
  private readonly listeners = new Set<() => void>();

  constructor(
    readonly source: string,
    material: CaMaterial,
    private readonly mode?: string,
  ) {
    this.material = material;
  }

  current(): CaMaterial {
    return this.material;
  }

  /** Atomically switches to new material and tells listeners. */
  replace(material: CaMaterial): void {
    this.material = material;
    for (const listener of this.listeners) listener();
  }

  /** Signs through LeafIssuer.issueWithoutBlocking: an RSA or P-384 signature does not hold up the event loop. */
  async sign(request: WorkloadSignRequest): Promise<SignedChain> {
    const material = this.material;
    const leafRequest = {
      spkiDer: request.spkiDer,
      uris: request.uris,
      ...(request.dnsNames ? { dnsNames: request.dnsNames } : {}),
      ttlSeconds: request.ttlSeconds,
      ...(request.now !== undefined ? { now: request.now } : {}),
    };
    const leaf = await material.issuer.issueWithoutBlocking(leafRequest);
    return {
      chain: [certificateToPem(leaf.der), ...material.chainPems, material.rootsPem],
      leafDer: leaf.der,
      serialHex: leaf.serialHex,
      notAfter: leaf.notAfter,
    };
  }

  /** Signs here, through LeafIssuer, with the current material. */
  inProcessMaterial(): CaMaterial {
    return this.material;
  }

  trustBundlePem(): string {
    return this.material.rootsPem;
  }

  maxNotAfter(): Date {
    return this.material.signingCert.notAfter;
  }

  status(): SignerStatus {
    const m = this.material;
    return {
      source: this.source,
      ...(this.mode ? { mode: this.mode } : {}),
      signingCertSerial: m.signingCert.serialHex,
      signingCertSubject: m.signingCert.subject,
      signingCertNotAfter: m.signingCert.notAfter,
      signingCertUris: m.signingCert.sans.uris,
      roots: m.roots.map((r) => ({ subject: r.subject, fingerprintSha256: fingerprint(r), notAfter: r.notAfter })),
    };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }
}
