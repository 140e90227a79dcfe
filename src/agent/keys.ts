/**
 * Workload keys are made here, on the node, and never leave it except inside SDS responses and OUTPUT_CERTS.
 * Generation runs on libuv's worker threads (pki/keys.ts generateKeyPairOffLoop), never on the event loop: an RSA-2048 key
 * costs ~0.3 s of CPU, which would stall every SDS stream. A small pool of ready keys keeps the first answers
 * after a restart fast.
 */
import type { KeyObject } from 'node:crypto';
import type { WorkloadKeyConfig } from '../config/agent.js';
import { exportPrivateKeyPem, generateKeyPairOffLoop } from '../pki/index.js';

export function describeKeyConfig(config: WorkloadKeyConfig): string {
  return config.algorithm === 'ECDSA' ? `ECDSA ${config.curve}` : `RSA-${config.rsaBits}`;
}

export async function generateWorkloadKey(config: WorkloadKeyConfig): Promise<KeyObject> {
  const pair = await generateKeyPairOffLoop(
    config.algorithm === 'ECDSA' ? { type: 'ec', curve: config.curve === 'P384' ? 'secp384r1' : 'prime256v1' } : { type: 'rsa', bits: config.rsaBits },
  );
  return pair.privateKey;
}

export function encodeWorkloadKey(key: KeyObject, config: WorkloadKeyConfig): string {
  return exportPrivateKeyPem(key, { pkcs8: config.pkcs8 });
}

export interface KeySource {
  /** A private key for one CSR. It goes back with giveBack or spent once the CA has answered. */
  take(): Promise<KeyObject>;
  /**
   * The CA refused the CSR outright (the token was not accepted): no certificate exists for this key, so it may
   * serve another workload's CSR. Never call this when the CA's answer is unknown (timeout, cancelled, overloaded):
   * it may have certified the key for that identity.
   */
  giveBack(key: KeyObject): void;
  /** The key is certified, or its fate is unknown: it is never handed out again. */
  spent(key: KeyObject): void;
}

export interface KeyPoolEvents {
  /** A key was generated (refill or on demand). */
  generated?: () => void;
  /** A key was handed out that an earlier, refused CSR had used. */
  reused?: () => void;
  error?: (error: unknown) => void;
}

/**
 * Keys given back after a refusal that are kept: as many as there can be refused requests at once, so that a
 * stream of tokens the CA refuses stops costing key generations once these are in circulation.
 */
const MAX_RETURNED_KEYS = 64;

/**
 * Keeps up to `size` pre-generated keys; each key is certified at most once. Size 0 generates on demand only.
 * Keys whose CSR the CA refused come back (giveBack) and are handed out first, so refused tokens do not make the
 * agent generate keys: a key is generated only to replace one the CA certified (or whose fate is unknown).
 */
export class KeyPool implements KeySource {
  private readonly ready: KeyObject[] = [];
  /** Keys back from a refused CSR (a subset of what take hands out first). */
  private readonly returned = new WeakSet<KeyObject>();
  private refilling = 0;
  /** Handed out and not yet given back or spent. */
  private out = 0;
  private closed = false;
  private readonly events: KeyPoolEvents;

  constructor(
    private readonly config: WorkloadKeyConfig,
    private readonly size: number,
    events: KeyPoolEvents | ((error: unknown) => void) = {},
  ) {
    this.events = typeof events === 'function' ? { error: events } : events;
    this.refill();
  }

  get available(): number {
    return this.ready.length;
  }

  /** A ready key, else one generated now. The pool refills only when a key is spent, not when one is lent. */
  async take(): Promise<KeyObject> {
    this.out++;
    const key = this.ready.pop();
    if (!key) return this.generate();
    if (this.returned.has(key)) {
      this.returned.delete(key);
      this.events.reused?.();
    }
    return key;
  }

  giveBack(key: KeyObject): void {
    this.out = Math.max(0, this.out - 1);
    if (this.closed || this.ready.length >= this.size + MAX_RETURNED_KEYS) return;
    this.returned.add(key);
    // Last in, first out: a returned key is handed out before the fresh ones.
    this.ready.push(key);
  }

  spent(key: KeyObject): void {
    this.out = Math.max(0, this.out - 1);
    this.returned.delete(key);
    this.refill();
  }

  close(): void {
    this.closed = true;
    this.ready.length = 0;
  }

  private generate(): Promise<KeyObject> {
    this.events.generated?.();
    return generateWorkloadKey(this.config);
  }

  private refill(): void {
    // One generation at a time is enough to refill; on-demand takes do not wait for it. Lent keys count as
    // present: they come back unless certified, and a certified one is replaced then.
    while (!this.closed && this.ready.length + this.out + this.refilling < this.size && this.refilling < 1) {
      this.refilling++;
      this.generate()
        .then((key) => {
          // Fresh keys go under the returned ones, which are used first.
          if (!this.closed) this.ready.unshift(key);
        })
        .catch((error: unknown) => this.events.error?.(error))
        .finally(() => {
          this.refilling--;
          this.refill();
        });
    }
  }
}
