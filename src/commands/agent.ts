/** `meshca agent`: the per-node SDS agent (see src/agent). */
import type { Command } from 'commander';
import { readAgentConfig, startAgent, type AgentFlags } from '../agent/index.js';
import { DEFAULT_SDS_SOCKET, DEFAULT_STATUS_ADDR, DEFAULT_TOKEN_FILE, DEFAULT_CA_ROOT_CERT, DEFAULT_CA_ADDR, DEFAULT_SIDECAR_FILE_RESOURCE_DIRS } from '../config/agent.js';
import { readEnum } from '../config/env.js';
import { createLogger, LOG_LEVELS } from '../log.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface AgentCommandFlags extends AgentFlags {
  logLevel?: string;
}

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description(COMMAND_DESCRIPTIONS.agent)
    .option('--mode <mode>', 'node (default): every workload sends its own token on the stream; sidecar: one workload, token from --token-file (env MESHCA_AGENT_MODE)')
    .option('--sds-socket <path>', `SDS Unix socket (default ${DEFAULT_SDS_SOCKET})`)
    .option(
      '--sds-socket-mode <mode>',
      'file mode of the socket, octal (default 0666 like Istio: Envoys run as other users; every call proves a workload with its own token, ' +
        'and a token that is not an unexpired JWT costs no key or CA call). 0660 narrows it to the agent\'s group, if every Envoy shares it',
    )
    .option('--token-file <file>', `sidecar mode: the workload's service-account token, re-read for every CSR (default ${DEFAULT_TOKEN_FILE})`)
    .option('--idle-secret-ttl <duration>', 'drop a cached identity this long after its last stream ends (default 5m)')
    .option('--key-pool-size <n>', 'pre-generated keys kept ready (default 2)')
    .option('--ca-addr <host:port>', `CA address (env CA_ADDR, default ${DEFAULT_CA_ADDR})`)
    .option('--ca-root-cert <file>', `root certificate that verifies the CA's TLS (default ${DEFAULT_CA_ROOT_CERT})`)
    .option('--secret-ttl <duration>', 'requested certificate lifetime (env SECRET_TTL, default 24h)')
    .option('--output-certs <dir>', 'sidecar mode: also write key.pem, cert-chain.pem, root-cert.pem here (env OUTPUT_CERTS)')
    .option('--status-addr <host:port>', `status HTTP server: /healthz/ready, /metrics (default ${DEFAULT_STATUS_ADDR})`)
    .option('--file-resource-dirs <dirs>', `comma list of directories file-cert:/file-root: resources may read (env MESHCA_FILE_RESOURCE_DIRS; node mode default: none; sidecar: ${DEFAULT_SIDECAR_FILE_RESOURCE_DIRS.join(',')})`)
    .option('--trust-domain <domain>', 'trust domain expected in CSRs (env TRUST_DOMAIN, default cluster.local)')
    .option('--log-level <level>', `log level: ${LOG_LEVELS.join(', ')} (env MESHCA_LOG_LEVEL)`)
    .action(async (flags: AgentCommandFlags) => {
      const config = readAgentConfig(flags, process.env);
      const level = readEnum(flags.logLevel, process.env, { flag: '--log-level', env: 'MESHCA_LOG_LEVEL' }, LOG_LEVELS, 'info');
      const log = createLogger({ level, name: 'agent' });
      const agent = await startAgent(config, log);
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, 'shutting down');
        void agent.close().then(() => process.exit(0));
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });
}
