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
import { SdsError } from './errors.js';
import { resourceType, type AgentMetrics } from './metrics.js';
import type { ResourceProvider, ResourceSnapshot, ResourceWatch, StreamSession } from './resources.js';

let responseCounter = 0;

/** Istio's form: RFC 3339 time (seconds) and a counter, new on every response. */
function nextVersion(): string {
  return `${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}/${++responseCounter}`;
}

function asSdsError(error: unknown): SdsError {
  if (error instanceof SdsError) return error;
  return new SdsError(grpc.status.INTERNAL, (error as Error)?.message ?? String(error));
}

type Api = 'sotw' | 'delta';

/** What both stream kinds share: watches per subscribed name, NACKed versions, and a clean end. */
abstract class SecretStream {
  protected readonly subscribed = new Set<string>();
  protected readonly watches = new Map<string, ResourceWatch>();
  private readonly opening = new Set<string>();
  /** Names that must be sent on the next flush even if the client already has the content. */
  protected readonly mustSend = new Set<string>();
  protected readonly sentVersion = new Map<string, string>();
  protected readonly rejected = new Map<string, Set<string>>();
  protected lastNonce = '';
  protected lastSent: { name: string; version: string }[] = [];
  protected closed = false;
  protected readonly log: Logger;

  constructor(
    protected readonly api: Api,
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

  protected abstract writeResponse(snapshots: ResourceSnapshot[], removed: string[]): void;

  /** Ends the stream with an error status naming the cause. */
  fail(error: SdsError): void {
    if (this.closed) return;
    this.log.warn({ api: this.api, identity: this.session.identity, code: grpc.status[error.code], err: error.message }, 'ending SDS stream with an error');
    this.emitError(error);
    this.cleanup();
  }

  protected abstract emitError(error: SdsError): void;

  get isClosed(): boolean {
    return this.closed;
  }

  cleanup(): void {
    if (this.closed) return;
    this.closed = true;
    for (const watch of this.watches.values()) watch.close();
    this.watches.clear();
    this.subscribed.clear();
    this.session.close();
    this.metrics.connectedStreams.dec({ api: this.api });
    this.onClosed(this);
  }

  protected subscribe(name: string): void {
    this.subscribed.add(name);
    this.mustSend.add(name);
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
        this.flush();
      },
      (error: unknown) => {
        this.opening.delete(name);
        if (this.closed || !this.subscribed.has(name)) return;
        this.openFailed(name, asSdsError(error));
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
  }

  private changed(name: string, snapshot: ResourceSnapshot): void {
    if (this.closed || !this.subscribed.has(name)) return;
    if (this.sentVersion.get(name) === snapshot.version) return;
    this.mustSend.add(name);
    this.flush();
  }

  /** Sends, in one response, every name that must be sent and has content (skipping content the client NACKed). */
  protected flush(removed: string[] = []): void {
    if (this.closed) return;
    const snapshots: ResourceSnapshot[] = [];
    for (const name of [...this.mustSend]) {
      const watch = this.watches.get(name);
      if (!watch) continue;
      this.mustSend.delete(name);
      const snapshot = watch.current();
      if (this.rejected.get(name)?.has(snapshot.version)) continue;
      if (this.skipKnown(name, snapshot)) continue;
      snapshots.push(snapshot);
    }
    if (snapshots.length === 0 && removed.length === 0) return;
    this.lastSent = snapshots.map((s) => ({ name: s.name, version: s.version }));
    for (const s of snapshots) {
      this.sentVersion.set(s.name, s.version);
      this.metrics.pushes.inc({ api: this.api, resource_type: resourceType(s.name) });
    }
    this.writeResponse(snapshots, removed);
  }

  /** Delta only: the client said on reconnect that it already has this version. */
  protected skipKnown(_name: string, _snapshot: ResourceSnapshot): boolean {
    return false;
  }

  protected nack(message: string): void {
    for (const { name, version } of this.lastSent) {
      let versions = this.rejected.get(name);
      if (!versions) this.rejected.set(name, (versions = new Set()));
      versions.add(version);
      this.metrics.nacks.inc({ api: this.api, resource_type: resourceType(name) });
    }
    this.log.warn(
      { api: this.api, identity: this.session.identity, resources: this.lastSent.map((s) => s.name), err: message },
      'SDS client rejected a response (NACK); keeping its last accepted version and not resending this one',
    );
  }
}

class SotwStream extends SecretStream {
  private responded = false;

  constructor(
    private readonly call: grpc.ServerDuplexStream<DiscoveryRequest, Init<DiscoveryResponse>>,
    session: StreamSession,
    provider: ResourceProvider,
    metrics: AgentMetrics,
    log: Logger,
    onClosed: (stream: SecretStream) => void,
  ) {
    super('sotw', session, provider, metrics, log, onClosed);
  }

