/**
 * The CA server: the Istio CA gRPC API on --grpc-addr (TLS with a certificate from this CA, or plaintext for
 * debugging) plus the monitoring HTTP server on --monitoring-addr. `startCaServer` returns once both listen;
 * `close` stops accepting, lets in-flight calls finish (up to the grace period) and releases everything.
 */
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { KubeClusters, NodeImpersonation, type AuthOutcome, type NodeCheck, type PodCache } from '../authn/index.js';
import { formatSeconds, type CertificateAuthority, type WorkloadSigner } from '../ca/index.js';
import type { CaServerConfig } from '../config/ca.js';
import type { Env } from '../config/env.js';
import { loadKubeConfigWithOrigin } from '../kube/config.js';
import type { TrustBundleFeed } from '../ca/federation/types.js';
import type { Logger } from '../log.js';
import { istioCaService } from '../wire/protos.js';
import { buildAuthenticators, createAuthority } from './assembly.js';
import { createCaHandlers, InFlightCalls, MAX_RECEIVE_MESSAGE_BYTES } from './ca-service.js';
import { DecisionRecord } from './decisions.js';
import { formatHostPort, listenError } from './listen.js';
import { CleanupStack } from './lifecycle.js';
import { CaMetrics } from './metrics.js';
import { createMonitoringServer, type MonitoringOptions } from './monitoring.js';
import type { FastifyInstance } from 'fastify';
import { PerIdentityRateLimiter } from './rate-limit.js';
import { ReadinessProbe } from './readiness.js';
import { signingTrustDomainWarner } from './signing-trust-domain.js';
import { ServingCertificate } from './serving-cert.js';
import { TrustBundleWatches } from './trust-bundles.js';

export { CaMetrics } from './metrics.js';
export { ListenError, formatHostPort } from './listen.js';
export { grpcStatusForCaError, MAX_CSR_BYTES, MAX_METADATA_KEYS, MAX_BEARER_TOKEN_BYTES, IMPERSONATION_FAILURE } from './ca-service.js';
export { RotatingServerCredentials, ServingCertificate, TLS_MIN_VERSION, TLS_CIPHERS } from './serving-cert.js';
export { PerIdentityRateLimiter } from './rate-limit.js';
export { DecisionRecord, mergeDecisions, type Decision, type DecisionQuery, type DecisionsAnswer } from './decisions.js';
export { DEFAULT_MAX_TRUST_BUNDLE_WATCHES, TrustBundleWatches } from './trust-bundles.js';

export interface CaServerOptions {
  config: CaServerConfig;
  signer: WorkloadSigner;
  logger: Logger;
  /** Metrics go here; a fresh Registry when omitted. */
  registry?: Registry;
  env?: Env;
  /**
   * The clock (epoch ms) for everything here that judges certificates by time: issuance (expiry of the signing
   * certificate, the leaves' validity, the final check), the readiness probe and the serving certificate.
   * Default Date.now; tests inject a fake one so that no certificate has to expire in real time.
   */
  now?: () => number;
  /**
   * What agents may watch over meshca.federation.v1.TrustBundleService on the gRPC port (own bundle, aliases,
   * federated bundles). Absent: the method answers UNIMPLEMENTED, as istiod does.
   */
  trustBundles?: TrustBundleFeed;
  /** /debug/federation on the monitoring server: each federated trust domain's bundle status. */
  federationStatus?: () => unknown;
  /** Most concurrent WatchTrustBundles streams (DEFAULT_MAX_TRUST_BUNDLE_WATCHES). */
  maxTrustBundleWatches?: number;
  /**
   * A worker of `meshca ca --workers N` serves only the gRPC API: the primary process serves monitoring, says
   * "CA server ready" once every worker listens, and reviews tokens for all of them (one cache, one limit).
   */
  worker?: {
    reviewToken(clusterId: string, token: string): Promise<AuthOutcome>;
    /** Node impersonation's pod check, answered by the primary from its pod caches. */
    checkNode: NodeCheck;
  };
}

