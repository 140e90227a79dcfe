/**
 * `meshca.federation.v1.TrustBundleService/WatchTrustBundles` on the CA's gRPC port: the CA's TrustBundleFeed (its
 * own bundle, its trust-domain aliases and the federated bundles) sent to every watching agent, first as it is,
 * then again each time it changes.
 *
 * The content is public (CA certificates), so a watch needs no credential; what bounds its cost is here instead:
 *   - at most `maxStreams` watches at once (RESOURCE_EXHAUSTED beyond);
 *   - each set is encoded once and the same bytes are written to every stream;
 *   - a stream whose client does not read holds at most one queued message: a newer set waits as a flag and goes
 *     out, at its latest version, once grpc-js reports the previous message taken (no per-stream timer or copy).
 * `close` ends every stream with OK, so a graceful shutdown is not held up by watches that never end on their own.
 *
 * `meshca ca --workers N`: the primary sends each set to its workers as an IPC notice (`TrustBundleNotice`: DER
 * certificates, parsed again in the worker, see `decodeTrustBundleNotice`), and each worker serves a `NoticeFeed`.
 */
import * as grpc from '@grpc/grpc-js';
import type { TrustBundleFeed, TrustBundleSet } from '../ca/federation/types.js';
import type { Logger } from '../log.js';
import { parseCertificate, spiffeBundleOf, validateTrustDomain, type SpiffeBundle } from '../pki/index.js';
import { encodeTrustBundleSet, preEncodedTrustBundleService, type Init, type TrustBundleSetMessage } from '../wire/protos.js';

/** Concurrent WatchTrustBundles streams one CA process serves (one per agent; a node agent serves many pods). */
export const DEFAULT_MAX_TRUST_BUNDLE_WATCHES = 10_000;

/** The wire form of a set: the own trust domain's bundle first, then the federated ones (already sorted). */
export function trustBundleSetMessage(set: TrustBundleSet): Init<TrustBundleSetMessage> {
  const bundle = (b: SpiffeBundle): { trust_domain: string; x509_authorities: Buffer[]; sequence: string } => ({
    trust_domain: b.trustDomain,
    x509_authorities: b.x509Authorities.map((cert) => cert.der),
    sequence: String(b.sequence ?? 0),
  });
  return { trust_domain: set.trustDomain, aliases: [...set.aliases], bundles: [bundle(set.own), ...set.federated.map(bundle)], version: set.version };
}

interface Watch {
  call: grpc.ServerWritableStream<unknown, Buffer>;
  /** The version last written. */
  sent: string;
  /** A message is queued in grpc-js and the client has not taken it yet. */
  writing: boolean;
  ended: boolean;
}

export interface TrustBundleWatchesOptions {
  feed: TrustBundleFeed;
  logger: Logger;
  maxStreams?: number;
}

/** The watches of one CA process (or one worker), all fed from one feed. */
export class TrustBundleWatches {
  private readonly streams = new Set<Watch>();
  private encoded: { version: string; bytes: Buffer };
  private readonly unsubscribe: () => void;
  private readonly maxStreams: number;
  private closed = false;

  constructor(private readonly options: TrustBundleWatchesOptions) {
    this.maxStreams = options.maxStreams ?? DEFAULT_MAX_TRUST_BUNDLE_WATCHES;
    this.encoded = TrustBundleWatches.encode(options.feed.current());
    this.unsubscribe = options.feed.onChange((set) => {
      this.encoded = TrustBundleWatches.encode(set);
      for (const watch of this.streams) this.send(watch);
    });
  }

  private static encode(set: TrustBundleSet): { version: string; bytes: Buffer } {
    return { version: set.version, bytes: encodeTrustBundleSet(trustBundleSetMessage(set)) };
  }

  /** Open streams. */
  get size(): number {
    return this.streams.size;
  }

  /** Adds the service to a grpc-js server. */
  register(server: grpc.Server): void {
    server.addService(preEncodedTrustBundleService, { WatchTrustBundles: (call: grpc.ServerWritableStream<unknown, Buffer>) => this.watch(call) });
  }

