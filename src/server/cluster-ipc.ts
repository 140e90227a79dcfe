/**
 * Calls and notices between the primary process of `meshca ca --workers N` and its workers, over Node's cluster
 * IPC channel (advanced serialization, so Buffers and Dates survive). One small peer on each side: `call` sends
 * a request and resolves with the answer; `notify` sends a one-way notice. Each method and notice has its own
 * parameter and result types (the maps below), so a call cannot name a method the other side does not answer or
 * pass it the wrong parameters.
 */
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { NodeCheckRequest, NodeCheckVerdict } from '../authn/index.js';
import { CaError, type CaErrorCode, type SignedChain, type WorkloadSignRequest } from '../ca/index.js';
import type { SignerSnapshot } from '../ca/snapshot-signer.js';
import type { DecisionQuery, DecisionsAnswer } from './decisions.js';
import type { TrustBundleNotice } from './trust-bundles.js';

/** A method's parameters and result. */
interface Method<P, R> {
  params: P;
  result: R;
}
type CallMap = Record<string, Method<unknown, unknown>>;
type NoticeMap = Record<string, unknown>;

/** What a worker asks its primary. */
export type PrimaryMethods = {
  snapshot: Method<null, SignerSnapshot>;
  sign: Method<WorkloadSignRequest, SignedChain>;
  /** The verdict comes back as a ReviewOutcomeMessage, decoded strictly by the worker (hence unknown). */
  review: Method<{ clusterId: string; token: string }, unknown>;
  checkNode: Method<NodeCheckRequest, NodeCheckVerdict>;
  /** The trust bundles to serve (WatchTrustBundles), null when the CA has none (the method is then UNIMPLEMENTED). */
  trustBundles: Method<null, TrustBundleNotice | null>;
}

/** What the primary asks a worker. */
export type WorkerMethods = {
  metrics: Method<null, MetricObjectWithValues<MetricValue<string>>[]>;
  decisions: Method<DecisionQuery, DecisionsAnswer>;
}

/** One-way notices from a worker to its primary. */
export type WorkerNotices = {
  listening: { grpcPort: number };
  fatal: { message: string };
}

/** One-way notices from the primary to its workers. */
export type PrimaryNotices = {
  snapshot: SignerSnapshot;
  /** The trust bundles changed (decoded strictly by the worker, hence unknown). */
  trustBundles: unknown;
  shutdown: null;
}

/** The primary's end of the channel to one worker, and a worker's end of the channel to its primary. */
export type PrimaryPeer = IpcPeer<WorkerMethods, PrimaryMethods, PrimaryNotices, WorkerNotices>;
export type WorkerPeer = IpcPeer<PrimaryMethods, WorkerMethods, WorkerNotices, PrimaryNotices>;

/** A notice as a discriminated union on its name. */
export type Notice<N extends NoticeMap> = { [K in keyof N & string]: { name: K; params: N[K] } }[keyof N & string];

/** The answering side's handlers, one per method. */
export type CallHandlers<M extends CallMap> = { [K in keyof M & string]: (params: M[K]['params']) => Promise<M[K]['result']> | M[K]['result'] };

export type IpcMessage =
  | { kind: 'call'; id: number; method: string; params: unknown }
  | { kind: 'reply'; id: number; value?: unknown; error?: { message: string; code?: string } }
  | { kind: 'notice'; name: string; params: unknown };

export class IpcClosedError extends Error {
  constructor(what: string) {
    super(`${what}: the channel between the CA's processes closed`);
    this.name = 'IpcClosedError';
  }
}

function isIpcMessage(value: unknown): value is IpcMessage {
  return typeof value === 'object' && value !== null && 'kind' in value && ['call', 'reply', 'notice'].includes((value as { kind: unknown }).kind as string);
}

/** Errors cross as {message, code}: a CaError keeps its code (and so its gRPC status) on the other side. */
function encodeError(error: unknown): { message: string; code?: string } {
  const message = error instanceof Error ? error.message : String(error);
  return error instanceof CaError ? { message, code: error.code } : { message };
}

function decodeError(error: { message: string; code?: string }): Error {
  return error.code ? new CaError(error.code as CaErrorCode, error.message) : new Error(error.message);
}

/**
 * One side of the channel: `Out`/`OutNotices` are what it sends, `In`/`InNotices` what it answers and receives.
 * Messages from the other process are our own program's, but are still checked for shape before use.
 */
export class IpcPeer<Out extends CallMap, In extends CallMap, OutNotices extends NoticeMap, InNotices extends NoticeMap> {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void; method: string }>();
  private closed = false;

  constructor(
    private readonly send: (message: IpcMessage) => void,
    private readonly handlers: CallHandlers<In>,
    private readonly onNotice: (notice: Notice<InNotices>) => void,
  ) {}

  /** Feed every message that arrives on the channel here. */
  receive(message: unknown): void {
    if (!isIpcMessage(message)) return;
    switch (message.kind) {
      case 'reply': {
        const waiting = this.pending.get(message.id);
        if (!waiting) return;
        this.pending.delete(message.id);
        if (message.error) waiting.reject(decodeError(message.error));
        else waiting.resolve(message.value);
        return;
      }
      case 'notice':
        this.onNotice({ name: message.name, params: message.params } as Notice<InNotices>);
        return;
      case 'call':
        void this.answer(message.id, message.method, message.params);
        return;
    }
  }

  private async answer(id: number, method: string, params: unknown): Promise<void> {
    let reply: IpcMessage;
    try {
      if (!Object.hasOwn(this.handlers, method)) throw new Error(`unknown call ${method}`);
      const handler = this.handlers[method as keyof In & string] as (params: unknown) => unknown;
      reply = { kind: 'reply', id, value: await handler(params) };
    } catch (error) {
      reply = { kind: 'reply', id, error: encodeError(error) };
    }
    this.trySend(reply);
  }

  call<K extends keyof Out & string>(method: K, params: Out[K]['params']): Promise<Out[K]['result']> {
    if (this.closed) return Promise.reject(new IpcClosedError(method));
    const id = this.nextId++;
    return new Promise<Out[K]['result']>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, method });
      if (!this.trySend({ kind: 'call', id, method, params })) {
        this.pending.delete(id);
        reject(new IpcClosedError(method));
      }
    });
  }

  notify<K extends keyof OutNotices & string>(name: K, params: OutNotices[K]): boolean {
    return this.trySend({ kind: 'notice', name, params });
  }

  /** The other side is gone: every pending call fails. */
  close(): void {
    this.closed = true;
    for (const [id, waiting] of this.pending) {
      this.pending.delete(id);
      waiting.reject(new IpcClosedError(waiting.method));
    }
  }

  private trySend(message: IpcMessage): boolean {
    if (this.closed) return false;
    try {
      this.send(message);
      return true;
    } catch {
      return false;
    }
  }
}

/** The primary's end of the channel to one worker. */
export function primaryPeer(
  send: (message: IpcMessage) => void,
  handlers: CallHandlers<PrimaryMethods>,
  onNotice: (notice: Notice<WorkerNotices>) => void,
): PrimaryPeer {
  return new IpcPeer(send, handlers, onNotice);
}

/** A worker's end of the channel to its primary. */
export function workerPeer(send: (message: IpcMessage) => void, handlers: CallHandlers<WorkerMethods>, onNotice: (notice: Notice<PrimaryNotices>) => void): WorkerPeer {
  return new IpcPeer(send, handlers, onNotice);
}
