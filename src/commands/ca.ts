/** `meshca ca`: the CA server (Istio-compatible CreateCertificate over gRPC/TLS) until SIGTERM. */
import cluster from 'node:cluster';
import type { Command } from 'commander';
import { Counter, Registry } from 'prom-client';
import { openSigner } from '../ca/index.js';
import type { KubeConfig } from '@kubernetes/client-node';
import { kubePodSource, PodCache, whyPodIsNotLive } from '../authn/index.js';
import type { IssuanceRecord } from '../ca/kubernetes/audit.js';
import { startConfiguredFederation, type TrustFederation } from '../ca/federation/index.js';
import { startKubernetesPlugins, type PodLookup, type RunningKubernetesPlugin } from '../ca/kubernetes/index.js';
import { kubeClient } from '../kube/client.js';
import type { Logger } from '../log.js';
import { addCaServerOptions, assertCanAuthenticate, readCaServerConfig, type CaServerFlags } from '../config/ca.js';
import { addUnsupportedIstioHelp, UNSUPPORTED_CA_VARIABLES, warnUnsupportedIstioVariables } from '../config/istio-unsupported.js';
import { createLogger } from '../log.js';
import { createAuthority, startCaServer } from '../server/index.js';
import { loadKubeConfig } from '../kube/config.js';
import { startCaCluster, WORKER_SLOT_ENV } from '../server/cluster-primary.js';
import { runCaWorker } from '../server/cluster-worker.js';
import { exitWhenIdle, waitForShutdownSignal } from '../server/lifecycle.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

/**
 * A raw file-system error (ENOSPC, EROFS, ...) while the key source sets up its state says only what failed, not
 * where or what to do: restate it as one line naming the state directory and the fix. Errors that already
 * explain themselves (configuration and key-source errors) pass through unchanged.
 */
function describeStateFailure(error: unknown, stateDir: string): unknown {
  if (!(error instanceof Error) || !('syscall' in error) || !('code' in error)) return error;
  const where = `the CA state directory ${stateDir}`;
  switch (error.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new Error(`cannot write to ${where}: no space left on the device (${error.code}); free some space or set --state-dir to a directory with room`, {
        cause: error,
      });
    case 'EROFS':
      return new Error(`cannot write to ${where}: the file system is read-only (EROFS); set --state-dir to a writable directory`, { cause: error });
    case 'EACCES':
    case 'EPERM':
      return new Error(`cannot use ${where}: ${error.message}; give the CA's user access to it or set --state-dir`, { cause: error });
    default:
      return error;
  }
}

/**
 * The pods the CA's Kubernetes plugins look up: node impersonation's cache of the local cluster when it runs one
 * (one watch for both), else a cache of their own, whose list and watch start on the first look-up.
 */
function pluginPods(shared: PodCache | undefined, kubeConfig: KubeConfig, clusterId: string, logger: Logger): { pods: PodLookup; close(): void } {
  const cache =
    shared ??
    new PodCache({
      source: kubePodSource(kubeConfig.makeApiClient(kubeClient().CoreV1Api), kubeConfig),
      clusterId,
      onError: (message) => logger.warn({ clusterId, reason: message }, 'pod cache for the Kubernetes plugins: retrying'),
    });
  return {
    pods: {
      whenReady: (timeoutMs) => {
        cache.start();
        return cache.whenReady(timeoutMs);
      },
      lookup: (namespace, name) => {
        const pod = cache.byName(namespace, name);
        return pod && { uid: pod.uid, serviceAccount: pod.serviceAccount, nodeName: pod.nodeName, notLive: whyPodIsNotLive(pod) };
      },
    },
    close: () => {
      if (!shared) cache.stop();
    },
  };
}

/**
 * The audit line and count of a certificate a Kubernetes plugin issued: the same message, `audit: true` and
 * counter (citadel_server_success_cert_issuance_count, on the shared registry) as CreateCertificate's.
 */
function issuanceAuditor(logger: Logger, registry: Registry): (record: IssuanceRecord) => void {
  return (record) => {
    logger.info({ audit: true, ...record }, 'certificate issued');
    const counter = registry.getSingleMetric('citadel_server_success_cert_issuance_count');
    if (counter instanceof Counter) counter.inc();
  };
}

export function registerCaCommand(program: Command): void {
  const command = program
    .command('ca')
    .description(COMMAND_DESCRIPTIONS.ca);
  addCaServerOptions(command);
  addUnsupportedIstioHelp(command, UNSUPPORTED_CA_VARIABLES);
  command.action(async (flags: CaServerFlags) => {
    const config = readCaServerConfig(flags, process.env);
    assertCanAuthenticate(config);
    const logger = createLogger({ level: config.logLevel, format: config.logFormat, name: 'meshca-ca' });
    // One registry for the key source's metrics and the server's.
    const registry = new Registry();
    if (cluster.isWorker) {
      // A worker forked by the primary of `--workers N`: it serves the gRPC API only.
      await runCaWorker({ config, logger: logger.child({ worker: Number(process.env[WORKER_SLOT_ENV]) }), registry });
      return;
    }
    warnUnsupportedIstioVariables(UNSUPPORTED_CA_VARIABLES, process.env, logger);
    let signer;
    try {
      signer = await openSigner(config.keySource, logger, { registry });
    } catch (error) {
      throw describeStateFailure(error, config.keySource.stateDir);
    }
    let federation: TrustFederation;
    try {
      federation = await startConfiguredFederation(config, { stateDir: config.keySource.stateDir, signer, logger, registry });
    } catch (error) {
      await signer.close();
      throw error;
    }
    let server;
    try {
      const serverOptions = { config, signer, logger, registry, trustBundles: federation.feed, ...(federation.status ? { federationStatus: federation.status } : {}) };
      server = config.workers > 1 ? await startCaCluster(serverOptions) : await startCaServer(serverOptions);
    } catch (error) {
      await federation.close();
      await signer.close();
      throw error;
    }
    let kubernetesPlugins: RunningKubernetesPlugin | undefined;
    let pluginPodCache: { close(): void } | undefined;
    if (config.kubernetesPlugins.length > 0) {
      try {
        const kubeConfig = await loadKubeConfig(config.keySource.kubeconfigPath, process.env);
        const { pods, close } = pluginPods(server.localPodCache, kubeConfig, config.clusterId, logger);
        pluginPodCache = { close };
        kubernetesPlugins = await startKubernetesPlugins(config.kubernetesPlugins, {
          kubeConfig,
          signer,
          authority: createAuthority(config, signer),
          trustDomain: config.trustDomain,
          logger,
          registry,
          pods,
          recordIssued: issuanceAuditor(logger, registry),
        });
      } catch (error) {
        pluginPodCache?.close();
        await server.close();
        await federation.close();
        await signer.close();
        throw error;
      }
    }
    const signal = await waitForShutdownSignal(logger);
    logger.info({ signal, graceSeconds: config.shutdownGraceSeconds }, 'shutting down: refusing new calls, finishing in-flight ones');
    await kubernetesPlugins?.close();
    pluginPodCache?.close();
    await server.close();
    await federation.close();
    await signer.close();
    logger.info('CA server stopped');
    exitWhenIdle(0);
  });
}
