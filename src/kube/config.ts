/**
 * Where the Kubernetes API client gets its configuration: an explicit kubeconfig path, else KUBECONFIG, else the
 * in-cluster service-account credentials. Shared by every component that talks to an API server (TokenReview,
 * pods, Secrets, ConfigMaps), so it knows nothing about what the client is used for.
 */
import { existsSync } from 'node:fs';
import type { KubeConfig, Watch } from '@kubernetes/client-node';
import { ConfigError, type Env } from '../config/env.js';
import { systemClock, type Clock } from '../util/clock.js';
import { loadKubeClient } from './client.js';

/** Where the configuration came from, for log lines and error messages. */
export type KubeConfigOrigin = { kind: 'file'; path: string } | { kind: 'env'; path: string } | { kind: 'in-cluster' };

export interface LoadedKubeConfig {
  kubeConfig: KubeConfig;
  origin: KubeConfigOrigin;
  /** The API server URL of the current context. */
  server: string;
}

const IN_CLUSTER_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** True when running in a pod that has the API server's address and a service-account token mounted. */
function inCluster(env: Env = process.env): boolean {
  return Boolean(env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT && existsSync(IN_CLUSTER_TOKEN));
}

/** True when `loadKubeConfig(path, env)` has something to load (it may still fail on a bad file). */
export function kubeConfigAvailable(path: string | undefined, env: Env = process.env): boolean {
  return Boolean(path) || Boolean(env.KUBECONFIG) || inCluster(env);
}

async function fromFile(path: string, what: string): Promise<KubeConfig> {
  if (!existsSync(path)) throw new ConfigError(`${what} ${path} does not exist`);
  const kubeConfig = new (await loadKubeClient()).KubeConfig();
  try {
    kubeConfig.loadFromFile(path);
  } catch (error) {
    throw new ConfigError(`${what} ${path} cannot be read: ${(error as Error).message}`);
  }
  return kubeConfig;
}

/**
 * Loads a kubeconfig with its origin and the current cluster's server URL (and, the first time, the Kubernetes
 * client: see ./client.ts). Rejects with a ConfigError naming the file (or KUBECONFIG) and what is wrong.
 */
export async function loadKubeConfigWithOrigin(path: string | undefined, env: Env = process.env): Promise<LoadedKubeConfig> {
  let kubeConfig: KubeConfig;
  let origin: KubeConfigOrigin;
  if (path) {
    kubeConfig = await fromFile(path, 'kubeconfig');
    origin = { kind: 'file', path };
  } else if (env.KUBECONFIG) {
    // KUBECONFIG may list several files like kubectl accepts; the first existing one is used.
    const candidates = env.KUBECONFIG.split(process.platform === 'win32' ? ';' : ':').filter((p) => p.length > 0);
    const first = candidates.find((p) => existsSync(p));
    if (!first) throw new ConfigError(`KUBECONFIG=${env.KUBECONFIG} names no existing file`);
    kubeConfig = await fromFile(first, 'kubeconfig (from KUBECONFIG)');
    origin = { kind: 'env', path: first };
  } else if (inCluster(env)) {
    kubeConfig = new (await loadKubeClient()).KubeConfig();
    try {
      kubeConfig.loadFromCluster();
    } catch (error) {
      throw new ConfigError(`cannot load the in-cluster Kubernetes configuration: ${(error as Error).message}`);
    }
    origin = { kind: 'in-cluster' };
  } else {
    throw new ConfigError('no Kubernetes configuration: pass --kubeconfig FILE, set KUBECONFIG, or run inside a cluster');
  }
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) {
    const where = origin.kind === 'in-cluster' ? 'the in-cluster configuration' : origin.path;
    throw new ConfigError(`${where} has no current context with a cluster (set current-context)`);
  }
  return { kubeConfig, origin, server: cluster.server };
}

/** Loads a KubeConfig from `path`, else KUBECONFIG, else in-cluster. Rejects with a ConfigError of one actionable line. */
export async function loadKubeConfig(path: string | undefined, env: Env = process.env): Promise<KubeConfig> {
  return (await loadKubeConfigWithOrigin(path, env)).kubeConfig;
}

/** What a watch needs of the client library's `Watch`. */
export type WatchClient = Pick<Watch, 'watch'>;

/** The system clock whose timers do not keep the process alive: a pending watch retry must not hold up an exit. */
const backgroundClock: Clock = {
  now: systemClock.now,
  setTimer(delayMs, callback) {
    const timer = setTimeout(callback, delayMs);
    timer.unref();
    return () => clearTimeout(timer);
  },
};

export const WATCH_BACKOFF_INITIAL_MS = 500;
export const WATCH_BACKOFF_MAX_MS = 30_000;
/** A watch that lived this long was healthy: the next one starts from the initial backoff again. */
export const WATCH_HEALTHY_MS = 5000;

/**
 * Follows a Kubernetes watch and re-establishes it whenever the stream ends or fails, with backoff from 500 ms
 * doubling to 30 s (reset by any event, or by a watch that lived more than 5 s), timed on `clock`. `query` is called
 * before every (re)connect so callers can resume from the last resourceVersion. Returns a function that stops it.
 */
export function watchWithBackoff(
  watch: WatchClient,
  path: string,
  query: () => Record<string, string>,
  onEvent: (type: string, obj: unknown) => void,
  clock: Clock = backgroundClock,
): () => void {
  let stopped = false;
  let controller: AbortController | undefined;
  let cancelTimer: (() => void) | undefined;
  let backoffMs = WATCH_BACKOFF_INITIAL_MS;
  const again = (startedAt: number): void => {
    if (stopped) return;
    if (clock.now() - startedAt > WATCH_HEALTHY_MS) backoffMs = WATCH_BACKOFF_INITIAL_MS;
    cancelTimer = clock.setTimer(backoffMs, begin);
    backoffMs = Math.min(backoffMs * 2, WATCH_BACKOFF_MAX_MS);
  };
  const begin = (): void => {
    cancelTimer = undefined;
    if (stopped) return;
    const startedAt = clock.now();
    // A watch ends once: by its done callback or by a failure to start, whichever comes first.
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      again(startedAt);
    };
    watch
      .watch(
        path,
        query(),
        (type: string, obj: unknown) => {
          if (type !== 'ERROR') backoffMs = WATCH_BACKOFF_INITIAL_MS;
          onEvent(type, obj);
        },
        end,
      )
      .then((c) => {
        controller = c;
        if (stopped) c.abort();
      })
      .catch(end);
  };
  begin();
  return () => {
    stopped = true;
    cancelTimer?.();
    controller?.abort();
  };
}

/**
 * `watchWithBackoff` that resumes from the last resourceVersion it saw, so a re-established watch misses nothing;
 * when the server says that version is too old (an ERROR event, e.g. 410 Expired) it starts over from now and
 * calls `onExpired`, whose job is a full relist (events in between are lost to the watch).
 */
export function followResumable(
  watch: WatchClient,
  path: string,
  query: Readonly<Record<string, string>>,
  onEvent: (type: string, obj: unknown) => void,
  onExpired: () => void,
  clock?: Clock,
): () => void {
  let resourceVersion: string | undefined;
  return watchWithBackoff(
    watch,
    path,
    () => ({ ...query, ...(resourceVersion ? { resourceVersion } : {}) }),
    (type, obj) => {
      if (type === 'ERROR') {
        resourceVersion = undefined;
        onExpired();
        return;
      }
      const seen = (obj as { metadata?: { resourceVersion?: string } } | undefined)?.metadata?.resourceVersion;
      if (seen) resourceVersion = seen;
      onEvent(type, obj);
    },
    clock,
  );
}
