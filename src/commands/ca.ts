/** `meshca ca`: the CA server (Istio-compatible CreateCertificate over gRPC/TLS) until SIGTERM. */
import cluster from 'node:cluster';
import type { Command } from 'commander';
import { Registry } from 'prom-client';
import { openSigner } from '../ca/index.js';
import { startKubernetesPlugins, type RunningKubernetesPlugin } from '../ca/kubernetes/index.js';
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
    let server;
    try {
      server = config.workers > 1 ? await startCaCluster({ config, signer, logger, registry }) : await startCaServer({ config, signer, logger, registry });
    } catch (error) {
      await signer.close();
      throw error;
    }
    let kubernetesPlugins: RunningKubernetesPlugin | undefined;
    if (config.kubernetesPlugins.length > 0) {
      try {
        const kubeConfig = await loadKubeConfig(config.keySource.kubeconfigPath, process.env);
        kubernetesPlugins = await startKubernetesPlugins(config.kubernetesPlugins, {
          kubeConfig,
          signer,
          authority: createAuthority(config, signer),
          trustDomain: config.trustDomain,
          logger,
          registry,
        });
      } catch (error) {
        await server.close();
        await signer.close();
        throw error;
      }
    }
    const signal = await waitForShutdownSignal(logger);
    logger.info({ signal, graceSeconds: config.shutdownGraceSeconds }, 'shutting down: refusing new calls, finishing in-flight ones');
    await kubernetesPlugins?.close();
    await server.close();
    await signer.close();
    logger.info('CA server stopped');
    exitWhenIdle(0);
  });
}
