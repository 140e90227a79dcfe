/**
 * Workload keys are made here, on the node, and never leave it except inside SDS responses and OUTPUT_CERTS.
 * Generation runs on libuv's worker threads (crypto.generateKeyPair), never on the event loop: an RSA-2048 key
 * costs ~0.3 s of CPU, which would stall every SDS stream. A small pool of ready keys keeps the first answers
 * after a restart fast.
 */
import { generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type { WorkloadKeyConfig } from '../config/agent.js';
import { exportPrivateKeyPem } from '../pki/index.js';

const generateKeyPairAsync = promisify(generateKeyPair);

export function describeKeyConfig(config: WorkloadKeyConfig): string {
  return config.algorithm === 'ECDSA' ? `ECDSA ${config.curve}` : `RSA-${config.rsaBits}`;
}

export async function generateWorkloadKey(config: WorkloadKeyConfig): Promise<KeyObject> {
  const pair =
    config.algorithm === 'ECDSA'
      ? await generateKeyPairAsync('ec', { namedCurve: config.curve === 'P384' ? 'secp384r1' : 'prime256v1' })
      : await generateKeyPairAsync('rsa', { modulusLength: config.rsaBits, publicExponent: 0x10001 });
  return pair.privateKey;
}

export function encodeWorkloadKey(key: KeyObject, config: WorkloadKeyConfig): string {
  return exportPrivateKeyPem(key, { pkcs8: config.pkcs8 });
}

export interface KeySource {
  /** A fresh private key that nobody else has been given. */
  take(): Promise<KeyObject>;
}

/** Keeps up to `size` pre-generated keys; each key is handed out once. Size 0 generates on demand only. */
export class KeyPool implements KeySource {
  private readonly ready: KeyObject[] = [];
  private refilling = 0;
  private closed = false;

  constructor(
    private readonly config: WorkloadKeyConfig,
    private readonly size: number,
    private readonly onError: (error: unknown) => void = () => undefined,
  ) {
    this.refill();
  }

  get available(): number {
    return this.ready.length;
  }

  async take(): Promise<KeyObject> {
    const key = this.ready.shift();
    this.refill();
    return key ?? generateWorkloadKey(this.config);
  }

  close(): void {
    this.closed = true;
    this.ready.length = 0;
  }

  private refill(): void {
    // One generation at a time is enough to refill; on-demand takes do not wait for it.
    while (!this.closed && this.ready.length + this.refilling < this.size && this.refilling < 1) {
      this.refilling++;
      generateWorkloadKey(this.config)
        .then((key) => {
          if (!this.closed) this.ready.push(key);
        })
        .catch(this.onError)
        .finally(() => {
          this.refilling--;
          this.refill();
        });
    }
  }
}