  protected emitError(error: SdsError): void {
    this.call.emit('error', error.toServiceError());
  }

  request(request: DiscoveryRequest): void {
    if (this.closed) return;
    if (request.type_url !== '' && request.type_url !== SECRET_TYPE_URL) {
      this.fail(new SdsError(grpc.status.INVALID_ARGUMENT, `this server serves only ${SECRET_TYPE_URL}, not "${request.type_url}"`));
      return;
    }
    const names = new Set(request.resource_names);
    const nonce = request.response_nonce;
    if (!this.responded || nonce === '') {
      // A new subscription (or a client starting over): answer with every requested name.
      this.setSubscription(names, true);
      return;
    }
    if (nonce !== this.lastNonce) {
      this.log.debug({ nonce, latest: this.lastNonce }, 'ignoring SDS request with a stale nonce');
      return;
    }
    if (request.error_detail) this.nack(request.error_detail.message || `code ${request.error_detail.code}`);
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

  protected writeResponse(snapshots: ResourceSnapshot[]): void {
    const nonce = randomUUID();
    this.lastNonce = nonce;
    this.responded = true;
    this.call.write({ version_info: nextVersion(), resources: snapshots.map((s) => s.any), type_url: SECRET_TYPE_URL, nonce });
  }
}

class DeltaStream extends SecretStream {
  private readonly clientVersions = new Map<string, string>();
  private first = true;

  constructor(
    private readonly call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, Init<DeltaDiscoveryResponse>>,
    session: StreamSession,
    provider: ResourceProvider,
    metrics: AgentMetrics,
    log: Logger,
    onClosed: (stream: SecretStream) => void,
  ) {
    super('delta', session, provider, metrics, log, onClosed);
  }

  protected emitError(error: SdsError): void {
    this.call.emit('error', error.toServiceError());
  }

  request(request: DeltaDiscoveryRequest): void {
    if (this.closed) return;
    if (request.type_url !== '' && request.type_url !== SECRET_TYPE_URL) {
      this.fail(new SdsError(grpc.status.INVALID_ARGUMENT, `this server serves only ${SECRET_TYPE_URL}, not "${request.type_url}"`));
      return;
    }
    if (this.first) {
      this.first = false;
      for (const [name, version] of Object.entries(request.initial_resource_versions)) this.clientVersions.set(name, version);
    }
    // ACK/NACK only count for the latest response; subscription changes are honoured whatever the nonce.
    if (request.response_nonce !== '' && request.response_nonce === this.lastNonce && request.error_detail) {
      this.nack(request.error_detail.message || `code ${request.error_detail.code}`);
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

  protected writeResponse(snapshots: ResourceSnapshot[], removed: string[]): void {
    const nonce = randomUUID();
    this.lastNonce = nonce;
    this.call.write({
      system_version_info: nextVersion(),
      type_url: SECRET_TYPE_URL,
      nonce,
      resources: snapshots.map((s) => ({ name: s.name, version: s.version, resource: s.any })),
      removed_resources: removed,
    });
  }
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

  /** Adds the SDS service to a grpc-js server. */
  register(server: grpc.Server): void {
    server.addService(sdsService, this.handlers());
  }

  handlers(): SdsHandlers {
    return {
      StreamSecrets: (call) => {
        const stream = new SotwStream(call, this.provider.session(call.metadata), this.provider, this.metrics, this.log, (s) =>
          this.streams.delete(s),
        );
        this.attach(call, stream, (request: DiscoveryRequest) => stream.request(request));
      },
      DeltaSecrets: (call) => {
        const stream = new DeltaStream(call, this.provider.session(call.metadata), this.provider, this.metrics, this.log, (s) =>
          this.streams.delete(s),
        );
        this.attach(call, stream, (request: DeltaDiscoveryRequest) => stream.request(request));
      },
      FetchSecrets: (call, callback) => {
        void this.fetch(call.metadata, call.request).then(
          (response) => callback(null, response),
          (error: unknown) => callback(asSdsError(error).toServiceError()),
        );
      },
    };
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

  private async fetch(metadata: grpc.Metadata, request: DiscoveryRequest): Promise<Init<DiscoveryResponse>> {
    if (request.type_url !== '' && request.type_url !== SECRET_TYPE_URL) {
      throw new SdsError(grpc.status.INVALID_ARGUMENT, `this server serves only ${SECRET_TYPE_URL}, not "${request.type_url}"`);
    }
    const names = [...new Set(request.resource_names)];
    if (names.length === 0) throw new SdsError(grpc.status.INVALID_ARGUMENT, 'FetchSecrets needs at least one name in resource_names');
    const session = this.provider.session(metadata);
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