export interface CaServer {
  /** host:port actually bound (the real port when 0 was asked for). */
  grpcAddress: string;
  monitoringAddress: string;
  grpcPort: number;
  monitoringPort: number;
  authority: CertificateAuthority;
  metrics: CaMetrics;
  /** Recent CreateCertificate decisions (/debug/decisions). */
  decisions: DecisionRecord;
  /** The TLS serving certificate manager; undefined with --plaintext. */
  servingCertificate(): ServingCertificate | undefined;
  /** The local cluster's pod cache, when node impersonation runs one (the CA's Kubernetes plugins share it). */
  localPodCache?: PodCache;
  /** Graceful stop: refuse new calls, wait for in-flight ones up to the grace period, then close. Idempotent. */
  close(): Promise<void>;
}

/** grpc-js logs to stderr by default; send its messages to our logger instead (bind failures we report ourselves). */
function routeGrpcLogs(logger: Logger): void {
  const write = (level: 'warn' | 'info' | 'debug') => (...args: unknown[]): void => {
    const message = args.map(String).join(' ');
    logger[/No address added out of total/.test(message) ? 'debug' : level]({ component: 'grpc' }, message);
  };
  grpc.setLogger({ error: write('warn'), info: write('info'), debug: write('debug') });
}

function bindGrpc(server: grpc.Server, address: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync(address, credentials, (error, port) => (error ? reject(error) : resolve(port))));
}

/** The clusters of --kubeconfig; none (and no Kubernetes client loaded) when the CA is given no kubeconfig. */
export async function buildKubeClusters(config: CaServerConfig, env: Env, logger: Logger): Promise<KubeClusters> {
  const loaded = [];
  for (const entry of config.kubeconfigs) {
    const { kubeConfig, origin, server } = await loadKubeConfigWithOrigin(entry.path, env);
    logger.info({ clusterId: entry.clusterId, server, origin: origin.kind === 'in-cluster' ? 'in-cluster' : origin.path }, 'Kubernetes cluster configured');
    loaded.push({ clusterId: entry.clusterId, kubeConfig });
  }
  return KubeClusters.fromKubeConfigs(config.clusterId, loaded);
}

/** What /debug/ca shows: what the CA signs with and how it authenticates (no secrets). */
export function describeCa(
  config: CaServerConfig,
  signer: WorkloadSigner,
  facts: { authenticators: readonly string[]; clusters: readonly string[]; serving?: { serialHex: string; notAfter: Date; dnsNames: readonly string[] } | undefined; workers?: number },
): Record<string, unknown> {
  const status = signer.status();
  const serving = facts.serving;
  return {
    trustDomain: config.trustDomain,
    trustDomainAliases: config.trustDomainAliases,
    keySource: status.source,
    ...(status.mode ? { mode: status.mode } : {}),
    signingCertificate: {
      serial: status.signingCertSerial ?? null,
      subject: status.signingCertSubject ?? null,
      notAfter: status.signingCertNotAfter?.toISOString() ?? null,
      uris: status.signingCertUris ?? [],
    },
    roots: status.roots.map((r) => ({ subject: r.subject, fingerprintSha256: r.fingerprintSha256, notAfter: r.notAfter.toISOString() })),
    servingCertificate: serving ? { serial: serving.serialHex, notAfter: serving.notAfter.toISOString(), dnsNames: serving.dnsNames } : null,
    tls: !config.plaintext,
    authenticators: facts.authenticators,
    tokenAudiences: config.tokenAudiences,
    clusters: facts.clusters,
    localClusterId: config.clusterId,
    jwtIssuers: config.jwtRules.map((r) => r.issuer),
    trustedNodeAccounts: config.trustedNodeAccounts.map((a) => `${a.namespace}/${a.serviceAccount}`),
    defaultWorkloadCertTtl: formatSeconds(config.defaultWorkloadCertTtlSeconds),
    maxWorkloadCertTtl: formatSeconds(config.maxWorkloadCertTtlSeconds),
    maxInflightTokenReviews: config.maxInflightTokenReviews,
    maxCsrPerIdentityPerMinute: config.maxCsrPerIdentityPerMinute,
    ...(facts.workers !== undefined ? { workers: facts.workers } : {}),
  };
}

