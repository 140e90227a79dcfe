/**
 * PROTOTYPE (bench only): `meshca ca` exactly as src/commands/ca.ts runs it, except that the signer is wrapped
 * in WorkerPoolSigner so leaves are built and signed on worker threads. Same flags; the thread count comes from
 * MESHCA_BENCH_SIGNING_THREADS (default: cores - 1).
 *
 *   node --import tsx bench/proto-ca.ts --ca-key-type rsa-2048 --kubeconfig ... --grpc-addr 127.0.0.1:0
 */
import { Command } from 'commander';
import { Registry } from 'prom-client';
import { LocalSigner } from '../src/ca/local-signer.js';
import { openSigner } from '../src/ca/index.js';
import { addCaServerOptions, assertCanAuthenticate, readCaServerConfig, type CaServerFlags } from '../src/config/ca.js';
import { createLogger } from '../src/log.js';
import { startCaServer } from '../src/server/index.js';
import { exitWhenIdle, waitForShutdownSignal } from '../src/server/lifecycle.js';
import { WorkerPoolSigner } from './worker-pool-signer.js';

const program = new Command('proto-ca');
addCaServerOptions(program);
program.action(async (flags: CaServerFlags) => {
  const config = readCaServerConfig(flags, process.env);
  assertCanAuthenticate(config);
  const logger = createLogger({ level: config.logLevel, name: 'meshca-ca' });
  const registry = new Registry();
  const inner = await openSigner(config.keySource, logger, { registry });
  if (!(inner instanceof LocalSigner)) throw new Error('the worker-thread prototype needs a local key source');
  const threads = process.env.MESHCA_BENCH_SIGNING_THREADS ? Number(process.env.MESHCA_BENCH_SIGNING_THREADS) : undefined;
  const signer = new WorkerPoolSigner(inner, threads);
  logger.info({ signingThreads: signer.threads }, 'prototype: signing on worker threads');
  const server = await startCaServer({ config, signer, logger, registry });
  const signal = await waitForShutdownSignal(logger);
  logger.info({ signal }, 'shutting down');
  await server.close();
  await signer.close();
  logger.info('CA server stopped');
  exitWhenIdle(0);
});
program.parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`proto-ca: ${(error as Error).message}\n`);
  process.exit(1);
});
