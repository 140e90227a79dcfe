#!/usr/bin/env node
/**
 * meshca command line. Each command is wired in its own module under src/commands/; this file only
 * assembles them and turns start-up errors into one clear line and a non-zero exit.
 */
import { Command, CommanderError } from 'commander';
import { COMMAND_DESCRIPTIONS, type CommandName } from './commands/descriptions.js';
import { ConfigError } from './config/env.js';
import { buildInfo } from './util/build-info.js';

/**
 * Exit status of a usage error: an unknown option or command, a missing argument, a bad flag or environment value.
 * 2, as getopt-based tools use, so scripts can tell "you called it wrong" from "it ran and failed" (1).
 */
const USAGE_ERROR_EXIT = 2;

type Register = (program: Command) => void;

/** Each command's module, loaded only when that command runs (or its own --help is asked for). */
const COMMAND_MODULES: Record<CommandName, () => Promise<Register>> = {
  inspect: async () => (await import('./commands/inspect.js')).registerInspectCommand,
  cacerts: async () => (await import('./commands/cacerts.js')).registerCacertsCommand,
  agent: async () => (await import('./commands/agent.js')).registerAgentCommand,
  fetch: async () => (await import('./commands/fetch.js')).registerFetchCommand,
  ca: async () => (await import('./commands/ca.js')).registerCaCommand,
  token: async () => (await import('./commands/token.js')).registerTokenCommand,
  dev: async () => (await import('./commands/dev.js')).registerDevCommand,
  request: async () => (await import('./commands/request.js')).registerRequestCommand,
  completion: async () => (await import('./commands/completion.js')).registerCompletionCommand,
  version: async () => (await import('./commands/version.js')).registerVersionCommand,
  secrets: async () => (await import('./commands/secrets.js')).registerSecretsCommand,
  decisions: async () => (await import('./commands/decisions.js')).registerDecisionsCommand,
  status: async () => (await import('./commands/status.js')).registerStatusCommand,
  bundle: async () => (await import('./commands/bundle.js')).registerBundleCommand,
};

function isCommandName(name: string | undefined): name is CommandName {
  return name !== undefined && Object.hasOwn(COMMAND_MODULES, name);
}

/**
 * The program for `argv`: the command being run is loaded whole; the others are only named (with their
 * descriptions, for `meshca --help`), so that a node agent does not carry the CA's modules in memory.
 */
async function buildProgram(argv: readonly string[] = process.argv): Promise<Command> {
  const program = new Command();
  program
    .name('meshca')
    .description('Certificate authority and workload-identity service for service meshes (Istio-compatible)')
    // The package version, as `meshca version` prints it (with the commit and Node.js version).
    .version(buildInfo().version)
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', '\nEnvironment:\n  MESHCA_DEBUG=1  print the stack trace of an error after its one-line message')
    // Before the commands are added, so that they inherit it: parse errors throw instead of exiting with 1.
    .exitOverride();
  const words = argv.slice(2).filter((word) => !word.startsWith('-'));
  // `meshca help agent` shows the agent's own help, so it needs the agent's options.
  const invoked = words[0] === 'help' ? words[1] : words[0];
  // `meshca completion` lists every command's options, so it loads them all.
  const loadAll = invoked === 'completion';
  for (const name of Object.keys(COMMAND_MODULES) as CommandName[]) {
    if (loadAll || (isCommandName(invoked) && name === invoked)) (await COMMAND_MODULES[name]())(program);
    else program.command(name).description(COMMAND_DESCRIPTIONS[name]);
  }
  return program;
}

/** Prints `meshca: <message>` and exits non-zero. Stack traces only with MESHCA_DEBUG=1. */
function exitWithError(error: unknown, code?: number): never {
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`meshca: ${message}\n`);
  if (process.env.MESHCA_DEBUG === '1' && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exit(code ?? (error instanceof Error && 'exitCode' in error && typeof error.exitCode === 'number' ? error.exitCode : 1));
}

/**
 * Node's warnings are for developers: a DeprecationWarning comes from a dependency (grpc-js sets an IP address as the
 * TLS server name, DEP0123) and asks nothing of the user, so it is dropped unless MESHCA_DEBUG=1. Any other warning
 * is shown once, as one line.
 */
function quietWarnings(): void {
  if (process.env.MESHCA_DEBUG === '1') return;
  process.removeAllListeners('warning');
  const shown = new Set<string>();
  process.on('warning', (warning: Error & { code?: string }) => {
    if (warning.name === 'DeprecationWarning') return;
    const line = `meshca: warning: ${warning.name}${warning.code ? ` ${warning.code}` : ''}: ${warning.message.replace(/\s*\n\s*/g, ' ')}`;
    if (shown.has(line)) return;
    shown.add(line);
    process.stderr.write(`${line}\n`);
  });
}

quietWarnings();
buildProgram(process.argv)
  .then((program) => program.parseAsync(process.argv))
  .catch((error: unknown) => {
    // Commander has printed its message; exit code 0 is --help or --version, anything else a usage error.
    if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : USAGE_ERROR_EXIT);
    exitWithError(error, error instanceof ConfigError ? USAGE_ERROR_EXIT : undefined);
  });