/** The one line that says the CA serves (tests and tools wait for it, and read the addresses from it). */
export function logReady(
  logger: Logger,
  config: CaServerConfig,
  signer: WorkloadSigner,
  facts: { grpcAddress: string; monitoringAddress: string; authenticators: readonly string[]; workers?: number },
): void {
  logger.info(
    {
      grpcAddress: facts.grpcAddress,
      monitoringAddress: facts.monitoringAddress,
      tls: !config.plaintext,
      trustDomain: config.trustDomain,
      ...(config.trustDomainAliases.length > 0 ? { trustDomainAliases: config.trustDomainAliases } : {}),
      keySource: signer.source,
      authenticators: facts.authenticators,
      serverDnsNames: config.plaintext ? [] : config.serverDnsNames,
      ...(facts.workers !== undefined ? { workers: facts.workers } : {}),
    },
    'CA server ready',
  );
}

/** Starts the monitoring HTTP server on --monitoring-addr, or fails with one line that names the flag. */
export async function startMonitoring(config: CaServerConfig, options: MonitoringOptions): Promise<FastifyInstance> {
  const monitoring = createMonitoringServer(options);
  try {
    await monitoring.listen({ host: config.monitoringAddress.host, port: config.monitoringAddress.port });
  } catch (error) {
    await monitoring.close().catch(() => undefined);
    throw listenError(config.monitoringAddress, 'the monitoring HTTP server', '--monitoring-addr', error);
  }
  return monitoring;
}

/** How the CA's pod caches (node impersonation) report trouble. */
export function podCacheOptions(logger: Logger): { onError: (clusterId: string, message: string) => void } {
  return { onError: (clusterId, message) => logger.warn({ clusterId, reason: message }, 'pod cache for node impersonation: retrying') };
}

export { tokenReviewAuthenticator, authenticatorNames, createAuthority } from './assembly.js';

