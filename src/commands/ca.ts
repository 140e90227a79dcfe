/** `meshca ca`: the CA server (Istio-compatible CreateCertificate over gRPC/TLS) until SIGTERM. */
import type { Command } from 'commander';
import { Registry } from 'prom-client';
import { openSigner } from '../ca/index.js';
import { addCaServerOptions, assertCanAuthenticate, readCaServerConfig, type CaServerFlags } from '../config/ca.js';
import { createLogger } from '../log.js';
import { startCaServer } from '../server/index.js';
import { exitWhenIdle, waitForShutdownSignal } from '../server/lifecycle.js';

export function registerCaCommand(program: Command): void {
  const command = program
    .command('ca')
    .description('run the CA server: Istio-compatible CreateCertificate over gRPC/TLS, authenticated by client certs, TokenReview and JWT');
  addCaServerOptions(command);
  command.action(async (flags: CaServerFlags) => {
    const config = readCaServerConfig(flags, process.env);
    assertCanAuthenticate(config);
    const logger = createLogger({ level: config.logLevel, name: 'meshca-ca' });
    // One registry for the key source's metrics and the server's.
    const registry = new Registry();
    const signer = await openSigner(config.keySource, logger, { registry });
    let server;
    try {
      server = await startCaServer({ config, signer, logger, registry });
    } catch (error) {
      await signer.close();
      throw error;
    }
    const signal = await waitForShutdownSignal(logger);
    logger.info({ signal, graceSeconds: config.shutdownGraceSeconds }, 'shutting down: refusing new calls, finishing in-flight ones');
    await server.close();
    await signer.close();
    logger.info('CA server stopped');
    exitWhenIdle(0);
  });
}
