/**
 * `meshca dev` (what `npm start` runs): the whole system on one machine with no Kubernetes. Components start in
 * order, each seeing what the earlier ones published (the CA's address, the root certificate), and stop in reverse
 * order on SIGTERM/SIGINT. Adding a component (e.g. the node agent) is one more entry in DEV_COMPONENTS.
 */
import * as path from 'node:path';
import type { Command } from 'commander';
import { Registry } from 'prom-client';
import { DEV_ISSUER, DevTokenIssuer } from '../authn/dev-issuer.js';
import { readAgentConfig, startAgent } from '../agent/index.js';
import { startConfiguredFederation, type TrustFederation } from '../ca/federation/index.js';
import { addKeySourceOptions, openSigner, type WorkloadSigner } from '../ca/index.js';
import { addFederationOptions, CA_SERVER_FLAGS, readCaServerConfig, type CaServerConfig, type CaServerFlags } from '../config/ca.js';
import { addFlag, addLogOptions, commandLogger, readStateDir } from '../config/flags.js';
import type { Env } from '../config/env.js';
import type { Logger } from '../log.js';
import { startCaServer } from '../server/index.js';
import { ensurePrivateDirectory, writeFileAtomic } from '../util/fs.js';
import { shellQuote } from '../util/shell.js';
import { exitWhenIdle, waitForShutdownSignal } from '../server/lifecycle.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

/** What the CA component publishes for the components after it. */
export interface DevCaInfo {
  /** host:port clients should dial (e.g. localhost:15012). */
  dialAddress: string;
  /** TLS server name to verify (a DNS SAN of the serving certificate). */
  serverName: string;
  rootCertPath: string;
  trustDomain: string;
  monitoringUrl: string;
  issuer: DevTokenIssuer;
}

export interface DevContext {
  stateDir: string;
  logger: Logger;
  env: Env;
  flags: DevFlags;
  /** Filled in by the CA component. */
  ca?: DevCaInfo;
}

export interface RunningDevComponent {
  /** Lines for the "where is everything" table: [label, value]. */
  summary: [string, string][];
  close(): Promise<void>;
}

export interface DevComponent {
  name: string;
  start(context: DevContext): Promise<RunningDevComponent>;
}

export interface DevFlags extends CaServerFlags {
  stateDir: string;
  sdsSocket?: string;
  statusAddr?: string;
}

const DEV_SERVER_NAME = 'localhost';

function dialHost(host: string): string {
  return host === '0.0.0.0' || host === '::' || host === '127.0.0.1' || host === '::1' || host === 'localhost' ? DEV_SERVER_NAME : host;
}

