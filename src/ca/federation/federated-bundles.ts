/**
 * The bundles of the trust domains this CA federates with (--federate-with), kept current and safe to use:
 *
 *   - an endpoint target is fetched at start-up and then at the bundle's `spiffe_refresh_hint` (clamped to
 *     1 s..1 h; 5 min when the bundle has none); a failure is retried after 1 s, 2 s, 4 s, ... up to that interval;
 *   - a file target (`file:<path>`) is re-read every 5 s and used when its content changes;
 *   - each new bundle is validated before use: it parses strictly as a bundle of that trust domain (no authority
 *     naming another), and its `spiffe_sequence` may not be lower than the one in use, nor equal with other
 *     authorities, nor missing when the one in use has one. A refused or failed refresh keeps the last good
 *     bundle, records `lastError`, counts the reason and is retried;
 *   - an endpoint target's last good bundle is persisted in `<state-dir>/federation/<trust-domain>.json` (then
 *     published), read back at start-up (it wins over the `bundle=` initial bundle), and re-read every 5 s: a file
 *     written there by `meshca bundle set` is the admin's word and replaces the bundle in use without the sequence
 *     rule (the way to recover when a trust domain's sequence went back, or to give an https_spiffe endpoint its
 *     first bundle).
 *
 * Every timer runs on the injected Clock, so tests drive refreshes on virtual time. All work for one trust domain
 * runs one step at a time, so a fetch and a file check never race.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { sameAuthorities, type SpiffeBundle } from '../../pki/index.js';
import { ConfigError } from '../../config/env.js';
import type { Logger } from '../../log.js';
import { timerAt, type Clock } from '../../util/clock.js';
import { FILE_CHECK_INTERVAL_MS, persistedBundlePath, persistedText, readBounded, readBundleFile, readPersistedBundle, parseBundleFile, writePersistedBundle } from './bundle-store.js';
import { BundleRefreshError, fetchBundle, type RefreshErrorReason } from './fetch-bundle.js';
import type { FederatedBundles, FederatedBundleStatus, FederationTarget } from './types.js';

// A fetch a second costs the peer and us next to nothing, and lets a test or a demo see a rotation cross at once.
export const MIN_REFRESH_SECONDS = 1;
export const MAX_REFRESH_SECONDS = 3600;
export const DEFAULT_REFRESH_SECONDS = 300;
export const RETRY_INITIAL_MS = 1000;
export { FILE_CHECK_INTERVAL_MS };

export interface FederationOptions {
  targets: readonly FederationTarget[];
  /** The CA's state directory (--state-dir); bundles persist in its `federation/` folder. */
  stateDir: string;
  clock: Clock;
  logger: Logger;
  /** The metrics go here (the CA's monitoring registry). */
  registry: Registry;
  /** Deadline of one fetch; 10 s by default. */
  fetchTimeoutMs?: number;
}

/** The refresh interval a bundle asks for, within bounds. */
export function refreshIntervalMs(bundle: SpiffeBundle | undefined): number {
  const hint = bundle?.refreshHintSeconds ?? DEFAULT_REFRESH_SECONDS;
  return Math.min(MAX_REFRESH_SECONDS, Math.max(MIN_REFRESH_SECONDS, hint)) * 1000;
}

/** Delay before retry number `failures` (1 for the first): doubling from 1 s, never beyond the refresh interval. */
export function retryDelayMs(failures: number, intervalMs: number): number {
  return Math.min(intervalMs, RETRY_INITIAL_MS * 2 ** Math.min(Math.max(failures - 1, 0), 20));
}

/**
 * Whether `next` may replace `current`: 'new', 'same' (nothing to change but freshness), or a refusal that says why.
 * The sequence only grows; equal sequences must carry the same authorities.
 */
export function judgeUpdate(current: SpiffeBundle | undefined, next: SpiffeBundle): 'new' | 'same' | { refused: string } {
  if (!current) return 'new';
  const [was, now] = [current.sequence, next.sequence];
  if (was !== undefined) {
    if (now === undefined) return { refused: `it has no spiffe_sequence while the bundle in use has ${was}` };
    if (now < was) return { refused: `its spiffe_sequence ${now} is lower than ${was} of the bundle in use` };
    if (now === was) return sameAuthorities(current, next) ? 'same' : { refused: `its spiffe_sequence ${now} is the one in use but its authorities differ` };
    return 'new';
  }
  return now === undefined && sameAuthorities(current, next) ? 'same' : 'new';
}

