/**
 * Limits on the work a token the agent has not seen before can cause. Proving a new token costs a CSR (and a key)
 * and a CA round trip, and anyone who can open the SDS socket can present tokens; so
 *  - new proofs run at most `perConnection` at a time per client connection and `total` at a time overall; the
 *    rest wait, served round robin across connections, so one connection's flood waits behind its own requests
 *    and another connection's first request is next in line;
 *  - a connection may have at most `queuedPerConnection` proofs waiting; beyond that its new tokens are refused
 *    (RESOURCE_EXHAUSTED) at once;
 *  - a token the CA refused is refused locally for a short while (RefusalCache), without asking the CA again.
 * Transport-free: refusals are AgentErrors, which each API maps to its own status.
 */
import { once } from '../util/once.js';
import { AbandonedProof, AgentError } from './cache/errors.js';

export { AbandonedProof } from './cache/errors.js';

export interface ProofLimits {
  perConnection: number;
  total: number;
  queuedPerConnection: number;
}

export const DEFAULT_PROOF_LIMITS: ProofLimits = { perConnection: 4, total: 16, queuedPerConnection: 256 };

interface Waiter {
  grant: () => void;
  abandon: () => void;
}

interface ConnectionState {
  active: number;
  waiting: Waiter[];
}

/** Calls not tied to a known connection share this one. */
const UNKNOWN_CONNECTION = {};

export class ProofAdmission {
  private readonly connections = new Map<object, ConnectionState>();
  /**
   * The connections that have waiters, in round-robin order (the next to serve first). Kept apart from
   * `connections` so that a release looks only at connections that wait: with 10,000 connections each proving one
   * token, walking (and copying) all of them on every release made admission quadratic in the connections.
   */
  private readonly ready = new Set<object>();
  private active = 0;

  constructor(private readonly limits: ProofLimits = DEFAULT_PROOF_LIMITS) {}

  /** Proofs running now (for tests and metrics). */
  get running(): number {
    return this.active;
  }

  /** Proofs waiting for their turn. */
  get queued(): number {
    let count = 0;
    for (const state of this.connections.values()) count += state.waiting.length;
    return count;
  }

  /**
   * Resolves with a release function once this connection may start a proof; rejects with RESOURCE_EXHAUSTED
   * when the connection already has too many waiting, or AbandonedProof when `signal` aborts first.
   */
  enter(connection: object | undefined, signal?: AbortSignal): Promise<() => void> {
    const key = connection ?? UNKNOWN_CONNECTION;
    const state = this.connections.get(key) ?? { active: 0, waiting: [] };
    this.connections.set(key, state);
    if (signal?.aborted) {
      this.forgetIfIdle(key, state);
      return Promise.reject(new AbandonedProof());
    }
    if (state.waiting.length === 0 && state.active < this.limits.perConnection && this.active < this.limits.total) {
      return Promise.resolve(this.start(key, state));
    }
    if (state.waiting.length >= this.limits.queuedPerConnection) {
      this.forgetIfIdle(key, state);
      return Promise.reject(
        new AgentError(
          'resource_exhausted',
          `this connection already has ${state.active + state.waiting.length} new workload tokens waiting to be proven ` +
            `(at most ${this.limits.perConnection} at a time, ${this.limits.queuedPerConnection} waiting); retry later`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const onAbort = (): void => waiter.abandon();
      const waiter: Waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.start(key, state));
        },
        abandon: () => {
          const index = state.waiting.indexOf(waiter);
          if (index === -1) return;
          state.waiting.splice(index, 1);
          if (state.waiting.length === 0) this.ready.delete(key);
          this.forgetIfIdle(key, state);
          reject(new AbandonedProof());
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      state.waiting.push(waiter);
      this.ready.add(key);
    });
  }

  private start(key: object, state: ConnectionState): () => void {
    state.active++;
    this.active++;
    return once(() => {
      state.active--;
      this.active--;
      this.forgetIfIdle(key, state);
      this.dispatch();
    });
  }

  /** Grants free places round robin: each connection with a waiter gets one before any gets a second. */
  private dispatch(): void {
    // A connection served and still waiting goes to the back of `ready`, where this same loop reaches it again
    // (a Set's iteration visits what is added during it); every grant takes a place, so the loop ends.
    for (const key of this.ready) {
      if (this.active >= this.limits.total) return;
      const state = this.connections.get(key)!;
      if (state.active >= this.limits.perConnection) continue;
      this.ready.delete(key);
      const waiter = state.waiting.shift()!;
      if (state.waiting.length > 0) this.ready.add(key);
      waiter.grant();
    }
  }

  private forgetIfIdle(key: object, state: ConnectionState): void {
    if (state.active === 0 && state.waiting.length === 0) this.connections.delete(key);
  }
}

export interface Refusal<Code> {
  code: Code;
  message: string;
  until: number;
}

/**
 * Tokens the CA refused (UNAUTHENTICATED, PERMISSION_DENIED), by credential key (a hash of the token), for `ttlMs`
 * by `now`. At most `maxEntries` are kept; the oldest go first.
 */
export class RefusalCache<Code = unknown> {
  private readonly refusals = new Map<string, Refusal<Code>>();

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    private readonly now: () => number,
  ) {}

  get size(): number {
    return this.refusals.size;
  }

  add(key: string, code: Code, message: string): void {
    if (this.ttlMs <= 0 || this.maxEntries <= 0) return;
    this.refusals.delete(key);
    while (this.refusals.size >= this.maxEntries) this.refusals.delete(this.refusals.keys().next().value!);
    this.refusals.set(key, { code, message, until: this.now() + this.ttlMs });
  }

  get(key: string): Refusal<Code> | null {
    const refusal = this.refusals.get(key);
    if (!refusal) return null;
    if (refusal.until <= this.now()) {
      this.refusals.delete(key);
      return null;
    }
    return refusal;
  }
}