export async function startCaServer(options: CaServerOptions): Promise<CaServer> {
  const { config, signer, logger } = options;
  routeGrpcLogs(logger);
  const env = options.env ?? process.env;
  const registry = options.registry ?? new Registry();
  // The process metrics may already be there when the registry is shared with the key source.
  if (!registry.getSingleMetric('process_cpu_user_seconds_total')) collectDefaultMetrics({ register: registry });
  const metrics = new CaMetrics(registry, options.now);
  const authority = createAuthority(config, signer, options.now);
  const worker = options.worker;
  // A worker's primary has read the kubeconfigs and makes every API call; the worker needs only the cluster IDs.
  const clusters = worker
    ? KubeClusters.idsOnly(config.clusterId, config.kubeconfigs.map((entry) => entry.clusterId))
    : await buildKubeClusters(config, env, logger);
  const chain = await buildAuthenticators(config, clusters, metrics, worker ? (clusterId, token) => worker.reviewToken(clusterId, token) : undefined);
  const impersonation = new NodeImpersonation({
    clusters,
    trustedNodeAccounts: config.trustedNodeAccounts,
    trustDomain: config.trustDomain,
    trustDomainAliases: config.trustDomainAliases,
    timeoutSeconds: config.tokenReviewTimeoutSeconds,
    // A worker's primary holds the pod caches (one watch per cluster, however many workers).
    ...(options.worker ? { nodeCheck: options.worker.checkNode } : { caches: podCacheOptions(logger) }),
  });

  const cleanups = new CleanupStack(logger);
  cleanups.push(() => clusters.close());
  cleanups.push(() => impersonation.close());

  try {
    metrics.publishSignerExpiries(signer);

    let serving: ServingCertificate | undefined;
    let credentials: grpc.ServerCredentials;
    if (config.plaintext) {
      logger.warn({ grpcAddress: config.grpcAddress.text }, 'serving the CA API WITHOUT TLS (--plaintext): for local debugging only; tokens travel in the clear');
      credentials = grpc.ServerCredentials.createInsecure();
    } else {
      serving = new ServingCertificate({
        signer,
        dnsNames: config.serverDnsNames,
        ttlSeconds: config.serverCertTtlSeconds,
        logger,
        ...(options.now ? { now: options.now } : {}),
      });
      await serving.start();
      cleanups.push(() => serving?.close());
      credentials = serving.credentials;
    }

    const readiness = new ReadinessProbe({ authority, trustDomain: config.trustDomain, logger, ...(options.now ? { now: options.now } : {}) });
    await readiness.start();
    cleanups.push(() => readiness.stop());
    const checkSigningTrustDomain = signingTrustDomainWarner(logger, config.trustDomain, config.trustDomainAliases);
    checkSigningTrustDomain(signer.status());
    const unsubscribe = signer.onChange(() => {
      metrics.publishSignerExpiries(signer);
      checkSigningTrustDomain(signer.status());
      void readiness.probe();
    });
    cleanups.push(unsubscribe);

    const inFlight = new InFlightCalls();
    // channelz keeps per-call bookkeeping that nothing here reads.
    const grpcServer = new grpc.Server({ 'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE_BYTES, 'grpc.enable_channelz': 0 });
    const rateLimiter = new PerIdentityRateLimiter({ perMinute: config.maxCsrPerIdentityPerMinute });
    const decisions = new DecisionRecord({ capacity: config.decisionRecordSize, ...(options.now ? { now: options.now } : {}) });
    grpcServer.addService(
      istioCaService,
      createCaHandlers(
        {
          authority,
          authenticators: chain,
          impersonation,
          metrics,
          logger,
          rateLimiter,
          maxTtlSeconds: config.maxWorkloadCertTtlSeconds,
          decisions,
        },
        inFlight,
      ),
    );
    const watches = options.trustBundles
      ? new TrustBundleWatches({
          feed: options.trustBundles,
          logger,
          ...(options.maxTrustBundleWatches !== undefined ? { maxStreams: options.maxTrustBundleWatches } : {}),
        })
      : undefined;
    watches?.register(grpcServer);
    let grpcPort: number;
    try {
      grpcPort = await bindGrpc(grpcServer, formatHostPort(config.grpcAddress.host, config.grpcAddress.port), credentials);
    } catch (error) {
      watches?.close();
      grpcServer.forceShutdown();
      throw listenError(config.grpcAddress, 'the CA gRPC API', '--grpc-addr', error);
    }
    const graceMs = config.shutdownGraceSeconds * 1000;
    cleanups.push(async () => {
      const finished = new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve()));
      const waited = await Promise.race([
        Promise.all([finished, inFlight.idle()]).then(() => true),
        new Promise<false>((resolve) => setTimeout(() => resolve(false), graceMs).unref()),
      ]);
      if (!waited) logger.warn({ inFlight: inFlight.size, graceSeconds: config.shutdownGraceSeconds }, 'in-flight calls did not finish in time; closing them');
      grpcServer.forceShutdown();
    });
    // Runs before the shutdown above (the stack unwinds in reverse): watches never end on their own.
    if (watches) cleanups.push(() => watches.close());

    const grpcAddress = formatHostPort(config.grpcAddress.host, grpcPort);
    let monitoringPort = 0;
    let monitoringAddress = '';
    if (!options.worker) {
      const monitoring = await startMonitoring(config, {
        registry,
        ready: () => readiness.check(),
        debugInfo: () => describeCa(config, signer, { authenticators: chain.names, clusters: clusters.ids(), serving: serving?.current() }),
        ...(options.federationStatus ? { federation: options.federationStatus } : {}),
        decisions: (query) => decisions.query(query),
      });
      cleanups.push(() => monitoring.close());
      monitoringPort = (monitoring.server.address() as AddressInfo).port;
      monitoringAddress = formatHostPort(config.monitoringAddress.host, monitoringPort);
      logReady(logger, config, signer, { grpcAddress, monitoringAddress, authenticators: chain.names });
    }

    let closing: Promise<void> | undefined;
    return {
      grpcAddress,
      monitoringAddress,
      grpcPort,
      monitoringPort,
      authority,
      metrics,
      decisions,
      servingCertificate: () => serving,
      ...(impersonation.podCaches?.cache(config.clusterId) ? { localPodCache: impersonation.podCaches.cache(config.clusterId)! } : {}),
      close: () => (closing ??= cleanups.run()),
    };
  } catch (error) {
    await cleanups.run();
    throw error;
  }
}
