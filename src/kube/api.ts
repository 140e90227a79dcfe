/**
 * Calling a Kubernetes API server: a deadline that really ends a call, a pool of kept-alive connections per
 * cluster, and one-line descriptions of the client's errors. Shared by every component that talks to an API
 * server, so it knows nothing about what the calls are for.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import type { ConfigurationOptions, ObservableMiddleware, RequestContext } from '@kubernetes/client-node';
import { kubeClient, kubeClientIfLoaded } from './client.js';

class TimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs / 1000}s`);
    this.name = 'TimeoutError';
  }
}

/** What `callWithDeadline` tells the connection pool about one call: when it is abandoned, and when it settled. */
interface CallControl {
  /** Aborted (with a TimeoutError) when the deadline passes. */
  readonly signal: AbortSignal;
  readonly settledHooks: (() => void)[];
}

/** The calls made through `callWithDeadline`, by the request context the client built for them. */
const deadlineCalls = new WeakMap<RequestContext, CallControl>();

/**
 * Runs one Kubernetes API call with a deadline that really ends it: when the deadline passes, the call's own
 * connection is destroyed, so an API server that hangs does not keep requests (and sockets) piling up behind
 * callers that have already been told UNAVAILABLE. Only that call's connection: the kept-alive connections other
 * calls use are left alone, and a call still waiting for one of them just leaves the queue. `call` must pass the
 * options it is given to the API method. `onSettled` runs once the underlying call has finished, successfully or
 * not (after the deadline at the latest, give or take the time to tear the connection down).
 */
export function callWithDeadline<T>(
  call: (options: ConfigurationOptions) => Promise<T>,
  timeoutMs: number,
  onSettled?: () => void,
): Promise<T> {
  const agents: (http.Agent | https.Agent)[] = [];
  const controller = new AbortController();
  const control: CallControl = { signal: controller.signal, settledHooks: [] };
  // Prepended, so it runs before the cluster's connection pool sees the request; the client has already attached
  // its per-request agent (TLS settings and credentials of the kubeconfig) by then.
  const { Observable } = kubeClient();
  const middleware: ObservableMiddleware = {
    pre: (context) => {
      if (controller.signal.aborted) return new Observable(Promise.reject(new TimeoutError(timeoutMs)));
      const agent = context.getAgent();
      if (agent) agents.push(agent);
      deadlineCalls.set(context, control);
      return new Observable(Promise.resolve(context));
    },
    post: (response) => new Observable(Promise.resolve(response)),
  };
  const settled = (): void => {
    for (const hook of control.settledHooks.splice(0)) hook();
    onSettled?.();
  };
  let underlying: Promise<T>;
  try {
    underlying = call({ middleware: [middleware], middlewareMergeStrategy: 'prepend' });
  } catch (error) {
    settled();
    return Promise.reject(error);
  }
  void underlying.then(settled, settled);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new TimeoutError(timeoutMs);
      // A pooled call destroys its own request (and so its socket); an agent of its own goes with all its sockets.
      controller.abort(error);
      for (const agent of agents) agent.destroy();
      reject(error);
    }, timeoutMs);
    timer.unref();
  });
  return Promise.race([underlying, deadline]).finally(() => clearTimeout(timer));
}

/** At most this many connections to one API server at once; TokenReviews and pod look-ups share them. */
export const DEFAULT_MAX_API_CONNECTIONS = 32;
/** A kept-alive connection idle this long is closed (a server's shorter Keep-Alive hint wins, see http.Agent). */
const IDLE_CONNECTION_MS = 15_000;

/** The method http.ClientRequest hands itself to (public in Node, missing from @types/node). */
type RequestAgent = http.Agent & { addRequest(request: http.ClientRequest, options: http.RequestOptions): void };

interface PooledAgent {
  agent: http.Agent;
  /** Calls holding a slot on this agent. */
  inUse: number;
  /** Replaced by an agent with other TLS options or credentials: destroyed once its calls are done. */
  retired: boolean;
}

