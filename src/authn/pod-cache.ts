/**
 * Every pod of one Kubernetes cluster, kept current by list + watch (an informer), holding only what identity
 * checks need: namespace, name, UID, service account, node, phase and whether it is being deleted. Indexed by UID
 * and by node, so a check such as "is there a running pod of this service account on that node" costs no API call.
 *
 * The watch resumes from the last resourceVersion it saw; when the API server no longer has that version (410
 * Gone / Expired) the cache lists everything again. Failures back off from 500 ms doubling to 30 s. The cache
 * answers only while it is fresh: synced once, and with its watch up (or lost for less than `maxStaleMs`), so a
 * cache cut off from its API server stops vouching for pods instead of serving an ever older picture.
 */
import type { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { callWithDeadline, describeKubeError } from '../kube/api.js';
import { kubeClient } from '../kube/client.js';

/** The fields of a pod that identity checks use. */
export interface CachedPod {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  /** spec.serviceAccountName, 'default' when empty (as the API server defaults it). */
  readonly serviceAccount: string;
  /** spec.nodeName; undefined while unscheduled. */
  readonly nodeName: string | undefined;
  /** status.phase: Pending, Running, Succeeded, Failed, Unknown (undefined before the kubelet reports). */
  readonly phase: string | undefined;
  /** metadata.deletionTimestamp is set: the pod is shutting down. */
  readonly deleting: boolean;
}

/**
 * A pod that may still hold its identity: not finished (Succeeded or Failed) and not being deleted. A finished
 * pod keeps its API object until garbage-collected, but no workload of it runs any more.
 */
export function podIsLive(pod: CachedPod): boolean {
  return !pod.deleting && pod.phase !== 'Succeeded' && pod.phase !== 'Failed';
}

/** Why a pod does not count, for messages; undefined when it is live. */
export function whyPodIsNotLive(pod: CachedPod): string | undefined {
  if (pod.deleting) return 'is being deleted';
  if (pod.phase === 'Succeeded' || pod.phase === 'Failed') return `has finished (phase ${pod.phase})`;
  return undefined;
}

/** Time, for the backoff and for how long a cache stays fresh without its watch; tests drive their own. */
export interface Clock {
  now(): number;
  /** Calls `callback` after `ms`; the timer must not keep the process alive. */
  setTimeout(callback: () => void, ms: number): { cancel(): void };
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => {
    const timer = setTimeout(callback, ms);
    timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
};

/** One list of every pod: raw items and the list's resourceVersion. */
export interface PodList {
  items: unknown[];
  resourceVersion: string;
}

/** Where pods come from: a list, and a watch from a resourceVersion. */
export interface PodSource {
  list(): Promise<PodList>;
  /**
   * Starts a watch of every pod after `resourceVersion`. Resolves once the stream is open (with a function that
   * closes it), rejects when it cannot be opened; `onEnd` is called once when an open stream ends.
   */
  watch(resourceVersion: string, onEvent: (type: string, object: unknown) => void, onEnd: (error: unknown) => void): Promise<() => void>;
}

/** Page size of the initial list (a large cluster is listed in several calls, not one huge answer). */
const LIST_PAGE_SIZE = 500;
/** Each page of the list must arrive within this long. */
const LIST_PAGE_TIMEOUT_MS = 60_000;

/** How long one watch request lasts before the API server ends it and the cache resumes with a new one. */
const WATCH_TIMEOUT_SECONDS = 300;

/** Pods of a cluster through its API server: list all namespaces, watch /api/v1/pods. */
export function kubePodSource(core: CoreV1Api, kubeConfig: KubeConfig): PodSource {
  const { Watch } = kubeClient();
  const watcher = new Watch(kubeConfig);
  return {
    async list(): Promise<PodList> {
      const items: unknown[] = [];
      let resourceVersion = '';
      let next: string | undefined;
      do {
        const token = next;
        const page = await callWithDeadline(
          (options) => core.listPodForAllNamespaces({ limit: LIST_PAGE_SIZE, ...(token ? { _continue: token } : {}) }, options),
          LIST_PAGE_TIMEOUT_MS,
        );
        items.push(...page.items);
        resourceVersion = page.metadata?.resourceVersion ?? '';
        next = page.metadata?._continue || undefined;
      } while (next);
      if (!resourceVersion) throw new Error('the pod list has no resourceVersion to watch from');
      return { items, resourceVersion };
    },
    async watch(resourceVersion, onEvent, onEnd): Promise<() => void> {
      let failure: unknown;
      let opened = false;
      let ended = false;
      // The server ends the stream after timeoutSeconds, so even a connection that died silently is renewed.
      const query = { resourceVersion, allowWatchBookmarks: true, timeoutSeconds: WATCH_TIMEOUT_SECONDS };
      const controller = await watcher.watch('/api/v1/pods', query, onEvent, (error: unknown) => {
        ended = true;
        if (!opened) failure = error ?? new Error('the watch closed at once');
        else onEnd(error);
      });
      // The client reports a refused or unreachable watch through `done` before it returns.
      if (ended) throw failure instanceof Error ? failure : new Error(String(failure));
      opened = true;
      return () => controller.abort();
    },
  };
}

export interface PodCacheOptions {
  source: PodSource;
  /** For messages: which cluster this is. */
  clusterId: string;
  clock?: Clock;
  /** How long after its watch was lost the cache still answers (default 60 s). */
  maxStaleMs?: number;
  /** Called for each failure (list, watch), with one line for the log. */
  onError?: (message: string) => void;
}

const INITIAL_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A watch that ends this soon without an event counts as a failure (no tight reconnect loop). */
const SHORT_WATCH_MS = 1000;

export type PodCacheReadiness = { ready: true } | { ready: false; reason: string };

export class PodCache {
  private readonly byUidIndex = new Map<string, CachedPod>();
  private readonly byNodeIndex = new Map<string, Map<string, CachedPod>>();
  /** By `namespace/name`: the pod now holding that name. */
  private readonly byNameIndex = new Map<string, CachedPod>();
  private resourceVersion: string | undefined;
  private synced = false;
  private watching = false;
  /** When the watch was last lost (meaningful while `watching` is false after the first sync). */
  private lostAt = 0;
  private lastError: string | undefined;
  private backoffMs = INITIAL_BACKOFF_MS;
  private started = false;
  private stopped = false;
  private stopWatch: (() => void) | undefined;
  private retry: { cancel(): void } | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly clock: Clock;
  private readonly maxStaleMs: number;
  /** Pod events applied since start (lists count as one); for tests and metrics. */
  eventsApplied = 0;
  /** Completed lists since start. */
  lists = 0;

  constructor(private readonly options: PodCacheOptions) {
    this.clock = options.clock ?? systemClock;
    this.maxStaleMs = options.maxStaleMs ?? 60_000;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.cycle();
  }

  stop(): void {
    this.stopped = true;
    this.retry?.cancel();
    this.stopWatch?.();
    this.stopWatch = undefined;
    this.watching = false;
    this.wake();
  }

  get size(): number {
    return this.byUidIndex.size;
  }

  /** Whether the cache may be used now, and why not. */
  readiness(): PodCacheReadiness {
    const cause = this.lastError ? ` (last error: ${this.lastError})` : '';
    if (this.stopped) return { ready: false, reason: `the pod cache of cluster "${this.options.clusterId}" is stopped` };
    if (!this.synced) return { ready: false, reason: `the pod cache of cluster "${this.options.clusterId}" has not synced with its API server yet${cause}` };
    if (!this.watching && this.clock.now() - this.lostAt > this.maxStaleMs) {
      return {
        ready: false,
        reason: `the pod cache of cluster "${this.options.clusterId}" lost its watch ${Math.round((this.clock.now() - this.lostAt) / 1000)}s ago and is out of date${cause}`,
      };
    }
    return { ready: true };
  }

  /** Resolves with the readiness once the cache is ready, or after `timeoutMs` (by the clock) with why it is not. */
  whenReady(timeoutMs: number): Promise<PodCacheReadiness> {
    const now = this.readiness();
    if (now.ready || timeoutMs <= 0 || this.stopped) return Promise.resolve(now);
    return new Promise((resolve) => {
      const check = (): void => {
        const state = this.readiness();
        if (!state.ready && !this.stopped) return;
        finish(state);
      };
      const finish = (state: PodCacheReadiness): void => {
        this.waiters.delete(check);
        timer.cancel();
        resolve(state);
      };
      const timer = this.clock.setTimeout(() => {
        const state = this.readiness();
        finish(state.ready ? state : { ready: false, reason: `${state.reason}; waited ${timeoutMs / 1000}s` });
      }, timeoutMs);
      this.waiters.add(check);
    });
  }

  byUid(uid: string): CachedPod | undefined {
    return this.byUidIndex.get(uid);
  }

  /** The pod of that name (whatever its UID), if the cache knows one. */
  byName(namespace: string, name: string): CachedPod | undefined {
    return this.byNameIndex.get(`${namespace}/${name}`);
  }

  /** The pods the cache knows on `node` (live or not). */
  onNode(node: string): Iterable<CachedPod> {
    return this.byNodeIndex.get(node)?.values() ?? [];
  }

  // ---- list + watch -------------------------------------------------------------------------------------

  private wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  private fail(what: string, error: unknown): void {
    this.lastError = `${what}: ${describeKubeError(error).detail}`;
    this.options.onError?.(this.lastError);
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    this.retry = this.clock.setTimeout(() => this.cycle(), delay);
  }

  /** One step: list when there is no resourceVersion to resume from, then watch from it. */
  private cycle(): void {
    if (this.stopped) return;
    if (this.resourceVersion === undefined) {
      this.options.source.list().then(
        (list) => {
          if (this.stopped) return;
          this.replaceAll(list);
          this.cycle();
        },
        (error: unknown) => this.fail('listing pods failed', error),
      );
      return;
    }
    this.openWatch(this.resourceVersion);
  }

  private openWatch(from: string): void {
    const openedAt = this.clock.now();
    let events = 0;
    let expired = false;
    const onEvent = (type: string, object: unknown): void => {
      if (this.stopped) return;
      if (type === 'ERROR') {
        // 410 Gone / Expired: the history from our resourceVersion is gone; list again.
        const code = isRecord(object) && typeof object.code === 'number' ? object.code : 0;
        if (code === 410) expired = true;
        else this.lastError = `the pod watch reported an error: ${isRecord(object) && typeof object.message === 'string' ? object.message.slice(0, 200) : `code ${code}`}`;
        return;
      }
      events++;
      this.apply(type, object);
    };
    const onEnd = (error: unknown): void => {
      this.stopWatch = undefined;
      if (this.stopped) return;
      this.watching = false;
      this.lostAt = this.clock.now();
      if (expired) {
        this.resourceVersion = undefined;
        this.cycle();
      } else if (error) this.fail('the pod watch failed', error);
      else if (events === 0 && this.clock.now() - openedAt < SHORT_WATCH_MS) this.scheduleRetry();
      else {
        this.backoffMs = INITIAL_BACKOFF_MS;
        this.cycle();
      }
    };
    this.options.source.watch(from, onEvent, onEnd).then(
      (close) => {
        if (this.stopped) {
          close();
          return;
        }
        this.stopWatch = close;
        this.watching = true;
        this.lastError = undefined;
        this.wake();
      },
      (error: unknown) => {
        if (this.stopped) return;
        if (!this.watching) this.lostAt = this.lostAt || this.clock.now();
        this.fail('the pod watch could not be opened', error);
      },
    );
  }

  private replaceAll(list: PodList): void {
    this.byUidIndex.clear();
    this.byNodeIndex.clear();
    this.byNameIndex.clear();
    for (const item of list.items) {
      const pod = cachedPodOf(item);
      if (pod) this.put(pod);
    }
    this.resourceVersion = list.resourceVersion;
    this.synced = true;
    this.lists++;
    this.eventsApplied++;
    // Fresh from the list itself, even before the watch opens.
    this.lostAt = this.clock.now();
    this.wake();
  }

  private apply(type: string, object: unknown): void {
    const version = isRecord(object) && isRecord(object.metadata) && typeof object.metadata.resourceVersion === 'string' ? object.metadata.resourceVersion : undefined;
    if (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED') {
      const pod = cachedPodOf(object);
      if (pod) {
        this.remove(pod.uid);
        if (type !== 'DELETED') this.put(pod);
        this.eventsApplied++;
      }
    }
    // BOOKMARK events only move the resourceVersion on.
    if (version) this.resourceVersion = version;
  }

  private put(pod: CachedPod): void {
    this.remove(pod.uid);
    this.byUidIndex.set(pod.uid, pod);
    this.byNameIndex.set(`${pod.namespace}/${pod.name}`, pod);
    if (pod.nodeName !== undefined) {
      let onNode = this.byNodeIndex.get(pod.nodeName);
      if (!onNode) this.byNodeIndex.set(pod.nodeName, (onNode = new Map()));
      onNode.set(pod.uid, pod);
    }
  }

  private remove(uid: string): void {
    const old = this.byUidIndex.get(uid);
    if (!old) return;
    this.byUidIndex.delete(uid);
    const nameKey = `${old.namespace}/${old.name}`;
    if (this.byNameIndex.get(nameKey)?.uid === uid) this.byNameIndex.delete(nameKey);
    if (old.nodeName === undefined) return;
    const onNode = this.byNodeIndex.get(old.nodeName);
    onNode?.delete(uid);
    if (onNode?.size === 0) this.byNodeIndex.delete(old.nodeName);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringField(record: Record<string, unknown> | undefined, key: string): string | undefined {
  const value = record?.[key];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/** The fields of a pod object from a list or a watch event; undefined when it lacks namespace, name or UID. */
function cachedPodOf(object: unknown): CachedPod | undefined {
  if (!isRecord(object)) return undefined;
  const metadata = isRecord(object.metadata) ? object.metadata : undefined;
  const spec = isRecord(object.spec) ? object.spec : undefined;
  const status = isRecord(object.status) ? object.status : undefined;
  const namespace = stringField(metadata, 'namespace');
  const name = stringField(metadata, 'name');
  const uid = stringField(metadata, 'uid');
  if (!namespace || !name || !uid) return undefined;
  // The client's list decodes timestamps into Dates; watch events carry the JSON string.
  const deletion = metadata?.deletionTimestamp;
  return {
    namespace,
    name,
    uid,
    serviceAccount: stringField(spec, 'serviceAccountName') ?? 'default',
    nodeName: stringField(spec, 'nodeName'),
    phase: stringField(status, 'phase'),
    deleting: deletion !== undefined && deletion !== null && deletion !== '',
  };
}