type Origin = FederatedBundleStatus['origin'];

class TrustDomainState {
  current: SpiffeBundle | undefined;
  origin: Origin = 'none';
  updatedAt: Date | undefined;
  lastAttemptAt: Date | undefined;
  lastError: string | undefined;
  nextRefreshAt: Date | undefined;
  failures = 0;
  /** The text of the file last read or written (the persisted bundle, or a file target's file). */
  knownText: string | undefined;
  cancelRefresh: (() => void) | undefined;
  cancelCheck: (() => void) | undefined;
  /** One step at a time: fetches and file checks are chained. */
  queue: Promise<void> = Promise.resolve();

  constructor(readonly target: FederationTarget) {}

  get trustDomain(): string {
    return this.target.trustDomain;
  }

  status(): FederatedBundleStatus {
    return {
      trustDomain: this.trustDomain,
      origin: this.origin,
      ...(this.current?.sequence !== undefined ? { sequence: this.current.sequence } : {}),
      authorities: this.current?.x509Authorities.length ?? 0,
      ...(this.updatedAt ? { updatedAt: this.updatedAt } : {}),
      ...(this.lastAttemptAt ? { lastAttemptAt: this.lastAttemptAt } : {}),
      ...(this.lastError !== undefined ? { lastError: this.lastError } : {}),
      ...(this.nextRefreshAt ? { nextRefreshAt: this.nextRefreshAt } : {}),
    };
  }
}

const METRIC_NAMES = [
  'meshca_federated_bundle_age_seconds',
  'meshca_federated_bundle_sequence',
  'meshca_federated_bundle_authorities',
  'meshca_federated_bundle_refresh_errors_total',
] as const;

function registerMetrics(registry: Registry, clock: Clock, states: readonly TrustDomainState[]): Counter<'trust_domain' | 'reason'> {
  const known = (): TrustDomainState[] => states.filter((s) => s.current !== undefined);
  new Gauge({
    name: 'meshca_federated_bundle_age_seconds',
    help: 'Seconds since the federated bundle in use was fetched or read, per trust domain',
    labelNames: ['trust_domain'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of known()) if (s.updatedAt) this.set({ trust_domain: s.trustDomain }, Math.max(0, (clock.now() - s.updatedAt.getTime()) / 1000));
    },
  });
  new Gauge({
    name: 'meshca_federated_bundle_sequence',
    help: 'spiffe_sequence of the federated bundle in use (absent when it has none), per trust domain',
    labelNames: ['trust_domain'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of known()) if (s.current?.sequence !== undefined) this.set({ trust_domain: s.trustDomain }, s.current.sequence);
    },
  });
  new Gauge({
    name: 'meshca_federated_bundle_authorities',
    help: 'X.509 authorities in the federated bundle in use, per trust domain',
    labelNames: ['trust_domain'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of known()) this.set({ trust_domain: s.trustDomain }, s.current!.x509Authorities.length);
    },
  });
  return new Counter({
    name: 'meshca_federated_bundle_refresh_errors_total',
    help: 'Refreshes of a federated bundle that failed or were refused (the last good bundle stays in use), by trust domain and reason',
    labelNames: ['trust_domain', 'reason'],
    registers: [registry],
  });
}

/**
 * Loads every target's bundle (persisted, initial or file) and starts keeping them current. Throws a ConfigError
 * when a target cannot start: an https_spiffe endpoint with neither a persisted nor an initial bundle, or an
 * unreadable or invalid initial bundle or static file.
 */
