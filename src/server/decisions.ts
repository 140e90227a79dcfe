/**
 * The CA's recent decisions, in memory: for each CreateCertificate call, who asked (and how they proved it), for
 * which identity, what the answer was (a gRPC status and its reason) and, when issued, the serial and NotAfter.
 * Answers "what happened to identity X" on /debug/decisions without searching logs.
 *
 * Bounded by construction: a ring of at most `capacity` entries, each made of strings cut to a fixed length (a
 * refused caller may send a huge or strange identity). Never holds a token, a CSR or any key material.
 */
import type { AuthenticatorName } from '../authn/index.js';
import { MAX_DECISION_RECORD_SIZE } from '../config/ca.js';

/** Decisions /debug/decisions answers with when no ?limit= is given. */
export const DEFAULT_DECISIONS_LIMIT = 100;
/** Longest identity, caller or client address kept; a longer one is cut and ends with "...". */
export const MAX_DECISION_FIELD_CHARS = 256;
/** Longest reason kept (refusal messages may quote the request). */
export const MAX_DECISION_REASON_CHARS = 512;

export interface Decision {
  /** When the CA answered, from the CA's clock (ISO 8601). */
  time: string;
  outcome: 'issued' | 'refused';
  /** The gRPC status name: OK, UNAUTHENTICATED, INVALID_ARGUMENT, ... */
  code: string;
  /** The SPIFFE ID issued or asked for; null when the caller was refused before proving one. */
  identity: string | null;
  /** Who asked: a Kubernetes username, a JWT subject or a client certificate's URI SAN; null when unauthenticated. */
  caller: string | null;
  /** How the caller was authenticated; null when it was not. */
  callerKind: AuthenticatorName | null;
  /** True when a node agent asked for a pod's identity (ImpersonatedIdentity), granted or not. */
  impersonated: boolean;
  /** Why a request was refused; null when issued. */
  reason: string | null;
  serial: string | null;
  notAfter: string | null;
  clientAddress: string;
}

/** What the CA service knows of one call when it answers. */
export interface DecisionInput {
  outcome: 'issued' | 'refused';
  code: string;
  identity?: string | undefined;
  caller?: string | undefined;
  callerKind?: AuthenticatorName | undefined;
  impersonated?: boolean;
  reason?: string | undefined;
  serial?: string | undefined;
  notAfter?: Date | undefined;
  clientAddress: string;
}

export interface DecisionQuery {
  /** Only decisions for this SPIFFE ID (issued or asked for) or by this caller. */
  identity?: string | undefined;
  /** At most this many, newest first. */
  limit: number;
}

export interface DecisionsAnswer {
  capacity: number;
  /** Decisions held now (at most `capacity`). */
  held: number;
  decisions: Decision[];
}

function cut(value: string, max: number): string {
  return value.length > max ? `${value.slice(0, max - 3)}...` : value;
}

function cutOrNull(value: string | undefined, max: number): string | null {
  return value === undefined ? null : cut(value, max);
}

export class DecisionRecord {
  readonly capacity: number;
  private readonly ring: (Decision | undefined)[];
  /** Index the next decision goes to. */
  private next = 0;
  private count = 0;
  private readonly now: () => number;

  /** `capacity` 0 records nothing. `now` (epoch ms): the CA's clock, injected by tests. */
  constructor(options: { capacity: number; now?: () => number }) {
    if (!Number.isInteger(options.capacity) || options.capacity < 0 || options.capacity > MAX_DECISION_RECORD_SIZE) {
      throw new RangeError(`decision record size must be an integer from 0 to ${MAX_DECISION_RECORD_SIZE}, not ${options.capacity}`);
    }
    this.capacity = options.capacity;
    this.ring = new Array<Decision | undefined>(options.capacity);
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.count;
  }

  add(input: DecisionInput): void {
    if (this.capacity === 0) return;
    this.ring[this.next] = {
      time: new Date(this.now()).toISOString(),
      outcome: input.outcome,
      code: input.code,
      identity: cutOrNull(input.identity, MAX_DECISION_FIELD_CHARS),
      caller: cutOrNull(input.caller, MAX_DECISION_FIELD_CHARS),
      callerKind: input.callerKind ?? null,
      impersonated: input.impersonated === true,
      reason: cutOrNull(input.reason, MAX_DECISION_REASON_CHARS),
      serial: input.serial ?? null,
      notAfter: input.notAfter?.toISOString() ?? null,
      clientAddress: cut(input.clientAddress, MAX_DECISION_FIELD_CHARS),
    };
    this.next = (this.next + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
  }

  /** Newest first. */
  query(query: DecisionQuery): DecisionsAnswer {
    const decisions: Decision[] = [];
    for (let i = 1; i <= this.count && decisions.length < query.limit; i++) {
      const decision = this.ring[(this.next - i + this.capacity) % this.capacity]!;
      if (query.identity === undefined || decision.identity === query.identity || decision.caller === query.identity) decisions.push(decision);
    }
    return { capacity: this.capacity, held: this.count, decisions };
  }
}

/** Several records (the workers of `meshca ca --workers N`) as one answer, newest first. */
export function mergeDecisions(answers: readonly DecisionsAnswer[], limit: number): DecisionsAnswer {
  const all = answers.flatMap((a) => a.decisions).sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
  return {
    capacity: answers.reduce((sum, a) => sum + a.capacity, 0),
    held: answers.reduce((sum, a) => sum + a.held, 0),
    decisions: all.slice(0, limit),
  };
}

/** The query of /debug/decisions, or the one-line reason it is refused. */
export function parseDecisionQuery(params: Record<string, unknown>): DecisionQuery | { error: string } {
  const { identity, limit } = params;
  if (identity !== undefined && typeof identity !== 'string') return { error: 'give identity once, e.g. ?identity=spiffe://cluster.local/ns/default/sa/httpbin' };
  let count = DEFAULT_DECISIONS_LIMIT;
  if (limit !== undefined) {
    count = typeof limit === 'string' && /^[0-9]{1,6}$/.test(limit) ? Number(limit) : 0;
    if (count < 1) return { error: `limit must be a whole number from 1 to 999999, not ${JSON.stringify(limit)}` };
  }
  return { ...(identity ? { identity } : {}), limit: count };
}