/**
 * Kept-alive connections to one API server. @kubernetes/client-node attaches a new http(s).Agent to every
 * request, i.e. a new TCP connection and TLS handshake per call (on both sides); this pool swaps it for a
 * long-lived keep-alive agent built from exactly the same options (CA, client certificate and key, server name,
 * verification), so the TLS settings and credentials stay the kubeconfig's. Requests carry their own bearer
 * token in a header, so connections are shared by calls, never by credentials: a change of TLS options (e.g. a
 * client certificate rotated by an exec plugin) gets a new agent, and the old one is closed once idle.
 *
 * At most `maxConnections` calls hold a connection at once; the others wait here, in order, and a call whose
 * deadline passes while waiting leaves the queue without ever opening a connection. Only calls made through
 * `callWithDeadline` are pooled (they are the ones whose end is known); others keep the client's own agent.
 */
export class ApiConnectionPool {
  private readonly agents = new Map<string, PooledAgent>();
  private current: PooledAgent | undefined;
  private active = 0;
  private readonly waiting: { grant: () => void; fail: (error: unknown) => void }[] = [];
  private closed = false;

  constructor(readonly maxConnections: number = DEFAULT_MAX_API_CONNECTIONS) {
    if (!Number.isInteger(maxConnections) || maxConnections < 1) throw new Error(`maxConnections must be a positive integer, not ${maxConnections}`);
  }

  readonly middleware: ObservableMiddleware = {
    pre: (context) => new (kubeClient().Observable)(this.attach(context)),
    post: (response) => new (kubeClient().Observable)(Promise.resolve(response)),
  };

  /** Calls holding a connection slot now. */
  get callsActive(): number {
    return this.active;
  }

  /** Calls waiting for a connection slot now. */
  get callsWaiting(): number {
    return this.waiting.length;
  }

  /** Sockets open now (busy or idle) over every agent of this pool. */
  get openSockets(): number {
    let count = 0;
    for (const { agent } of this.agents.values()) {
      for (const list of [agent.sockets, agent.freeSockets]) for (const sockets of Object.values(list)) count += sockets?.length ?? 0;
    }
    return count;
  }

  close(): void {
    this.closed = true;
    for (const { agent } of this.agents.values()) agent.destroy();
    this.agents.clear();
    this.current = undefined;
  }

