/**
 * Envoy's Secret Discovery Service on a Unix socket: StreamSecrets (state of the world), DeltaSecrets
 * (incremental) and FetchSecrets (unary).
 *
 * State-of-the-world rules kept per stream (xDS protocol): every response has a fresh nonce and version; a
 * request whose nonce is not the latest one sent is stale and ignored; an ACK (latest nonce, same names) gets no
 * answer; a NACK (error_detail) is logged and counted, and the rejected content is never sent again on that
 * stream; names added to the subscription are sent even if sent before; a changed secret is pushed unasked to
 * every stream that watches it. The first request of a stream is always answered, even when it carries a nonce
 * from an earlier stream (nonces do not survive reconnects).
 *
 * Misbehaving clients cost bounded memory: a NACK is counted and logged once per rejected response (repeats are
 * only counted as ignored), each stream remembers a few rejected versions per name, and a client that does not
 * read gets at most one response queued for it: later changes wait in the stream's "due" set and go out, at
 * their latest version, once grpc-js reports the previous response taken (the write callback, which waits for
 * HTTP/2 flow control, i.e. for the client to read).
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import {
  SECRET_TYPE_URL,
  sdsService,
  type DeltaDiscoveryRequest,
  type DeltaDiscoveryResponse,
  type DiscoveryRequest,
  type DiscoveryResponse,
  type Init,
  type SdsHandlers,
} from '../wire/protos.js';
import { SdsError, toSdsError } from './errors.js';
import { resourceType, type AgentMetrics } from './metrics.js';
import type { ResourceProvider, ResourceSnapshot, ResourceWatch, StreamSession } from './resources.js';

let responseCounter = 0;

/** Rejected versions remembered per resource name on one stream; older ones cannot come back in practice. */
const REMEMBERED_REJECTIONS = 8;
/** error_detail messages are logged up to this length (a client controls them). */
const MAX_LOGGED_NACK_CHARS = 512;

/** Istio's form: RFC 3339 time (seconds) and a counter, new on every response. */
function nextVersion(): string {
  return `${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}/${++responseCounter}`;
}

type Api = 'sotw' | 'delta';

/**
 * The client connection (HTTP/2 session) a call arrived on, which bounds how many new tokens one client can have
 * proven at once. grpc-js offers no public accessor (getPeer() says "unknown" on a Unix socket), so this follows its
 * internal call object defensively; if a grpc-js release stores it elsewhere, every call counts as one shared
 * connection (the total bound still applies) and test/agent-proof-first.test.ts fails.
 */
