/**
 * The agent's view of the trust bundles its CA serves (meshca.federation.v1.TrustBundleService): the trust-domain
 * aliases of its own trust domain and the bundles of the trust domains the CA federates with, which SDS serves as
 * `ALL` and `spiffe://<trust-domain>` (resources.ts).
 *
 * Transport-free: a `TrustBundleSource` opens one watch at a time (trust-bundle-client.ts does it over the CA's
 * gRPC channel). Each message is checked strictly before use (`parseTrustBundleSet`); a bad one is logged and the
 * last good set kept. A watch that ends or fails is opened again after a backoff on the injected clock (reset by a
 * good message). A CA that answers UNIMPLEMENTED (istiod, or meshca without federation) has no bundles to give:
 * the own trust domain is then all there is. The watcher says so once, at info, drops any set an earlier CA gave
 * (federation turned off must end the foreign trust it granted: fail closed), and asks again every
 * UNIMPLEMENTED_RECHECK_MS, so a CA that starts federating later is picked up without restarting every agent.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { parseCertificate, spiffeBundleOf, validateTrustDomain, type ParsedCertificate, type SpiffeBundle } from '../pki/index.js';
import type { Clock } from '../util/clock.js';
import type { TrustBundleSetMessage } from '../wire/protos.js';
import { backoffDelayMs } from './backoff.js';

/** Bounds on one message: far above a real federation, far below what could hurt. */
export const MAX_TRUST_DOMAINS = 256;
export const MAX_AUTHORITIES_PER_TRUST_DOMAIN = 100;
export const MAX_ALIASES = 64;

/** How often a CA that serves no trust bundles (UNIMPLEMENTED) is asked again: one cheap call per agent. */
export const UNIMPLEMENTED_RECHECK_MS = 5 * 60_000;

/** A set the agent accepted. A new object for every accepted message, so it can key caches. */
export interface FederationState {
  /** The CA's version of the set ('' for the empty state before any message). */
  readonly version: string;
  readonly aliases: readonly string[];
  /** Sorted by trust domain; never the own trust domain or an alias. */
  readonly federated: readonly SpiffeBundle[];
}

/** What the SDS resources read. */
export interface FederationView {
  current(): FederationState;
  federatedBundles(): readonly SpiffeBundle[];
  aliases(): readonly string[];
  /** Called after a new set was accepted. Returns an unsubscribe function. */
  onChange(listener: (state: FederationState) => void): () => void;
}

/** The state before any message: the own trust domain alone. */
export const NO_FEDERATION: FederationState = Object.freeze({ version: '', aliases: Object.freeze([]), federated: Object.freeze([]) });

export class TrustBundleSetError extends Error {
  constructor(message: string) {
    super(`trust bundles from the CA refused: ${message}`);
    this.name = 'TrustBundleSetError';
  }
}

/**
 * Checks one message against the agent's own trust domain: every trust domain valid, the first bundle the own
 * trust domain's, no trust domain twice, every authority a CA certificate, the counts bounded.
 */
export function parseTrustBundleSet(message: TrustBundleSetMessage, ownTrustDomain: string): FederationState {
  const fail = (why: string): never => {
    throw new TrustBundleSetError(why);
  };
  const validTrustDomain = (name: string, what: string): void => {
    try {
      validateTrustDomain(name);
    } catch (error) {
      fail(`${what} "${name.slice(0, 256)}" is not a valid trust domain: ${(error as Error).message}`);
    }
  };
  if (message.version === '') fail('the set has no version');
  validTrustDomain(message.trust_domain, 'the CA trust domain');
  if (message.trust_domain !== ownTrustDomain) {
    fail(`the CA's trust domain is "${message.trust_domain}", but this agent's certificates are in "${ownTrustDomain}" (--trust-domain, TRUST_DOMAIN)`);
  }
  if (message.aliases.length > MAX_ALIASES) fail(`${message.aliases.length} aliases, more than the ${MAX_ALIASES} allowed`);
  if (message.bundles.length === 0) fail('the set holds no bundle');
  if (message.bundles.length > MAX_TRUST_DOMAINS) fail(`${message.bundles.length} trust domains, more than the ${MAX_TRUST_DOMAINS} allowed`);
  const seen = new Set<string>([ownTrustDomain]);
  for (const alias of message.aliases) {
    validTrustDomain(alias, 'alias');
    if (seen.has(alias)) fail(`alias "${alias}" is the own trust domain or listed twice`);
    seen.add(alias);
  }
  const bundleOf = (entry: TrustBundleSetMessage['bundles'][number]): SpiffeBundle => {
    if (entry.x509_authorities.length > MAX_AUTHORITIES_PER_TRUST_DOMAIN) {
      fail(`"${entry.trust_domain}" has ${entry.x509_authorities.length} authorities, more than the ${MAX_AUTHORITIES_PER_TRUST_DOMAIN} allowed`);
    }
    const authorities = entry.x509_authorities.map((der, index): ParsedCertificate => {
      try {
        return parseCertificate(der);
      } catch (error) {
        return fail(`authority ${index} of "${entry.trust_domain}" is not a DER certificate: ${(error as Error).message}`);
      }
    });
    const sequence = Number(entry.sequence);
    try {
      return spiffeBundleOf(entry.trust_domain, authorities, Number.isSafeInteger(sequence) && sequence > 0 ? { sequence } : {});
    } catch (error) {
      return fail((error as Error).message);
    }
  };
  const [own, ...others] = message.bundles;
  if (own!.trust_domain !== ownTrustDomain) fail(`the first bundle is for "${own!.trust_domain.slice(0, 256)}", not the own trust domain "${ownTrustDomain}"`);
  // The own roots served to Envoy are the agent's verified bundle (from its certificates), not these; they are
  // checked all the same, as a CA that sends garbage there is not to be trusted with the rest.
  bundleOf(own!);
  const federated = others.map((entry): SpiffeBundle => {
    validTrustDomain(entry.trust_domain, 'federated trust domain');
    if (seen.has(entry.trust_domain)) fail(`trust domain "${entry.trust_domain}" appears twice (or is the own trust domain or an alias)`);
    seen.add(entry.trust_domain);
    return bundleOf(entry);
  });
  federated.sort((a, b) => (a.trustDomain < b.trustDomain ? -1 : a.trustDomain > b.trustDomain ? 1 : 0));
  return { version: message.version, aliases: [...message.aliases], federated };
}

