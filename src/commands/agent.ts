/** `meshca agent`: the per-node SDS agent (see src/agent). */
import type { Command } from 'commander';
import { readAgentConfig, startAgent, type AgentFlags } from '../agent/index.js';
import { AGENT_FLAGS } from '../config/agent.js';
import { addFlag, addLogOptions, collect, commandLogger } from '../config/flags.js';
import { addUnsupportedIstioHelp, UNSUPPORTED_AGENT_VARIABLES, warnUnsupportedIstioVariables } from '../config/istio-unsupported.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface AgentCommandFlags extends AgentFlags {
  logLevel?: string;
  logFormat?: string;
}

export function registerAgentCommand(program: Command): void {
  const command = program.command('agent').description(COMMAND_DESCRIPTIONS.agent);
  for (const spec of Object.values(AGENT_FLAGS)) addFlag(command, spec, spec === AGENT_FLAGS.caHeader ? collect : undefined);
  addLogOptions(command);
  addUnsupportedIstioHelp(command, UNSUPPORTED_AGENT_VARIABLES);
  command
    .action(async (flags: AgentCommandFlags) => {
      const config = readAgentConfig(flags, process.env);
      const log = commandLogger(flags, process.env, 'agent');
      warnUnsupportedIstioVariables(UNSUPPORTED_AGENT_VARIABLES, process.env, log);
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
