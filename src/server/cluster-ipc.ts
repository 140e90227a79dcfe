/**
 * Calls and notices between the primary process of `meshca ca --workers N` and its workers, over Node's cluster
 * IPC channel (advanced serialization, so Buffers and Dates survive). One small peer on each side: `call` sends
 * a request and resolves with the answer; `notify` sends a one-way notice.
 */
import { CaError, type CaErrorCode } from '../ca/index.js';

export type IpcMessage =
  | { kind: 'call'; id: number; method: string; params: unknown }
  | { kind: 'reply'; id: number; value?: unknown; error?: { message: string; code?: string } }
  | { kind: 'notice'; name: string; params: unknown };

export type CallHandler = (method: string, params: unknown) => Promise<unknown> | unknown;
export type NoticeHandler = (name: string, params: unknown) => void;

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

export class IpcPeer {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void; method: string }>();
  private closed = false;

  constructor(
    private readonly send: (message: IpcMessage) => void,
    private readonly onCall: CallHandler,
    private readonly onNotice: NoticeHandler,
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
        this.onNotice(message.name, message.params);
        return;
      case 'call':
        void this.answer(message.id, message.method, message.params);
        return;
    }
  }

  private async answer(id: number, method: string, params: unknown): Promise<void> {
    let reply: IpcMessage;
    try {
      reply = { kind: 'reply', id, value: await this.onCall(method, params) };
    } catch (error) {
      reply = { kind: 'reply', id, error: encodeError(error) };
    }
    this.trySend(reply);
  }

  call<T>(method: string, params: unknown): Promise<T> {
    if (this.closed) return Promise.reject(new IpcClosedError(method));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, method });
      if (!this.trySend({ kind: 'call', id, method, params })) {
        this.pending.delete(id);
        reject(new IpcClosedError(method));
      }
    });
  }

  notify(name: string, params: unknown): boolean {
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