export function connectionOf(call: object): object | undefined {
  let current: unknown = (call as { call?: unknown }).call;
  for (let depth = 0; depth < 8 && current !== null && typeof current === 'object'; depth++) {
    const session = (current as { stream?: { session?: unknown } }).stream?.session;
    if (session !== null && typeof session === 'object') return session;
    current = (current as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

/** The error for a request of another type than secrets, or null ('' leaves the type to the server). */
function typeError(typeUrl: string): SdsError | null {
  if (typeUrl === '' || typeUrl === SECRET_TYPE_URL) return null;
  return new SdsError(grpc.status.INVALID_ARGUMENT, `this server serves only ${SECRET_TYPE_URL}, not "${typeUrl}"`);
}

/** All a stream needs of its call to end it with a status; each kind keeps its own call type for writing. */
interface ErrorSink {
  emit(event: 'error', error: Error): boolean;
}

/** A stream's constructor arguments after its call: the caller's session and what the server shares. */
type StreamArgs = [session: StreamSession, provider: ResourceProvider, metrics: AgentMetrics, log: Logger, onClosed: (stream: SecretStream) => void];

/** What both stream kinds share: watches per subscribed name, NACKed versions, and a clean end. */
abstract class SecretStream<Call extends ErrorSink = ErrorSink> {
  protected readonly subscribed = new Set<string>();
  protected readonly watches = new Map<string, ResourceWatch>();
  private readonly opening = new Set<string>();
  /** Names that must be sent on the next flush even if the client already has the content. */
  protected readonly mustSend = new Set<string>();
  protected readonly sentVersion = new Map<string, string>();
  protected readonly rejected = new Map<string, string[]>();
  /** Names reported removed (delta) that wait for the next response. */
  private readonly removedDue = new Set<string>();
  /** A response is queued in grpc-js and the client has not taken it yet. */
  private unsent = false;
  /** Something became due while a response was unsent: flush again once it is taken. */
  private flushWhenTaken = false;
  /** Nonce of the response whose NACK was already counted, so that repeats are not. */
  private nackedNonce = '';
  protected lastNonce = '';
  protected lastSent: { name: string; version: string }[] = [];
  protected closed = false;
  protected readonly log: Logger;

  constructor(
    protected readonly api: Api,
    protected readonly call: Call,
    protected readonly session: StreamSession,
    protected readonly provider: ResourceProvider,
    protected readonly metrics: AgentMetrics,
    log: Logger,
    private readonly onClosed: (stream: SecretStream) => void,
  ) {
    this.log = log;
    metrics.connectedStreams.inc({ api });
    session.onRevoked((error) => this.fail(error));
  }

  /** Writes one response; `taken` runs once the transport has taken it from grpc-js (the client is reading). */
  protected abstract writeResponse(snapshots: ResourceSnapshot[], removed: string[], taken: () => void): void;

  /** Ends the stream with an error status naming the cause. */
  fail(error: SdsError): void {
    if (this.closed) return;
    this.log.warn({ api: this.api, identity: this.session.identity, code: grpc.status[error.code], err: error.message }, 'ending SDS stream with an error');
    this.emitError(error);
    this.cleanup();
  }

  private emitError(error: SdsError): void {
    this.call.emit('error', error.toServiceError());
  }

  /**
   * What every request goes through first, whatever the protocol: false when the stream has ended, or when the
   * client asks for another type than secrets (which ends it).
   */
  protected admit(names: string[], request: { type_url: string; response_nonce: string; error_detail: unknown }): boolean {
    if (this.closed) return false;
    this.traceRequest(names, request.response_nonce, request.error_detail !== null);
    const wrongType = typeError(request.type_url);
    if (wrongType) this.fail(wrongType);
    return wrongType === null;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** True while a response waits for the client to read it. */
  get hasUnsentResponse(): boolean {
    return this.unsent;
  }

  /** Rejected versions this stream remembers (bounded per subscribed name). */
  get rememberedRejections(): number {
    let count = 0;
    for (const versions of this.rejected.values()) count += versions.length;
    return count;
  }

  cleanup(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.unsent) {
      this.unsent = false;
      this.metrics.unsentResponses.dec({ api: this.api });
    }
    for (const watch of this.watches.values()) watch.close();
    this.watches.clear();
    this.subscribed.clear();
    this.mustSend.clear();
    this.removedDue.clear();
    this.session.close();
    this.metrics.connectedStreams.dec({ api: this.api });
    this.onClosed(this);
  }

  protected subscribe(name: string): void {
    this.subscribed.add(name);
    this.mustSend.add(name);
    this.removedDue.delete(name);
    if (this.watches.has(name) || this.opening.has(name)) return;
    this.opening.add(name);
    this.provider.open(this.session, name).then(
      (watch) => {
        this.opening.delete(name);
        if (this.closed || !this.subscribed.has(name)) {
          watch.close();
          return;
        }
        this.watches.set(name, watch);
        watch.onChange((snapshot) => this.changed(name, snapshot));
        watch.onGone?.((error) => {
          if (this.closed || !this.subscribed.has(name)) return;
          this.openFailed(name, error);
        });
        this.flush();
      },
      (error: unknown) => {
        this.opening.delete(name);
        if (this.closed || !this.subscribed.has(name)) return;
        this.openFailed(name, toSdsError(error));
      },
    );
  }

  /** SotW has no "not found": the stream ends. Delta reports unknown names as removed. */
  protected openFailed(_name: string, error: SdsError): void {
    this.fail(error);
  }

  protected unsubscribe(name: string): void {
    this.subscribed.delete(name);
    this.mustSend.delete(name);
    this.watches.get(name)?.close();
    this.watches.delete(name);
    // Per-name memory ends with the subscription, so subscribing to ever new names cannot grow it.
    this.sentVersion.delete(name);
    this.rejected.delete(name);
  }

  private changed(name: string, snapshot: ResourceSnapshot): void {
    if (this.closed || !this.subscribed.has(name)) return;
    if (this.sentVersion.get(name) === snapshot.version) return;
    // The client has not read the last response and a version of this name was already due: it is superseded.
    if (this.unsent && this.mustSend.has(name)) this.metrics.coalescedPushes.inc({ api: this.api, resource_type: resourceType(name) });
    this.mustSend.add(name);
    this.flush();
  }

  /**
   * Sends, in one response, every name that must be sent and has content (skipping content the client NACKed).
   * While the previous response is unsent nothing is written: what is due is sent, at its latest version, when
   * the client takes that response.
   */
  protected flush(removed: string[] = []): void {
    if (this.closed) return;
    for (const name of removed) this.removedDue.add(name);
    if (this.unsent) {
      this.flushWhenTaken = true;
      return;
    }
    const snapshots: ResourceSnapshot[] = [];
    for (const name of [...this.mustSend]) {
      const watch = this.watches.get(name);
      if (!watch) continue;
      this.mustSend.delete(name);
      const snapshot = watch.current();
      if (this.rejected.get(name)?.includes(snapshot.version)) continue;
      if (this.skipKnown(name, snapshot)) continue;
      snapshots.push(snapshot);
    }
    const removedNow = [...this.removedDue];
    this.removedDue.clear();
    if (snapshots.length === 0 && removedNow.length === 0) return;
    this.lastSent = snapshots.map((s) => ({ name: s.name, version: s.version }));
    for (const s of snapshots) {
      this.sentVersion.set(s.name, s.version);
      this.metrics.pushes.inc({ api: this.api, resource_type: resourceType(s.name) });
    }
    this.unsent = true;
    this.metrics.unsentResponses.inc({ api: this.api });
    this.log.debug({ api: this.api, identity: this.session.identity, resources: this.lastSent, removed: removedNow }, 'sending SDS response');
    this.writeResponse(snapshots, removedNow, () => this.responseTaken());
  }

  private responseTaken(): void {
    if (!this.unsent) return; // The stream ended meanwhile.
    this.unsent = false;
    this.metrics.unsentResponses.dec({ api: this.api });
    if (this.flushWhenTaken) {
      this.flushWhenTaken = false;
      this.flush();
    }
  }

  /** Delta only: the client said on reconnect that it already has this version. */
  protected skipKnown(_name: string, _snapshot: ResourceSnapshot): boolean {
    return false;
  }

  /** Names and nonces only: never the content, which holds keys. Client-sent strings are cut short. */
  private traceRequest(names: string[], nonce: string, nack: boolean): void {
    if (!this.log.isLevelEnabled('trace')) return;
    this.log.trace(
      { api: this.api, identity: this.session.identity, resources: names.slice(0, 16).map((n) => n.slice(0, 256)), nonce: nonce.slice(0, 64), nack },
      'SDS request',
    );
  }

  /**
   * A NACK of the latest response (`nonce`). Counted and logged once per response: a client repeating it
   * thousands of times costs a counter increment each, no log line, no memory and no answer.
   */
  protected nack(nonce: string, message: string): void {
    if (nonce === this.nackedNonce) {
      this.metrics.ignoredRequests.inc({ api: this.api, reason: 'repeated_nack' });
      return;
    }
    this.nackedNonce = nonce;
    for (const { name, version } of this.lastSent) {
      const versions = this.rejected.get(name) ?? [];
      if (!versions.includes(version)) versions.push(version);
      if (versions.length > REMEMBERED_REJECTIONS) versions.shift();
      this.rejected.set(name, versions);
      this.metrics.nacks.inc({ api: this.api, resource_type: resourceType(name) });
    }
    const shown = message.length > MAX_LOGGED_NACK_CHARS ? `${message.slice(0, MAX_LOGGED_NACK_CHARS)}… (${message.length} chars)` : message;
    this.log.warn(
      { api: this.api, identity: this.session.identity, resources: this.lastSent.map((s) => s.name), err: shown },
      'SDS client rejected a response (NACK); keeping its last accepted version and not resending this one',
    );
  }
}

class SotwStream extends SecretStream<grpc.ServerDuplexStream<DiscoveryRequest, Init<DiscoveryResponse>>> {
  private responded = false;

  constructor(call: grpc.ServerDuplexStream<DiscoveryRequest, Init<DiscoveryResponse>>, ...rest: StreamArgs) {
    super('sotw', call, ...rest);
  }

  request(request: DiscoveryRequest): void {
    if (!this.admit(request.resource_names, request)) return;
    const names = new Set(request.resource_names);
    const nonce = request.response_nonce;
    if (!this.responded || nonce === '') {
      // A new subscription (or a client starting over): answer with every requested name.
      this.setSubscription(names, true);
      return;
    }
    if (nonce !== this.lastNonce) {
      this.metrics.ignoredRequests.inc({ api: this.api, reason: 'stale_nonce' });
      this.log.debug({ nonce: nonce.slice(0, 64), latest: this.lastNonce }, 'ignoring SDS request with a stale nonce');
      return;
    }
    if (request.error_detail) this.nack(nonce, request.error_detail.message || `code ${request.error_detail.code}`);
    this.setSubscription(names, false);
  }

  /** Applies the full set of names; with `all` every name is (re)sent, otherwise only the added ones. */
  private setSubscription(names: Set<string>, all: boolean): void {
    for (const name of [...this.subscribed]) if (!names.has(name)) this.unsubscribe(name);
    for (const name of names) {
      if (all || !this.subscribed.has(name)) this.subscribe(name);
    }
    this.flush();
  }

  protected writeResponse(snapshots: ResourceSnapshot[], _removed: string[], taken: () => void): void {
    const nonce = randomUUID();
    this.lastNonce = nonce;
    this.responded = true;
    this.call.write({ version_info: nextVersion(), resources: snapshots.map((s) => s.any), type_url: SECRET_TYPE_URL, nonce }, taken);
  }
}

class DeltaStream extends SecretStream<grpc.ServerDuplexStream<DeltaDiscoveryRequest, Init<DeltaDiscoveryResponse>>> {
  private readonly clientVersions = new Map<string, string>();
  private first = true;

  constructor(call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, Init<DeltaDiscoveryResponse>>, ...rest: StreamArgs) {
    super('delta', call, ...rest);
  }

  request(request: DeltaDiscoveryRequest): void {
    if (!this.admit(request.resource_names_subscribe, request)) return;
    if (this.first) {
      this.first = false;
      for (const [name, version] of Object.entries(request.initial_resource_versions)) this.clientVersions.set(name, version);
    }
    // ACK/NACK only count for the latest response; subscription changes are honoured whatever the nonce.
    if (request.response_nonce !== '' && request.response_nonce === this.lastNonce && request.error_detail) {
      this.nack(request.response_nonce, request.error_detail.message || `code ${request.error_detail.code}`);
    }
    for (const name of request.resource_names_unsubscribe) {
      this.unsubscribe(name);
      this.clientVersions.delete(name);
    }
    // "*" (wildcard) means nothing for secrets: they are only ever served by name.
    for (const name of request.resource_names_subscribe) if (name !== '*') this.subscribe(name);
    this.flush();
  }

  protected override skipKnown(name: string, snapshot: ResourceSnapshot): boolean {
    const known = this.clientVersions.get(name);
    if (known === undefined) return false;
    this.clientVersions.delete(name);
    if (known !== snapshot.version) return false;
    this.sentVersion.set(name, snapshot.version);
    return true;
  }

  protected override openFailed(name: string, error: SdsError): void {
    if (error.code !== grpc.status.NOT_FOUND) {
      this.fail(error);
      return;
    }
    this.log.info({ resource: name, err: error.message }, 'delta SDS client asked for a resource that does not exist');
    this.unsubscribe(name);
    this.flush([name]);
  }

  protected writeResponse(snapshots: ResourceSnapshot[], removed: string[], taken: () => void): void {
    const nonce = randomUUID();
    this.lastNonce = nonce;
    this.call.write(
      {
        system_version_info: nextVersion(),
        type_url: SECRET_TYPE_URL,
        nonce,
        resources: snapshots.map((s) => ({ name: s.name, version: s.version, resource: s.any })),
        removed_resources: removed,
      },
      taken,
    );
  }
}

export interface SdsServerStats {
  streams: number;
  /** Streams whose client has not read the last response (each holds at most one). */
  unsentResponses: number;
  /** NACKed versions remembered over all streams. */
  rememberedRejections: number;
}

export class SdsServer {
  private readonly streams = new Set<SecretStream>();

  constructor(
    private readonly provider: ResourceProvider,
    private readonly metrics: AgentMetrics,
    private readonly log: Logger,
  ) {}

  get openStreams(): number {
    return this.streams.size;
  }

  /** What the open streams hold, to check that misbehaving clients cannot grow it. */
  stats(): SdsServerStats {
    const stats: SdsServerStats = { streams: this.streams.size, unsentResponses: 0, rememberedRejections: 0 };
    for (const stream of this.streams) {
      if (stream.hasUnsentResponse) stats.unsentResponses++;
      stats.rememberedRejections += stream.rememberedRejections;
    }
    return stats;
  }

  /** Adds the SDS service to a grpc-js server. */
  register(server: grpc.Server): void {
    server.addService(sdsService, this.handlers());
  }

  handlers(): SdsHandlers {
    return {
      StreamSecrets: (call) => {
        const stream = new SotwStream(call, ...this.streamArgs(call));
        this.attach(call, stream, (request: DiscoveryRequest) => stream.request(request));
      },
      DeltaSecrets: (call) => {
        const stream = new DeltaStream(call, ...this.streamArgs(call));
        this.attach(call, stream, (request: DeltaDiscoveryRequest) => stream.request(request));
      },
      FetchSecrets: (call, callback) => {
        void this.fetch(call.metadata, call.request, connectionOf(call)).then(
          (response) => callback(null, response),
          (error: unknown) => callback(toSdsError(error).toServiceError()),
        );
      },
    };
  }

  private streamArgs(call: grpc.ServerDuplexStream<unknown, unknown>): StreamArgs {
    return [this.provider.session(call.metadata, connectionOf(call)), this.provider, this.metrics, this.log, (s) => this.streams.delete(s)];
  }

  private attach<Req, Res>(call: grpc.ServerDuplexStream<Req, Res>, stream: SecretStream, onRequest: (request: Req) => void): void {
    this.streams.add(stream);
    call.on('data', onRequest);
    call.on('end', () => {
      if (!stream.isClosed) call.end();
      stream.cleanup();
    });
    call.on('cancelled', () => stream.cleanup());
    call.on('close', () => stream.cleanup());
    call.on('error', () => stream.cleanup());
  }

  private async fetch(metadata: grpc.Metadata, request: DiscoveryRequest, connection: object | undefined): Promise<Init<DiscoveryResponse>> {
    const wrongType = typeError(request.type_url);
    if (wrongType) throw wrongType;
    const names = [...new Set(request.resource_names)];
    if (names.length === 0) throw new SdsError(grpc.status.INVALID_ARGUMENT, 'FetchSecrets needs at least one name in resource_names');
    const session = this.provider.session(metadata, connection);
    const watches: ResourceWatch[] = [];
    try {
      for (const name of names) watches.push(await this.provider.open(session, name));
      const snapshots = watches.map((w) => w.current());
      for (const s of snapshots) this.metrics.pushes.inc({ api: 'fetch', resource_type: resourceType(s.name) });
      return { version_info: nextVersion(), resources: snapshots.map((s) => s.any), type_url: SECRET_TYPE_URL, nonce: randomUUID() };
    } finally {
      for (const watch of watches) watch.close();
      session.close();
    }
  }

  /** Ends every open stream with UNAVAILABLE so clients reconnect (to the next agent) right away. */
  closeStreams(message: string): void {
    for (const stream of [...this.streams]) stream.fail(new SdsError(grpc.status.UNAVAILABLE, message));
  }
}
