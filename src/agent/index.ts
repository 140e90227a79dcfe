/**
 * `meshca agent`: one process per node (or per pod in sidecar mode) that every local Envoy reaches over a Unix
 * socket. It makes each workload's key locally, gets the certificate from the CA with the workload's own token,
 * serves both over SDS and renews them before they expire.
 */
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { AgentConfig } from '../config/agent.js';
import { ConfigError } from '../config/env.js';
import type { Logger } from '../log.js';
import { certificatesFromPem } from '../pki/index.js';
import { backoffDelayMs, sleep } from './backoff.js';
import { GrpcCaClient, type CaClient } from './ca-client.js';
import { tokenFileCredential } from './credentials.js';
import { FileWatcher } from './files.js';
import { describeKeyConfig, KeyPool, type KeySource } from './keys.js';
import { secretsReport } from './debug.js';
import { registerIdentityExpiryMetric } from './identity-expiry-metric.js';
import { AgentMetrics } from './metrics.js';
import { OutputCertsWriter } from './output-certs.js';
import { ResourceProvider } from './resources.js';
import { SdsServer } from './sds-server.js';
import { prepareSocketPath } from './socket.js';
import { startStatusServer, type StatusServer } from './status-server.js';
import { systemClock, type Clock } from '../util/clock.js';
import { IdentityCache } from './cache/identity-cache.js';
import { WorkloadSecrets, type IdentityLease } from './workload-secrets.js';
import { grpcTrustBundleSource } from './trust-bundle-client.js';
import { TrustBundleWatcher, type FederationView, type TrustBundleSource } from './trust-bundles.js';

export { readAgentConfig, type AgentConfig, type AgentFlags } from '../config/agent.js';
export type { CaClient, CertificateRequest } from './ca-client.js';
export { CaCallError, SdsError } from './errors.js';
export { AgentMetrics } from './metrics.js';
export type { IdentitySecret, TrustBundle } from './workload-secrets.js';
export { AgentError, CaFailure, type AgentErrorCode } from './cache/errors.js';
export type { CachedIdentity, IdentityCache } from './cache/identity-cache.js';
export type { Clock } from '../util/clock.js';
export { TrustBundleWatcher, parseTrustBundleSet, type FederationState, type FederationView, type TrustBundleSource } from './trust-bundles.js';
export { grpcTrustBundleSource } from './trust-bundle-client.js';

export interface AgentDependencies {
  /** Replaces the gRPC CA client (tests use an in-process signer). */
  caClient?: CaClient;
  metrics?: AgentMetrics;
  /**
   * The identity cache's clock (renewal, retries, idle expiry, token exp), also read by the token check and the
   * expiry metrics; tests pass a virtual one and advance it. Default: the system clock.
   */
  clock?: Clock;
  /** Replaces the key pool (tests use keys that are ready at once, so virtual time waits for no worker thread). */
  keys?: KeySource;
  /**
   * Where the trust bundles (aliases, federated trust domains) come from. Default: WatchTrustBundles on the gRPC CA
   * client's channel; with `caClient` given and no source, none (SDS ALL then holds the own trust domain only).
   */
  trustBundles?: TrustBundleSource;
}

export interface RunningAgent {
  socketPath: string;
  /** Base URL of the status server. */
  statusUrl: string;
  metrics: AgentMetrics;
  /** The transport-free identity cache. */
  cache: IdentityCache;
  /** Its PEM view with gRPC statuses, which SDS and OUTPUT_CERTS serve. */
  secrets: WorkloadSecrets;
  /** The trust bundles from the CA (aliases, federated trust domains), when watched. */
  federation?: FederationView;
  sds: SdsServer;
  close(): Promise<void>;
}

async function readCaRoot(file: string): Promise<Buffer> {
  let pem: Buffer;
  try {
    pem = await fs.readFile(file);
  } catch (error) {
    // Exit 1, not 2: the setting may be right and the mount not there yet (a missing ConfigMap), which is no usage error.
    throw new Error(
      `cannot read the CA root certificate ${file} (--ca-root-cert, CA_ROOT_CA): ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}; ` +
        'point it at the mesh root (ConfigMap istio-ca-root-cert, key root-cert.pem)',
    );
  }
  if (certificatesFromPem(pem.toString('utf8')).length === 0) {
    throw new ConfigError(`the CA root certificate file ${file} (--ca-root-cert, CA_ROOT_CA) holds no PEM certificate`);
  }
  return pem;
}

/**
 * How many connections the SDS socket queues before the agent accepts them. Node's default (511) is too few for a
 * node whose sidecars all (re)start at once: the rest are refused with EAGAIN and each Envoy backs off before it
 * tries again (18,000 refusals for 5,000 sidecars in bench part 5b). The kernel caps it at net.core.somaxconn
 * (4096 by default since Linux 5.4); a node that runs more pods can raise that.
 */