export async function startFederation(options: FederationOptions): Promise<FederatedBundles> {
  const { stateDir, clock, logger, registry } = options;
  const log = logger.child({ component: 'federation' });
  const states = options.targets.map((target) => new TrustDomainState(target));
  for (const state of states) await load(state);

  const listeners = new Set<() => void>();
  const aborts = new AbortController();
  let closed = false;
  const errors = registerMetrics(registry, clock, states);

  async function load(state: TrustDomainState): Promise<void> {
    const { target } = state;
    const where = `--federate-with ${target.trustDomain}`;
    if (target.source.kind === 'file') {
      try {
        state.knownText = await readBounded(target.source.path);
        state.current = parseBundleFile(target.trustDomain, state.knownText);
      } catch (error) {
        throw new ConfigError(`${where}: cannot use the bundle file ${target.source.path}: ${(error as Error).message}`);
      }
      state.origin = 'file';
      state.updatedAt = new Date(clock.now());
      return;
    }
    try {
      const persisted = await readPersistedBundle(stateDir, target.trustDomain);
      if (persisted) {
        state.current = persisted.bundle;
        state.origin = 'persisted';
        state.updatedAt = persisted.updatedAt;
        state.knownText = persisted.text;
        return;
      }
    } catch (error) {
      // Not fatal when the trust domain has another way in: the endpoint (https_web) or the initial bundle.
      state.lastError = `the persisted bundle is unusable: ${(error as Error).message}`;
      log.warn({ trustDomain: target.trustDomain, err: state.lastError }, 'ignoring the persisted federated bundle');
    }
    const initial = target.source.initialBundlePath;
    if (initial !== undefined) {
      try {
        state.current = await readBundleFile(target.trustDomain, initial);
      } catch (error) {
        throw new ConfigError(`${where}: cannot use the initial bundle (bundle=${initial}): ${(error as Error).message}`);
      }
      state.origin = 'initial';
      state.updatedAt = new Date(clock.now());
      return;
    }
    if (target.source.profile.kind === 'https_spiffe') {
      throw new ConfigError(
        `${where}: profile https_spiffe needs the trust domain's current bundle to authenticate its endpoint, and ${persistedBundlePath(stateDir, target.trustDomain)} holds none: add ,bundle=<file> (from that trust domain's admin: meshca bundle show) or run meshca bundle set ${target.trustDomain} --file <file> --state-dir ${stateDir}`,
      );
    }
  }

  function publish(): void {
    for (const listener of [...listeners]) {
      try {
        listener();
      } catch (error) {
        log.error({ err: (error as Error).message }, 'a federated bundle listener failed');
      }
    }
  }

  function enqueue(state: TrustDomainState, step: () => Promise<void>): void {
    state.queue = state.queue.then(async () => {
      if (closed) return;
      try {
        await step();
      } catch (error) {
        log.error({ trustDomain: state.trustDomain, err: (error as Error).message }, 'federation step failed');
      }
    });
  }

  function failed(state: TrustDomainState, error: unknown, what: string): void {
    const refresh = error instanceof BundleRefreshError ? error : new BundleRefreshError('invalid', (error as Error).message);
    state.lastError = `${what}: ${refresh.message}`;
    errors.inc({ trust_domain: state.trustDomain, reason: refresh.reason satisfies RefreshErrorReason });
    log.warn({ trustDomain: state.trustDomain, reason: refresh.reason, err: state.lastError, sequenceInUse: state.current?.sequence ?? null }, 'federated bundle refused or not refreshed; keeping the last good one');
  }

  /** Takes `next` when it may replace the bundle in use (throws BundleRefreshError 'sequence' when not); true when it changed. */
  async function accept(state: TrustDomainState, next: SpiffeBundle, origin: Origin): Promise<boolean> {
    const verdict = judgeUpdate(state.current, next);
    if (typeof verdict === 'object') throw new BundleRefreshError('sequence', `refused: ${verdict.refused}`);
    const now = new Date(clock.now());
    if (verdict === 'new' && origin === 'endpoint') {
      // Persisted first, so a restart never goes back to an older bundle than agents were given.
      const text = persistedText(next, 'endpoint', now);
      state.knownText = text;
      try {
        await writePersistedBundle(stateDir, next, 'endpoint', now);
      } catch (error) {
        log.warn({ trustDomain: state.trustDomain, err: (error as Error).message }, 'could not persist the federated bundle; using it anyway');
      }
    }
    state.current = next;
    state.origin = origin;
    state.updatedAt = now;
    state.lastError = undefined;
    if (verdict === 'new') {
      log.info({ trustDomain: state.trustDomain, origin, sequence: next.sequence ?? null, authorities: next.x509Authorities.length }, 'federated bundle updated');
      publish();
    }
    return verdict === 'new';
  }

  async function refresh(state: TrustDomainState): Promise<void> {
    const { source } = state.target;
    if (source.kind !== 'endpoint') return;
    state.lastAttemptAt = new Date(clock.now());
    let delay: number;
    try {
      const next = await fetchBundle(state.trustDomain, source.url, source.profile, state.current, {
        signal: aborts.signal,
        ...(options.fetchTimeoutMs !== undefined ? { timeoutMs: options.fetchTimeoutMs } : {}),
      });
      if (closed) return;
      await accept(state, next, 'endpoint');
      state.failures = 0;
      delay = refreshIntervalMs(state.current);
    } catch (error) {
      if (closed) return;
      state.failures += 1;
      failed(state, error, `fetching ${source.url.href}`);
      delay = retryDelayMs(state.failures, refreshIntervalMs(state.current));
    }
    scheduleRefresh(state, delay);
  }

  function scheduleRefresh(state: TrustDomainState, delayMs: number): void {
    if (closed) return;
    const at = clock.now() + delayMs;
    state.nextRefreshAt = new Date(at);
    state.cancelRefresh = timerAt(clock, at, () => enqueue(state, () => refresh(state)));
  }

  /** A file target's file, or an endpoint target's persisted bundle (`meshca bundle set`): used when it changed. */
  async function check(state: TrustDomainState): Promise<void> {
    const { source } = state.target;
    const file = source.kind === 'file' ? source.path : persistedBundlePath(stateDir, state.trustDomain);
    let text: string;
    try {
      text = await readBounded(file);
    } catch (error) {
      if (source.kind !== 'file' && (error as NodeJS.ErrnoException).code === 'ENOENT') return;
      if (state.knownText === undefined) return; // told once already
      state.knownText = undefined;
      failed(state, new BundleRefreshError('file', (error as Error).message), `reading ${file}`);
      return;
    }
    if (text === state.knownText) return;
    state.knownText = text;
    state.lastAttemptAt = new Date(clock.now());
    try {
      const next = parseBundleFile(state.trustDomain, text);
      if (source.kind === 'file') {
        await accept(state, next, 'file');
        return;
      }
      // Written by the admin (meshca bundle set): their word, whatever its sequence.
      state.current = undefined;
      await accept(state, next, 'set');
    } catch (error) {
      failed(state, error, `reading ${file}`);
    }
  }

  function scheduleCheck(state: TrustDomainState): void {
    if (closed) return;
    state.cancelCheck = clock.setTimer(FILE_CHECK_INTERVAL_MS, () => {
      enqueue(state, () => check(state));
      enqueue(state, async () => scheduleCheck(state));
    });
  }

  for (const state of states) {
    if (state.target.source.kind === 'endpoint') scheduleRefresh(state, 0);
    scheduleCheck(state);
  }
  log.info({ trustDomains: states.map((s) => ({ trustDomain: s.trustDomain, origin: s.origin, sequence: s.current?.sequence ?? null })) }, 'federation started');

  return {
    bundles: () => states.flatMap((s) => (s.current ? [s.current] : [])),
    status: () => states.map((s) => s.status()),
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close() {
      if (closed) return;
      closed = true;
      aborts.abort();
      for (const state of states) {
        state.cancelRefresh?.();
        state.cancelCheck?.();
      }
      await Promise.all(states.map((s) => s.queue));
      for (const name of METRIC_NAMES) registry.removeSingleMetric(name);
    },
  };
}

/** What /debug/federation answers: each federated trust domain's status, times as ISO strings. */
export function federationDebugView(federation: Pick<FederatedBundles, 'status'>, clock: Pick<Clock, 'now'>): () => unknown {
  return () => ({
    trustDomains: federation.status().map((s) => ({
      ...s,
      ...(s.updatedAt ? { updatedAt: s.updatedAt.toISOString(), ageSeconds: Math.round((clock.now() - s.updatedAt.getTime()) / 1000) } : {}),
      ...(s.lastAttemptAt ? { lastAttemptAt: s.lastAttemptAt.toISOString() } : {}),
      ...(s.nextRefreshAt ? { nextRefreshAt: s.nextRefreshAt.toISOString() } : {}),
    })),
  });
}
