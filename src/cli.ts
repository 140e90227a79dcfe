#!/usr/bin/env node
/**
 * meshca command line. Each command is wired in its own module under src/commands/; this file only
 * assembles them and turns start-up errors into one clear line and a non-zero exit.
 */
import { Command, CommanderError } from 'commander';
import { registerInspectCommand } from './commands/inspect.js';
import { registerCacertsCommand } from './commands/cacerts.js';
import { registerAgentCommand } from './commands/agent.js';
import { registerFetchCommand } from './commands/fetch.js';
import { registerCaCommand } from './commands/ca.js';
import { registerTokenCommand } from './commands/token.js';
import { registerDevCommand } from './commands/dev.js';
import { registerRequestCommand } from './commands/request.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('meshca')
    .description('Certificate authority and workload-identity service for service meshes (Istio-compatible)')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)');
  registerInspectCommand(program);
  registerCacertsCommand(program);
  registerAgentCommand(program);
  registerFetchCommand(program);
  registerCaCommand(program);
  registerTokenCommand(program);
  registerDevCommand(program);
  registerRequestCommand(program);
  return program;
}

/** Prints `meshca: <message>` and exits non-zero. Stack traces only with MESHCA_DEBUG=1. */
export function exitWithError(error: unknown): never {
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`meshca: ${message}\n`);
  if (process.env.MESHCA_DEBUG === '1' && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exit(error instanceof Error && 'exitCode' in error && typeof error.exitCode === 'number' ? error.exitCode : 1);
}

const program = buildProgram();
program.exitOverride();
program.parseAsync(process.argv).catch((error: unknown) => {
  if (error instanceof CommanderError) process.exit(error.exitCode);
  exitWithError(error);
});
