/**
 * `meshca ca --workers N`: one primary process and N workers, so that signing and TLS use every core a
 * single Node event loop cannot.
 *
 * The primary owns everything that must happen once: the key source (files, watches, rotation, Vault, the
 * Kubernetes Secret and ConfigMap), the TokenReview calls with their cache and in-flight limit, the pod caches
 * of node impersonation (one list + watch per cluster, not one per worker), the monitoring
 * server (metrics summed over all processes, /ready, /debug/ca) and the shutdown. The workers share the gRPC
 * port (Node's cluster module hands each new connection to the next worker) and sign in-process from a
 * snapshot of the primary's material, which the primary re-sends on every change. A worker that dies is
 * replaced; the primary's own exit ends the workers.
 */
import cluster, { type Worker } from 'node:cluster';
import type { AddressInfo } from 'node:net';
import { AggregatorRegistry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client';
import { PodCaches, type AuthOutcome, type PodCache } from '../authn/index.js';
import type { TrustBundleFeed } from '../ca/federation/types.js';
import type { WorkloadSigner } from '../ca/index.js';
import { takeSignerSnapshot } from '../ca/snapshot-signer.js';
import type { CaServerConfig } from '../config/ca.js';
import type { Env } from '../config/env.js';
import type { Logger } from '../log.js';
import { primaryPeer, type CallHandlers, type IpcMessage, type PrimaryMethods, type PrimaryPeer, type WorkerMethods } from './cluster-ipc.js';
import { encodeReviewOutcome } from './cluster-worker.js';
import { authenticatorNames, createAuthority, tokenReviewAuthenticator } from './assembly.js';
import { buildKubeClusters, describeCa, formatHostPort, logReady, mergeDecisions, podCacheOptions, startMonitoring } from './index.js';
import { CleanupStack } from './lifecycle.js';
import { CaMetrics } from './metrics.js';
import { ReadinessProbe } from './readiness.js';
import { signingTrustDomainWarner } from './signing-trust-domain.js';
import { encodeTrustBundleNotice } from './trust-bundles.js';

/** How long the primary waits for one worker's answer (metrics, decisions) before leaving that worker out. */
const WORKER_ANSWER_TIMEOUT_MS = 2000;
/** A worker that died is started again after this long (a crash loop then costs little). */
const RESTART_DELAY_MS = 1000;
const MAX_RESTART_DELAY_MS = 30_000;

/** The environment variable that tells a forked worker its slot number (for its log lines). */
export const WORKER_SLOT_ENV = 'MESHCA_CA_WORKER';

export interface CaClusterOptions {
  config: CaServerConfig;
  signer: WorkloadSigner;
  logger: Logger;
  registry: Registry;
  env?: Env;
  /** Served by every worker over WatchTrustBundles (see CaServerOptions.trustBundles); each change is sent to them. */
  trustBundles?: TrustBundleFeed;
  /** /debug/federation (see CaServerOptions.federationStatus). */
  federationStatus?: () => unknown;
}

export interface CaCluster {
  grpcAddress: string;
  monitoringAddress: string;
  grpcPort: number;
  monitoringPort: number;
  /** The local cluster's pod cache, when node impersonation runs one (the CA's Kubernetes plugins share it). */
  localPodCache?: PodCache;
  close(): Promise<void>;
}

interface Slot {
  index: number;
  worker: Worker | undefined;
  peer: PrimaryPeer | undefined;
  listening: boolean;
}

export async function startCaCluster(options: CaClusterOptions): Promise<CaCluster> {
  const { config, signer, logger, registry, trustBundles } = options;
  const env = options.env ?? process.env;
  if (!registry.getSingleMetric('process_cpu_user_seconds_total')) collectDefaultMetrics({ register: registry });
  const metrics = new CaMetrics(registry);
  metrics.publishSignerExpiries(signer);

  const clusters = await buildKubeClusters(config, env, logger);
  const tokenReviews = clusters.size > 0 ? tokenReviewAuthenticator(config, clusters, metrics) : undefined;
  // Node impersonation: workers ask here, so every cluster's pods are watched once.
  const podCaches =
    config.trustedNodeAccounts.length > 0 ? new PodCaches(clusters, { ...podCacheOptions(logger), syncWaitSeconds: config.tokenReviewTimeoutSeconds }).start() : undefined;
  const authenticators = authenticatorNames(config, clusters);

  const slots: Slot[] = Array.from({ length: config.workers }, (_, index) => ({ index, worker: undefined, peer: undefined, listening: false }));
  let closing = false;
  let grpcPort = 0;
  const cleanups = new CleanupStack(logger);

  const answerWorker: CallHandlers<PrimaryMethods> = {
    snapshot: () => takeSignerSnapshot(signer),
    sign: (request) => signer.sign(request),
    review: async ({ clusterId, token }) => {
      if (!tokenReviews) return { kind: 'denied', reason: 'no Kubernetes cluster is configured for TokenReview' } satisfies AuthOutcome;
      return encodeReviewOutcome(await tokenReviews.reviewToken(clusterId, token));
    },
    checkNode: (request) => {
      if (!podCaches) return { kind: 'denied', reason: 'node impersonation is not enabled (CA_TRUSTED_NODE_ACCOUNTS is empty)' };
      return podCaches.check(request);
    },
    trustBundles: () => (trustBundles ? encodeTrustBundleNotice(trustBundles.current()) : null),
  };

  /** Forks the worker of a slot; resolves once it listens, rejects with its reason when it cannot start. */
  const fork = (slot: Slot): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const worker = cluster.fork({ [WORKER_SLOT_ENV]: String(slot.index) });
      const peer = primaryPeer((message: IpcMessage) => worker.send(message), answerWorker, (notice) => {
        switch (notice.name) {
          case 'listening':
            slot.listening = true;
            grpcPort = notice.params.grpcPort;
            resolve();
            return;
          case 'fatal':
            reject(new Error(notice.params.message));
            worker.kill();
            return;
        }
      });
      slot.worker = worker;
      slot.peer = peer;
      slot.listening = false;
      worker.on('message', (message) => peer.receive(message));
      worker.on('exit', (code, signal) => {
        peer.close();
        const wasListening = slot.listening;
        slot.listening = false;
        slot.worker = undefined;
        slot.peer = undefined;
        if (!wasListening) reject(new Error(`CA worker ${slot.index} exited before it could serve (${signal ?? `exit code ${code}`})`));
        if (closing || !wasListening) return;
        logger.error({ worker: slot.index, exitCode: code, signal }, 'a CA worker died; starting a new one');
        restart(slot, RESTART_DELAY_MS);
      });
    });

  /** Starts the slot's worker again after `delayMs`; a worker that cannot start is retried, waiting twice as long. */
  const restart = (slot: Slot, delayMs: number): void => {
    setTimeout(() => {
      if (closing) return;
      fork(slot).catch((error: unknown) => {
        const nextDelayMs = Math.min(delayMs * 2, MAX_RESTART_DELAY_MS);
        logger.error({ worker: slot.index, err: (error as Error).message, retryInSeconds: nextDelayMs / 1000 }, 'a CA worker could not be restarted');
        restart(slot, nextDelayMs);
      });
    }, delayMs).unref();
  };

  const stopWorkers = async (): Promise<void> => {
    closing = true;
    const running = slots.map((s) => s.worker).filter((w): w is Worker => w !== undefined && !w.isDead());
    const exited = running.map((w) => new Promise<void>((resolve) => (w.isDead() ? resolve() : w.once('exit', () => resolve()))));
    for (const slot of slots) slot.peer?.notify('shutdown', null);
    // Each worker waits up to the grace period for its in-flight calls; allow a little more, then end them.
    const all = Promise.all(exited).then(() => true);
    const inTime = await Promise.race([all, new Promise<false>((resolve) => setTimeout(() => resolve(false), config.shutdownGraceSeconds * 1000 + 5000).unref())]);
    if (!inTime) {
      logger.warn('CA workers did not stop in time; killing them');
      for (const w of running) if (!w.isDead()) w.kill('SIGKILL');
      await all;
    }
  };
  // Kept-alive API-server connections end last (workers may still be asking for reviews while they drain).
  cleanups.push(() => clusters.close());
  cleanups.push(() => podCaches?.close());
  cleanups.push(stopWorkers);

  try {
    const authority = createAuthority(config, signer);
    const readiness = new ReadinessProbe({ authority, trustDomain: config.trustDomain, logger });
    await readiness.start();
    cleanups.push(() => readiness.stop());
    const checkSigningTrustDomain = signingTrustDomainWarner(logger, config.trustDomain, config.trustDomainAliases);
    checkSigningTrustDomain(signer.status());
    const unsubscribe = signer.onChange(() => {
      metrics.publishSignerExpiries(signer);
      checkSigningTrustDomain(signer.status());
      const snapshot = takeSignerSnapshot(signer);
      for (const slot of slots) slot.peer?.notify('snapshot', snapshot);
      void readiness.probe();
    });
    cleanups.push(unsubscribe);
    if (trustBundles) {
      cleanups.push(
        trustBundles.onChange((set) => {
          const notice = encodeTrustBundleNotice(set);
          for (const slot of slots) slot.peer?.notify('trustBundles', notice);
        }),
      );
    }

    const monitoring = await startMonitoring(config, {
      registry: {
        contentType: registry.contentType,
        metrics: async () => AggregatorRegistry.aggregate(await collectMetrics(registry, slots)).metrics(),
      },
      ready: async () => {
        const own = await readiness.check();
        const listening = slots.filter((s) => s.listening).length;
        return { ...own, ready: own.ready && listening === slots.length, workers: { listening, expected: slots.length } };
      },
      debugInfo: () => describeCa(config, signer, { authenticators, clusters: clusters.ids(), workers: slots.length }),
      ...(options.federationStatus ? { federation: options.federationStatus } : {}),
      // Each worker records the calls it served; the primary serves none.
      decisions: async (query) => mergeDecisions(await askWorkers(slots, 'decisions', query), query.limit),
    });
    cleanups.push(() => monitoring.close());
    const monitoringPort = (monitoring.server.address() as AddressInfo).port;

    // Workers are the same program with the same arguments; advanced serialization carries Buffers and Dates.
    cluster.setupPrimary({ serialization: 'advanced' });
    await Promise.all(slots.map(fork));

    const grpcAddress = formatHostPort(config.grpcAddress.host, grpcPort);
    const monitoringAddress = formatHostPort(config.monitoringAddress.host, monitoringPort);
    logReady(logger, config, signer, { grpcAddress, monitoringAddress, authenticators, workers: slots.length });
    let closed: Promise<void> | undefined;
    const localPodCache = podCaches?.cache(config.clusterId);
    return { grpcAddress, monitoringAddress, grpcPort, monitoringPort, ...(localPodCache ? { localPodCache } : {}), close: () => (closed ??= cleanups.run()) };
  } catch (error) {
    await cleanups.run();
    throw error;
  }
}

/** The primary's own metrics, then each serving worker's (a worker that does not answer in time is left out). */
async function collectMetrics(registry: Registry, slots: readonly Slot[]): Promise<MetricObjectWithValues<MetricValue<string>>[][]> {
  return [await registry.getMetricsAsJSON(), ...(await askWorkers(slots, 'metrics', null))];
}

/** Each serving worker's answer to one call; a worker that does not answer in time is left out. */
async function askWorkers<K extends keyof WorkerMethods>(slots: readonly Slot[], method: K, params: WorkerMethods[K]['params']): Promise<WorkerMethods[K]['result'][]> {
  const answers = await Promise.all(
    slots.map(async (slot) => {
      if (!slot.listening || !slot.peer) return undefined;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), WORKER_ANSWER_TIMEOUT_MS)));
      try {
        return await Promise.race([slot.peer.call(method, params), timeout]);
      } catch {
        return undefined;
      } finally {
        clearTimeout(timer);
      }
    }),
  );
  return answers.filter((a): a is Awaited<WorkerMethods[K]['result']> => a !== undefined);
}