const SDS_LISTEN_BACKLOG = 65_535;

/**
 * Listens on the SDS socket and hands each connection to grpc-js (which cannot be given a backlog itself). The umask
 * is narrowed while binding so that the socket is never more open than `mode`, not even between bind and chmod (with
 * a permissive inherited umask it would start out 0777).
 */
function listenUnix(server: grpc.Server, socketPath: string, mode: number, log: Logger): Promise<net.Server> {
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = net.createServer((socket) => injector.injectConnection(socket));
  const narrowing = 0o777 & ~mode;
  const inherited = process.umask(narrowing);
  process.umask(inherited | narrowing);
  return new Promise((resolve, reject) => {
    const failed = (error: Error): void => {
      process.umask(inherited);
      reject(new Error(`cannot listen on the SDS socket ${socketPath}: ${error.message}`));
    };
    listener.once('error', failed);
    listener.listen({ path: socketPath, backlog: SDS_LISTEN_BACKLOG }, () => {
      process.umask(inherited);
      listener.off('error', failed);
      // After listening, an error is a connection that could not be accepted (out of file descriptors): the
      // listener goes on, and that Envoy retries.
      listener.on('error', (error) => log.warn({ err: error.message, socket: socketPath }, 'could not accept an SDS connection'));
      resolve(listener);
    });
  });
}

export async function startAgent(config: AgentConfig, log: Logger, deps: AgentDependencies = {}): Promise<RunningAgent> {
  const cleanups: (() => Promise<void> | void)[] = [];
  const closeAll = async (): Promise<void> => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch (error) {
        log.warn({ err: (error as Error).message }, 'error while shutting down');
      }
    }
  };
  try {
    return await start(config, log, deps, cleanups, closeAll);
  } catch (error) {
    await closeAll();
    throw error;
  }
}