/** How a watch ended: null for a clean end (OK), else its gRPC status. */
export type WatchEnd = { code: number; details: string } | null;

/** Opens watches; one at a time is open. */
export interface TrustBundleSource {
  /** Where the watch goes (for logs). */
  readonly address: string;
  watch(handlers: { message(message: TrustBundleSetMessage): void; end(outcome: WatchEnd): void }): { cancel(): void };
}

export interface TrustBundleWatcherOptions {
  source: TrustBundleSource;
  /** The trust domain of this agent's certificates; the CA's set must be for it. */
  trustDomain: string;
  log: Logger;
  clock: Clock;
  /** Jitter for the backoff (tests pass a fixed one). */
  random?: () => number;
}

export class TrustBundleWatcher implements FederationView {
  private state: FederationState = NO_FEDERATION;
  private readonly listeners = new Set<(state: FederationState) => void>();
  private open: { cancel(): void } | undefined;
  private cancelRetry: (() => void) | undefined;
  private attempt = 0;
  private stopped = false;
  /** The last refusal logged, so a CA repeating a bad set is not logged on every reconnect. */
  private lastRefusal = '';
  /** Whether the CA's last answer was UNIMPLEMENTED, so its rechecks are logged once. */
  private unimplemented = false;

  constructor(private readonly options: TrustBundleWatcherOptions) {}

  current(): FederationState {
    return this.state;
  }

  federatedBundles(): readonly SpiffeBundle[] {
    return this.state.federated;
  }

  aliases(): readonly string[] {
    return this.state.aliases;
  }

  onChange(listener: (state: FederationState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** True once the watcher was closed. */
  get isStopped(): boolean {
    return this.stopped;
  }

  start(): this {
    this.connect();
    return this;
  }

  close(): void {
    this.stopped = true;
    this.cancelRetry?.();
    this.open?.cancel();
    this.open = undefined;
    this.listeners.clear();
  }

  private connect(): void {
    if (this.stopped) return;
    let ended = false;
    this.open = this.options.source.watch({
      message: (message) => {
        if (!ended) this.receive(message);
      },
      end: (outcome) => {
        if (ended) return;
        ended = true;
        this.open = undefined;
        this.ended(outcome);
      },
    });
  }

  private receive(message: TrustBundleSetMessage): void {
    let next: FederationState;
    try {
      next = parseTrustBundleSet(message, this.options.trustDomain);
    } catch (error) {
      const reason = (error as Error).message;
      if (reason !== this.lastRefusal) {
        this.lastRefusal = reason;
        this.options.log.error({ caAddress: this.options.source.address, err: reason }, 'refusing trust bundles from the CA; keeping the last good ones');
      }
      return;
    }
    this.lastRefusal = '';
    this.unimplemented = false;
    this.attempt = 0;
    if (next.version === this.state.version) return;
    this.state = next;
    this.options.log.info(
      { caAddress: this.options.source.address, version: next.version, aliases: next.aliases, federated: next.federated.map((b) => b.trustDomain) },
      'trust bundles updated',
    );
    this.notify();
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener(this.state);
  }

  private retryIn(delayMs: number): void {
    this.cancelRetry = this.options.clock.setTimer(delayMs, () => {
      this.cancelRetry = undefined;
      this.connect();
    });
  }

  /** The CA serves no trust bundles: only the own trust domain is trusted until it does. */
  private servesNone(): void {
    const dropped = this.state.federated.map((b) => b.trustDomain);
    if (!this.unimplemented) {
      this.unimplemented = true;
      this.options.log.info(
        { caAddress: this.options.source.address, recheckInMs: UNIMPLEMENTED_RECHECK_MS },
        'the CA serves no trust bundles (UNIMPLEMENTED: istiod, or meshca without federation); SDS ALL holds the own trust domain only',
      );
    }
    if (this.state !== NO_FEDERATION) {
      this.options.log.warn(
        { caAddress: this.options.source.address, dropped, aliases: this.state.aliases },
        'the CA no longer serves trust bundles; its federated bundles and aliases are no longer trusted',
      );
      this.state = NO_FEDERATION;
      this.notify();
    }
    // Jitter spreads a node pool's rechecks; the backoff's random source keeps tests exact.
    const jitter = 1 + 0.1 * ((this.options.random ?? Math.random)() - 0.5);
    this.retryIn(Math.round(UNIMPLEMENTED_RECHECK_MS * jitter));
  }

  private ended(outcome: WatchEnd): void {
    if (this.stopped) return;
    if (outcome?.code === GrpcStatus.UNIMPLEMENTED) {
      this.attempt = 0;
      this.servesNone();
      return;
    }
    const delay = backoffDelayMs(this.attempt++, this.options.random);
    const level = this.attempt > 3 ? 'warn' : 'debug';
    this.options.log[level](
      { caAddress: this.options.source.address, status: outcome ? GrpcStatus[outcome.code] ?? outcome.code : 'OK', err: outcome?.details, retryInMs: delay },
      'trust-bundle watch ended; watching again',
    );
    this.retryIn(delay);
  }
}