/** The CA with the self-signed root in the state directory, trusting the dev JWT issuer; no TokenReview. */
const devCaComponent: DevComponent = {
  name: 'ca',
  async start(context) {
    const { logger, flags, stateDir } = context;
    // The dev CA ignores cluster and issuer settings from the environment: it must work the same everywhere.
    const env: Env = { ...context.env, JWT_RULE: undefined, KUBECONFIG: undefined, KUBERNETES_SERVICE_HOST: undefined };
    const base = readCaServerConfig({ ...flags, plaintext: false, kubeconfig: [], jwtRule: undefined, serverDns: flags.serverDns ?? [] }, env);
    const issuer = await DevTokenIssuer.loadOrCreate(stateDir);
    const config: CaServerConfig = {
      ...base,
      plaintext: false,
      kubeconfigs: [],
      jwtRules: [issuer.jwtRule(base.tokenAudiences)],
      serverDnsNames: [...new Set([DEV_SERVER_NAME, ...base.serverDnsNames])],
      // Self-signed unless a key source was chosen explicitly on the command line.
      keySource: { ...base.keySource, source: flags.caSource ? base.keySource.source : 'self-signed', stateDir },
    };
    const registry = new Registry();
    const signer: WorkloadSigner = await openSigner(config.keySource, logger, { registry, env });
    let federation: TrustFederation;
    try {
      federation = await startConfiguredFederation(config, { stateDir, signer, logger, registry });
    } catch (error) {
      await signer.close();
      throw error;
    }
    let server;
    try {
      server = await startCaServer({
        config,
        signer,
        logger,
        env,
        registry,
        trustBundles: federation.feed,
        ...(federation.status ? { federationStatus: federation.status } : {}),
      });
    } catch (error) {
      await federation.close();
      await signer.close();
      throw error;
    }
    // The self-signed source keeps root-cert.pem in the state directory itself; other sources' bundles are
    // written next to it (and kept current) so that the agent and the example have one file to trust.
    let rootCertPath = path.resolve(stateDir, 'root-cert.pem');
    let stopBundleFile = (): void => undefined;
    if (signer.source !== 'self-signed') {
      rootCertPath = path.resolve(stateDir, 'trust-bundle.pem');
      const writeBundle = (): Promise<void> =>
        writeFileAtomic(rootCertPath, signer.trustBundlePem(), 0o644).catch((error: unknown) =>
          logger.warn({ err: (error as Error).message, file: rootCertPath }, 'cannot write the dev trust bundle'),
        );
      await ensurePrivateDirectory(stateDir);
      await writeBundle();
      stopBundleFile = signer.onChange(() => void writeBundle());
    }
    const host = dialHost(config.grpcAddress.host);
    const dialAddress = host.includes(':') ? `[${host}]:${server.grpcPort}` : `${host}:${server.grpcPort}`;
    const monitoringHost = config.monitoringAddress.host === '0.0.0.0' ? '127.0.0.1' : config.monitoringAddress.host;
    context.ca = {
      dialAddress,
      serverName: DEV_SERVER_NAME,
      rootCertPath,
      trustDomain: config.trustDomain,
      monitoringUrl: `http://${monitoringHost.includes(':') ? `[${monitoringHost}]` : monitoringHost}:${server.monitoringPort}`,
      issuer,
    };
    return {
      summary: [
        ['CA gRPC API (TLS)', `${dialAddress}  (listening on ${server.grpcAddress}, server name ${DEV_SERVER_NAME})`],
        ['monitoring HTTP', `${context.ca.monitoringUrl}  (/metrics /ready /healthz /debug/ca)`],
        ['trust domain', config.trustDomainAliases.length > 0 ? `${config.trustDomain}  (aliases ${config.trustDomainAliases.join(', ')})` : config.trustDomain],
        ['root certificate', context.ca.rootCertPath],
        ['dev JWT issuer', `${DEV_ISSUER}  (JWKS ${issuer.jwksPath})`],
        ...(federation.endpoint && config.bundleEndpoint
          ? [['SPIFFE bundle endpoint', `https://${dialHost(config.bundleEndpoint.address.host)}:${federation.endpoint.port}/  (${config.bundleEndpoint.profile.kind})`] as [string, string]]
          : []),
        ...config.federation.targets.map((target): [string, string] => [
          'federated with',
          `${target.trustDomain}  (${target.source.kind === 'endpoint' ? `${target.source.url.href}, ${target.source.profile.kind}` : target.source.path})`,
        ]),
      ],
      close: async () => {
        stopBundleFile();
        await server.close();
        await federation.close();
        await signer.close();
      },
    };
  },
};

/** The node agent, serving SDS on a socket in the state directory and getting certificates from the dev CA. */
const devAgentComponent: DevComponent = {
  name: 'agent',
  async start(context) {
    const ca = context.ca!;
    const socket = context.flags.sdsSocket ?? path.join(context.stateDir, 'sds.sock');
    // Node mode: each workload proves itself with its own token on the SDS stream, as with a DaemonSet.
    const config = readAgentConfig(
      {
        mode: 'node',
        sdsSocket: socket,
        caAddr: ca.dialAddress,
        caRootCert: ca.rootCertPath,
        statusAddr: context.flags.statusAddr ?? '127.0.0.1:15020',
        trustDomain: ca.trustDomain,
      },
      { ...context.env, ISTIOD_SAN: ca.serverName, OUTPUT_CERTS: undefined },
    );
    const agent = await startAgent(config, context.logger.child({ component: 'agent' }));
    return {
      summary: [
        ['SDS socket (agent)', socket],
        ['agent status HTTP', `${agent.statusUrl}  (/healthz/ready /metrics)`],
      ],
      close: () => agent.close(),
    };
  },
};

/** Components in start order. */
const DEV_COMPONENTS: DevComponent[] = [devCaComponent, devAgentComponent];