async function start(
  config: AgentConfig,
  log: Logger,
  deps: AgentDependencies,
  cleanups: (() => Promise<void> | void)[],
  closeAll: () => Promise<void>,
): Promise<RunningAgent> {
  const metrics = deps.metrics ?? new AgentMetrics();
  const clock = deps.clock ?? systemClock;
  let ca: CaClient;
  let rootWatch: { close(): void } | null = null;
  let trustBundleSource = deps.trustBundles;
  if (deps.caClient) {
    ca = deps.caClient;
  } else {
    const grpcCa = new GrpcCaClient(config.ca, await readCaRoot(config.ca.rootCertPath), log);
    ca = grpcCa;
    rootWatch = watchCaRoot(config.ca.rootCertPath, grpcCa, log, metrics);
    trustBundleSource ??= grpcTrustBundleSource(grpcCa);
  }
  cleanups.push(() => ca.close());
  if (rootWatch) cleanups.push(() => rootWatch.close());
  const federation = trustBundleSource ? new TrustBundleWatcher({ source: trustBundleSource, trustDomain: config.trustDomain, log, clock }).start() : undefined;
  // Closed before the CA client (cleanups run in reverse), so its stream ends before the channel does.
  if (federation) cleanups.push(() => federation.close());

  let keys: KeySource;
  if (deps.keys) {
    keys = deps.keys;
  } else {
    const pool = new KeyPool(config.key, config.keyPoolSize, {
      error: (error) => log.error({ err: (error as Error).message }, 'key generation failed'),
      generated: () => metrics.keysGenerated.inc(),
      reused: () => metrics.keysReused.inc(),
    });
    cleanups.push(() => pool.close());
    keys = pool;
  }
  const cache = new IdentityCache({
    ca,
    keys,
    ttlSeconds: config.secretTtlSeconds,
    grace: { ratio: config.graceRatio, jitter: config.graceRatioJitter },
    idleTtlMs: config.idleSecretTtlSeconds * 1000,
    trustDomain: config.trustDomain,
    log,
    metrics,
    clock,
  });
  cleanups.push(() => cache.close());
  const secrets = new WorkloadSecrets({ cache, key: config.key });
  const files = new FileWatcher(log, { allowedDirs: config.fileResourceDirs }, fileFailureCounters(metrics));
  cleanups.push(() => files.close());
  const sidecarCredential = config.mode === 'sidecar' ? tokenFileCredential(config.tokenFile) : null;
  const provider = new ResourceProvider({
    secrets,
    files,
    mode: config.mode,
    sidecarCredential,
    fileResourceDirs: config.fileResourceDirs,
    log,
    metrics,
    clock: () => clock.now(),
    trustDomain: config.trustDomain,
    ...(federation ? { federation } : {}),
  });
  metrics.setExpirySource(() => secrets.expiryReadings(), () => clock.now());
  if (config.identityExpiryMetric.enabled) {
    const { limit } = config.identityExpiryMetric;
    registerIdentityExpiryMetric(metrics, { identities: () => cache.identities().map((c) => ({ identity: c.identity, notAfter: c.leaf.notAfter })), limit, log });
  }

  let socketListening = false;
  let caReached = false;
  const status: StatusServer = await startStatusServer({
    host: config.statusAddress.host,
    port: config.statusAddress.port,
    metrics,
    readiness: () => {
      const waitingFor = [...(socketListening ? [] : ['the SDS socket']), ...(caReached ? [] : [`the CA at ${ca.address}`])];
      return { ready: waitingFor.length === 0, waitingFor };
    },
    secrets: () => secretsReport(cache.snapshot()),
  });
  cleanups.push(() => status.close());
  log.info({ url: status.url }, 'status server listening');

  const socketPath = await prepareSocketPath(config.sdsSocket);
  const sds = new SdsServer(provider, metrics, log);
  // channelz keeps a registry entry, counters and a trace line per connection that nothing here reads: at 10,000
  // Envoy connections that is memory and CPU for nothing (the CA's server turns it off too).
  const server = new grpc.Server({ 'grpc.enable_channelz': 0 });
  sds.register(server);
  const listener = await listenUnix(server, socketPath, config.sdsSocketMode, log);
  cleanups.push(async () => {
    sds.closeStreams('the agent is shutting down');
    listener.close();
    server.forceShutdown();
    await fs.rm(socketPath, { force: true });
  });
  try {
    await fs.chmod(socketPath, config.sdsSocketMode);
  } catch (error) {
    throw new Error(`cannot set mode ${config.sdsSocketMode.toString(8)} on the SDS socket ${socketPath}: ${(error as Error).message}`);
  }
  socketListening = true;
  log.info(
    {
      socket: socketPath,
      mode: config.mode,
      caAddress: ca.address,
      keyType: describeKeyConfig(config.key),
      secretTtlSeconds: config.secretTtlSeconds,
      graceRatio: config.graceRatio,
    },
    'SDS agent ready',
  );

  const background = new AbortController();
  cleanups.push(() => background.abort(new Error('agent shutting down')));
  void ca.waitUntilReachable(background.signal).then(
    () => {
      if (!caReached) log.info({ caAddress: ca.address }, 'CA reachable');
      caReached = true;
    },
    () => undefined,
  );

  if (sidecarCredential) {
    // Sidecar mode has one identity: fetch it up front so OUTPUT_CERTS and the first Envoy request need no wait.
    const writer = config.outputCertsDir ? new OutputCertsWriter(config.outputCertsDir, log) : null;
    void (async () => {
      for (let attempt = 0; !background.signal.aborted; attempt++) {
        let lease: IdentityLease;
        try {
          lease = await secrets.acquire(sidecarCredential);
        } catch (error) {
          if (background.signal.aborted) return;
          const delay = backoffDelayMs(attempt);
          log.warn({ err: (error as Error).message, retryInMs: delay }, 'could not get the workload certificate yet; retrying');
          await sleep(delay, background.signal).catch(() => undefined);
          continue;
        }
        caReached = true;
        cleanups.push(() => lease.release());
        if (writer) {
          await writer.write(lease.current());
          lease.onChange((secret) => void writer.write(secret));
        }
        return;
      }
    })();
  }

  return {
    socketPath,
    statusUrl: status.url,
    metrics,
    cache,
    secrets,
    ...(federation ? { federation } : {}),
    sds,
    close: closeAll,
  };
}

/** The mesh root file is a mounted ConfigMap: when it changes (root rotation) the CA channel trusts the new one. */
/** The FileWatcher hooks that count watcher and file-read failures the way the istio-agent does. */
function fileFailureCounters(metrics: AgentMetrics): { watcher(): void; read(): void } {
  return { watcher: () => metrics.fileWatcherFailures.inc(), read: () => metrics.fileSecretFailures.inc() };
}

function watchCaRoot(file: string, client: GrpcCaClient, log: Logger, metrics: AgentMetrics): { close(): void } {
  // The operator's own setting, not a client's request: any path, read with the same care. Only a failed watch is
  // counted: this file is the agent's CA trust, not a file-cert:/file-root: secret.
  const files = new FileWatcher(log, { allowedDirs: null }, { watcher: () => metrics.fileWatcherFailures.inc(), read: () => undefined });
  let closed = false;
  void files.open(file).then(
    (watch) => {
      if (closed) {
        watch.close();
        return;
      }
      watch.onChange((content) => {
        if (certificatesFromPem(content.data.toString('utf8')).length === 0) {
          log.warn({ file }, 'CA root certificate file changed but holds no certificate; keeping the previous one');
          return;
        }
        log.info({ file }, 'CA root certificate changed; reconnecting to the CA with it');
        client.updateRootCertificate(content.data);
      });
    },
    () => undefined,
  );
  return {
    close: () => {
      closed = true;
      files.close();
    },
  };
}
