/**
 * Verdicts about bearer tokens, remembered by the token's SHA-256 (never the token itself) for at most a TTL and
 * never past the expiry the caller gives (the token's `exp`). Bounded in size: when full, expired entries go
 * first, then the oldest insertions. Only successes are meant to be stored, so that a refusal is never sticky.
 */
import { createHash } from 'node:crypto';

/** Kubernetes tokens are per pod; a node or a CA sees thousands, not millions. */
export const MAX_TOKEN_CACHE_ENTRIES = 10_000;

interface Entry<V> {
  value: V;
  expiresAt: number;
}

export interface TokenCacheOptions {
  /** Longest time an entry is kept, ms; 0 keeps nothing. */
  ttlMs: number;
  maxEntries?: number;
  /** Epoch ms. */
  now: () => number;
}

export class TokenCache<V> {
  private readonly entries = new Map<string, Entry<V>>();
  private readonly maxEntries: number;

  constructor(private readonly options: TokenCacheOptions) {
    this.maxEntries = options.maxEntries ?? MAX_TOKEN_CACHE_ENTRIES;
  }

  /** The key of a token, optionally within a scope (a cluster ID): a digest, so the cache holds no credential. */
  static keyOf(token: string, scope = ''): string {
    const digest = createHash('sha256').update(token).digest('base64');
    return scope === '' ? digest : `${scope}\u0000${digest}`;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The value stored under `key` if it has not expired (an expired entry is dropped). */
  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt > this.options.now()) return entry.value;
    this.entries.delete(key);
    return undefined;
  }

  /** Stores `value` until min(now + TTL, `expiresAtMs`); nothing when that is not in the future. */
  set(key: string, value: V, expiresAtMs?: number): void {
    const now = this.options.now();
    let expiresAt = now + this.options.ttlMs;
    if (expiresAtMs !== undefined) expiresAt = Math.min(expiresAt, expiresAtMs);
    if (!(expiresAt > now)) return;
    if (!this.entries.has(key) && this.entries.size >= this.maxEntries) {
      for (const [k, entry] of this.entries) if (entry.expiresAt <= now) this.entries.delete(k);
      // Still full: drop the oldest insertions (a Map iterates in insertion order).
      for (const k of this.entries.keys()) {
        if (this.entries.size < this.maxEntries) break;
        this.entries.delete(k);
      }
    }
    this.entries.set(key, { value, expiresAt });
  }

  clear(): void {
    this.entries.clear();
  }
}