  private watch(call: grpc.ServerWritableStream<unknown, Buffer>): void {
    if (this.closed) {
      call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'the CA is shutting down; watch trust bundles again', metadata: new grpc.Metadata() });
      return;
    }
    if (this.streams.size >= this.maxStreams) {
      this.options.logger.debug({ maxStreams: this.maxStreams }, 'refusing a trust-bundle watch: too many open');
      call.emit('error', {
        code: grpc.status.RESOURCE_EXHAUSTED,
        details: `this CA already serves ${this.maxStreams} trust-bundle watches; retry later or spread agents over more CA replicas`,
        metadata: new grpc.Metadata(),
      });
      return;
    }
    const watch: Watch = { call, sent: '', writing: false, ended: false };
    this.streams.add(watch);
    const end = (): void => {
      watch.ended = true;
      this.streams.delete(watch);
    };
    call.on('cancelled', end);
    call.on('close', end);
    call.on('error', end);
    this.send(watch);
  }

  private send(watch: Watch): void {
    if (watch.ended || watch.writing || watch.sent === this.encoded.version) return;
    const { version, bytes } = this.encoded;
    watch.writing = true;
    watch.sent = version;
    watch.call.write(bytes, () => {
      watch.writing = false;
      // A set that came while this one waited for the client goes out now, at its latest version.
      this.send(watch);
    });
  }

  /** Ends every stream with OK and stops following the feed. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    for (const watch of [...this.streams]) {
      watch.ended = true;
      watch.call.end();
    }
    this.streams.clear();
  }
}

// --- the --workers path -------------------------------------------------------------------------------------------

/** A TrustBundleSet as it crosses the IPC channel (advanced serialization carries the Buffers). */
export interface TrustBundleNotice {
  trustDomain: string;
  aliases: string[];
  version: string;
  /** The own trust domain's bundle first. */
  bundles: { trustDomain: string; authorities: Buffer[]; sequence?: number; refreshHintSeconds?: number }[];
}

export function encodeTrustBundleNotice(set: TrustBundleSet): TrustBundleNotice {
  const bundle = (b: SpiffeBundle): TrustBundleNotice['bundles'][number] => ({
    trustDomain: b.trustDomain,
    authorities: b.x509Authorities.map((cert) => cert.der),
    ...(b.sequence !== undefined ? { sequence: b.sequence } : {}),
    ...(b.refreshHintSeconds !== undefined ? { refreshHintSeconds: b.refreshHintSeconds } : {}),
  });
  return { trustDomain: set.trustDomain, aliases: [...set.aliases], version: set.version, bundles: [bundle(set.own), ...set.federated.map(bundle)] };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function optionalNumber(value: unknown, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new Error(`${what} is not a non-negative integer`);
  return value;
}

/**
 * Rebuilds the set in a worker: every certificate parsed again and each bundle checked as one made here would be.
 * Throws an Error naming what is wrong (the worker then keeps serving the set it has).
 */
export function decodeTrustBundleNotice(value: unknown): TrustBundleSet {
  const bad = (why: string): never => {
    throw new Error(`the trust bundles from the CA primary are malformed: ${why}`);
  };
  if (!isRecord(value)) return bad('not an object');
  const { trustDomain, aliases, version, bundles } = value;
  if (typeof trustDomain !== 'string' || typeof version !== 'string') return bad('no trust domain or version');
  if (!Array.isArray(aliases) || !aliases.every((a): a is string => typeof a === 'string')) return bad('aliases are not strings');
  if (!Array.isArray(bundles) || bundles.length === 0) return bad('no bundles');
  const parsed = bundles.map((entry: unknown, index): SpiffeBundle => {
    if (!isRecord(entry) || typeof entry.trustDomain !== 'string' || !Array.isArray(entry.authorities)) return bad(`bundle ${index} is not a bundle`);
    const authorities = entry.authorities.map((der: unknown) => (Buffer.isBuffer(der) ? parseCertificate(der) : bad(`bundle ${index} holds a non-Buffer`)));
    const sequence = optionalNumber(entry.sequence, `bundle ${index}'s sequence`);
    const refreshHintSeconds = optionalNumber(entry.refreshHintSeconds, `bundle ${index}'s refresh hint`);
    return spiffeBundleOf(entry.trustDomain, authorities, {
      ...(sequence !== undefined ? { sequence } : {}),
      ...(refreshHintSeconds !== undefined ? { refreshHintSeconds } : {}),
    });
  });
  const [own, ...federated] = parsed as [SpiffeBundle, ...SpiffeBundle[]];
  validateTrustDomain(trustDomain);
  for (const alias of aliases) validateTrustDomain(alias);
  if (own.trustDomain !== trustDomain) return bad(`the first bundle is for "${own.trustDomain}", not the own trust domain "${trustDomain}"`);
  return { trustDomain, aliases, own, federated, version };
}

/** A feed in a worker, replaced by the primary's notices. */
export class NoticeFeed implements TrustBundleFeed {
  private readonly listeners = new Set<(set: TrustBundleSet) => void>();

  constructor(private set: TrustBundleSet) {}

  current(): TrustBundleSet {
    return this.set;
  }

  replace(set: TrustBundleSet): void {
    if (set.version === this.set.version) return;
    this.set = set;
    for (const listener of [...this.listeners]) listener(set);
  }

  onChange(listener: (set: TrustBundleSet) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