/** The copy-paste example: a token from the dev issuer, a certificate for it, and a look at the result. */
function exampleCommands(context: DevContext, cli: string): string[] {
  const ca = context.ca!;
  const state = context.stateDir;
  const tokenFile = path.join(state, 'demo.jwt');
  const outDir = path.join(state, 'demo');
  const q = shellQuote;
  const stateArgs = path.resolve(state) === path.resolve('./.meshca') ? '' : ` --state-dir ${q(state)}`;
  const serverName = ca.dialAddress.startsWith(`${ca.serverName}:`) ? '' : ` --server-name ${ca.serverName}`;
  return [
    `${cli} token --namespace default --service-account demo${stateArgs} > ${q(tokenFile)}`,
    `${cli} request --ca-addr ${ca.dialAddress}${serverName} --root-cert ${q(ca.rootCertPath)} --token-file ${q(tokenFile)} --out ${q(outDir)}`,
    `${cli} inspect ${q(path.join(outDir, 'cert-chain.pem'))} --roots ${q(path.join(outDir, 'root-cert.pem'))}`,
  ];
}

/** The same identity through the node agent, as an Envoy would get it over SDS. */
function sdsExampleCommands(context: DevContext, cli: string): string[] {
  const socket = context.flags.sdsSocket ?? path.join(context.stateDir, 'sds.sock');
  const q = shellQuote;
  return [`${cli} fetch --sds-socket ${q(socket)} --token-file ${q(path.join(context.stateDir, 'demo.jwt'))} --resource default --resource ROOTCA`];
}

export function registerDevCommand(program: Command): void {
  const command = program
    .command('dev')
    .description(COMMAND_DESCRIPTIONS.dev);
  addKeySourceOptions(command);
  if (!command.options.some((o) => o.long === '--trust-domain')) addFlag(command, CA_SERVER_FLAGS.trustDomain);
  addFlag(command, CA_SERVER_FLAGS.trustDomainAliases);
  addFederationOptions(command);
  addLogOptions(command);
  command
    .option('--grpc-addr <host:port>', 'CA gRPC listen address', '127.0.0.1:15012')
    .option('--monitoring-addr <host:port>', 'monitoring HTTP listen address', '127.0.0.1:15014')
    .option('--sds-socket <path>', 'SDS socket of the node agent (default <state-dir>/sds.sock)')
    .option('--status-addr <host:port>', 'status HTTP address of the node agent', '127.0.0.1:15020')
    .option('--server-dns <names>', 'extra DNS names for the CA serving certificate (localhost is always included)', (v: string, p: string[] | undefined) => [...(p ?? []), v])
    .action(async (flags: DevFlags) => {
      const stateDir = readStateDir(flags.stateDir, process.env);
      const logger = commandLogger(flags, process.env, 'meshca-dev');
      const context: DevContext = { stateDir, logger, env: process.env, flags: { ...flags, stateDir } };
      const running: { name: string; component: RunningDevComponent }[] = [];
      const stopAll = async (): Promise<void> => {
        for (const { name, component } of running.splice(0).reverse()) {
          try {
            await component.close();
          } catch (error) {
            logger.warn({ component: name, err: (error as Error).message }, 'error while stopping a dev component');
          }
        }
      };
      try {
        for (const component of DEV_COMPONENTS) running.push({ name: component.name, component: await component.start(context) });
      } catch (error) {
        await stopAll();
        throw error;
      }
      const script = path.resolve(process.argv[1] ?? 'dist/cli.js');
      const relative = path.relative(process.cwd(), script);
      const cli = `node ${shellQuote(relative.startsWith('..') ? script : relative)}`;
      const rows = running.flatMap(({ component }) => component.summary);
      const width = Math.max(...rows.map(([label]) => label.length));
      const lines = [
        '',
        'meshca dev is running (Ctrl-C to stop)',
        '',
        ...rows.map(([label, value]) => `  ${label.padEnd(width)}  ${value}`),
        '',
        `Get a certificate for spiffe://${context.ca!.trustDomain}/ns/default/sa/demo:`,
        '',
        ...exampleCommands(context, cli).map((line) => `  ${line}`),
        '',
        'The same identity over SDS from the node agent, as Envoy gets it (key, chain and trust bundle):',
        '',
        ...sdsExampleCommands(context, cli).map((line) => `  ${line}`),
        '',
      ];
      process.stdout.write(lines.join('\n') + '\n');
      logger.info({ components: running.map((r) => r.name) }, 'meshca dev ready');
      const signal = await waitForShutdownSignal(logger);
      logger.info({ signal }, 'shutting down meshca dev');
      await stopAll();
      logger.info('meshca dev stopped');
      exitWhenIdle(0);
    });
}