  private async attach(context: RequestContext): Promise<RequestContext> {
    const control = deadlineCalls.get(context);
    const given = context.getAgent();
    if (!control || !given || this.closed) return context;
    const pooled = this.agentLike(given);
    if (!pooled) return context;
    await this.acquire(control.signal);
    pooled.inUse++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      // After the current tick: a kept-alive socket is put back ('free') right after its request's 'close'.
      setImmediate(() => {
        pooled.inUse--;
        this.active--;
        if (pooled.retired && pooled.inUse === 0) pooled.agent.destroy();
        this.grantNext();
      });
    };
    // Whatever happens to the request, the slot comes back when the call has settled.
    control.settledHooks.push(release);
    // The request this call makes goes to the shared agent; this call's own view of it can destroy just it.
    const lease = Object.create(pooled.agent) as RequestAgent;
    lease.addRequest = (request: http.ClientRequest, options: http.RequestOptions): void => {
      request.once('close', release);
      const abandon = (): void => void request.destroy(control.signal.reason as Error);
      if (control.signal.aborted) queueMicrotask(abandon);
      else control.signal.addEventListener('abort', abandon, { once: true });
      request.once('close', () => control.signal.removeEventListener('abort', abandon));
      (pooled.agent as RequestAgent).addRequest(request, options);
    };
    context.setAgent(lease);
    return context;
  }

  /** Resolves when this call may use a connection; rejects with the signal's reason if it is abandoned first. */
  private acquire(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    if (this.active < this.maxConnections && this.waiting.length === 0) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const entry = {
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          this.active++;
          resolve();
        },
        fail: reject,
      };
      const onAbort = (): void => {
        const index = this.waiting.indexOf(entry);
        if (index !== -1) this.waiting.splice(index, 1);
        reject(signal.reason as Error);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  private grantNext(): void {
    while (this.active < this.maxConnections && this.waiting.length > 0) this.waiting.shift()!.grant();
  }

  /**
   * The kept-alive agent for requests the client would have sent through `given`: same options, same agent.
   * Null for agents this pool does not recreate (proxies) or options it cannot compare (functions, objects).
   */
  private agentLike(given: http.Agent | https.Agent): PooledAgent | null {
    const isHttps = given.constructor === https.Agent;
    if (!isHttps && given.constructor !== http.Agent) return null;
    const options = (given as { options?: Record<string, unknown> }).options ?? {};
    const fingerprint = optionsFingerprint(isHttps, options);
    if (fingerprint === null) return null;
    let pooled = this.agents.get(fingerprint);
    if (!pooled) {
      const keepAlive = { ...options, keepAlive: true, maxSockets: this.maxConnections, maxFreeSockets: this.maxConnections, timeout: IDLE_CONNECTION_MS, scheduling: 'lifo' as const };
      pooled = { agent: isHttps ? new https.Agent(keepAlive) : new http.Agent(keepAlive), inUse: 0, retired: false };
      this.agents.set(fingerprint, pooled);
    }
    if (this.current !== pooled) {
      const previous = this.current;
      this.current = pooled;
      pooled.retired = false;
      if (previous) {
        previous.retired = true;
        for (const [key, value] of this.agents) if (value === previous) this.agents.delete(key);
        if (previous.inUse === 0) previous.agent.destroy();
      }
    }
    return pooled;
  }
}

/**
 * A digest of an agent's options (never the key material itself as a map key). Null when an option is not plain
 * data (a callback or an object such as a SecureContext), which this pool then does not try to reproduce.
 */
function optionsFingerprint(isHttps: boolean, options: Record<string, unknown>): string | null {
  const hash = createHash('sha256').update(isHttps ? 'https' : 'http');
  const add = (value: unknown): boolean => {
    if (value === undefined || value === null) hash.update(`\u0000${String(value)}`);
    else if (typeof value === 'boolean' || typeof value === 'number') hash.update(`\u0000${typeof value}:${String(value)}`);
    else if (typeof value === 'string') hash.update(`\u0000s${value.length}:`).update(value);
    else if (Buffer.isBuffer(value)) hash.update(`\u0000b${value.length}:`).update(value);
    else if (Array.isArray(value)) {
      hash.update(`\u0000a${value.length}`);
      return value.every(add);
    } else return false;
    return true;
  };
  for (const key of Object.keys(options).sort()) {
    hash.update(`\u0000k${key}`);
    if (!add(options[key])) return null;
  }
  return hash.digest('hex');
}

/** A Kubernetes API failure in a form for messages: the HTTP status (0 when none arrived) and the server's reason. */
export function describeKubeError(error: unknown): { status: number; detail: string } {
  if (error instanceof TimeoutError) return { status: 0, detail: error.message };
  const client = kubeClientIfLoaded();
  if (client && error instanceof client.ApiException) {
    const body: unknown = error.body;
    let detail = `HTTP ${error.code}`;
    const message = extractStatusMessage(body);
    if (message) detail += `: ${message}`;
    return { status: error.code, detail };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { status: 0, detail: message };
}

function extractStatusMessage(body: unknown): string | undefined {
  let value = body;
  if (typeof body === 'string') {
    try {
      value = JSON.parse(body) as unknown;
    } catch {
      return body.slice(0, 300) || undefined;
    }
  }
  if (value && typeof value === 'object' && 'message' in value && typeof value.message === 'string') return value.message.slice(0, 300);
  return undefined;
}
