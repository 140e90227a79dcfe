/**
 * PROTOTYPE (bench only): a WorkloadSigner that builds and signs leaf certificates on worker threads, so that
 * the CA's event loop only does gRPC, authentication and the CSR check while RSA signatures run on other cores.
 * It wraps a LocalSigner and delegates everything but `sign` to it; the workers get the signing material (the
 * private KeyObject is cloned to them by postMessage) at start and again on every material change.
 *
 * What `meshca ca` would need to adopt it is written up in bench/NOTES.md ("Signing in worker threads").
 */
import type { KeyObject } from 'node:crypto';
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import type { LocalSigner } from '../src/ca/local-signer.js';
import type { SignedChain, SignerStatus, WorkloadSignRequest, WorkloadSigner } from '../src/ca/signer.js';
import { startTsWorker } from './workers.js';

export interface SignWorkerMaterial {
  type: 'material';
  generation: number;
  signingCertDer: Buffer;
  privateKey: KeyObject;
}

export interface SignWorkerRequest {
  type: 'sign';
  id: number;
  generation: number;
  spkiDer: Buffer;
  uris: readonly string[];
  dnsNames?: readonly string[];
  ttlSeconds: number;
}

export type SignWorkerReply =
  | { type: 'signed'; id: number; leafPem: string; leafDer: Uint8Array; serialHex: string; notAfterMs: number }
  | { type: 'failed'; id: number; message: string };

interface Pending {
  resolve: (chain: SignedChain) => void;
  reject: (error: Error) => void;
  chainPems: string[];
  rootsPem: string;
}

export class WorkerPoolSigner implements WorkloadSigner {
  readonly source: SignerStatus['source'];
  private readonly workers: Worker[];
  private readonly inFlight: number[];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private generation = 0;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly inner: LocalSigner,
    threads = Math.max(1, availableParallelism() - 1),
  ) {
    this.source = inner.source;
    this.workers = Array.from({ length: threads }, () => startTsWorker(new URL('./sign-worker.ts', import.meta.url), null));
    this.inFlight = this.workers.map(() => 0);
    for (const worker of this.workers) {
      worker.on('message', (reply: SignWorkerReply) => this.onReply(worker, reply));
      worker.on('error', (error) => this.failAll(error));
    }
    this.pushMaterial();
    this.unsubscribe = inner.onChange(() => this.pushMaterial());
  }

  get threads(): number {
    return this.workers.length;
  }

  private pushMaterial(): void {
    const material = this.inner.current();
    this.generation++;
    const message: SignWorkerMaterial = { type: 'material', generation: this.generation, signingCertDer: material.signingCert.der, privateKey: material.privateKey };
    for (const worker of this.workers) worker.postMessage(message);
  }

  sign(request: WorkloadSignRequest): Promise<SignedChain> {
    // The least busy worker: signatures cost the same, so this spreads them evenly across cores.
    let index = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.inFlight[i]! < this.inFlight[index]!) index = i;
    const id = this.nextId++;
    const material = this.inner.current();
    const message: SignWorkerRequest = {
      type: 'sign',
      id,
      generation: this.generation,
      spkiDer: request.spkiDer,
      uris: request.uris,
      ...(request.dnsNames ? { dnsNames: request.dnsNames } : {}),
      ttlSeconds: request.ttlSeconds,
    };
    return new Promise<SignedChain>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, chainPems: material.chainPems, rootsPem: material.rootsPem });
      this.inFlight[index]!++;
      this.workers[index]!.postMessage(message);
    });
  }

  private onReply(worker: Worker, reply: SignWorkerReply): void {
    const index = this.workers.indexOf(worker);
    this.inFlight[index]!--;
    const pending = this.pending.get(reply.id);
    if (!pending) return;
    this.pending.delete(reply.id);
    if (reply.type === 'failed') {
      pending.reject(new Error(reply.message));
      return;
    }
    pending.resolve({
      chain: [reply.leafPem, ...pending.chainPems, pending.rootsPem],
      leafDer: Buffer.from(reply.leafDer.buffer, reply.leafDer.byteOffset, reply.leafDer.byteLength),
      serialHex: reply.serialHex,
      notAfter: new Date(reply.notAfterMs),
    });
  }

  private failAll(error: Error): void {
    for (const pending of this.pending.values()) pending.reject(new Error(`signing worker failed: ${error.message}`));
    this.pending.clear();
  }

  trustBundlePem(): string {
    return this.inner.trustBundlePem();
  }

  maxNotAfter(): Date | null {
    return this.inner.maxNotAfter();
  }

  status(): SignerStatus {
    return this.inner.status();
  }

  onChange(listener: () => void): () => void {
    return this.inner.onChange(listener);
  }

  async close(): Promise<void> {
    this.unsubscribe();
    this.failAll(new Error('the signer is closing'));
    await Promise.all(this.workers.map((w) => w.terminate()));
    await this.inner.close();
  }
}
