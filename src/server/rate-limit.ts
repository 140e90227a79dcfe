/**
 * Per-identity rate limiting of certificate requests (--max-csr-per-identity-per-minute): one token bucket per
 * authenticated caller, holding a minute's worth of requests and refilled continuously, so a workload may burst
 * after a quiet spell but no single identity can keep the CA signing for it alone.
 */

export interface RateLimiterOptions {
  /** Requests per minute per identity; 0 disables limiting. */
  perMinute: number;
  now?: () => number;
  /** Buckets kept before idle (full) ones are dropped. */
  maxIdentities?: number;
}

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export class PerIdentityRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly now: () => number;
  private readonly refillPerMs: number;
  private readonly maxIdentities: number;

  constructor(private readonly options: RateLimiterOptions) {
    this.now = options.now ?? Date.now;
    this.refillPerMs = options.perMinute / 60_000;
    this.maxIdentities = options.maxIdentities ?? 100_000;
  }

  get perMinute(): number {
    return this.options.perMinute;
  }

  get enabled(): boolean {
    return this.options.perMinute > 0;
  }

  /** Takes one request from `identity`'s bucket; false when the bucket is empty (the request must be refused). */
  take(identity: string): boolean {
    if (!this.enabled) return true;
    const now = this.now();
    let bucket = this.buckets.get(identity);
    if (bucket) {
      bucket.tokens = Math.min(this.options.perMinute, bucket.tokens + (now - bucket.updatedAt) * this.refillPerMs);
      bucket.updatedAt = now;
    } else {
      if (this.buckets.size >= this.maxIdentities) this.dropIdle(now);
      bucket = { tokens: this.options.perMinute, updatedAt: now };
      this.buckets.set(identity, bucket);
    }
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** Forgets buckets that have refilled completely: they hold no state a new bucket would not. */
  private dropIdle(now: number): void {
    for (const [identity, bucket] of this.buckets) {
      if (bucket.tokens + (now - bucket.updatedAt) * this.refillPerMs >= this.options.perMinute) this.buckets.delete(identity);
    }
    // Still full of active identities: drop the oldest so memory stays bounded (they start over with a full bucket).
    for (const identity of this.buckets.keys()) {
      if (this.buckets.size < this.maxIdentities) break;
      this.buckets.delete(identity);
    }
  }
}
