/**
 * `meshca ca`'s start-up, in process, up to the point where it would listen: its flags parsed by its own
 * commander options, its configuration read and checked, its key source opened; the same order as
 * src/commands/ca.ts. For start-up refusals that differ only in the message: each file that uses this keeps
 * real-binary cases for what the command line adds (the exit code and `meshca: <message>` as the only line), which
 * every refusal thrown here goes through in the real binary.
 */
import { Command } from 'commander';
import { openSigner } from '../../src/ca/index.js';
import { ConfigError } from '../../src/config/env.js';
import { addCaServerOptions, assertCanAuthenticate, readCaServerConfig, type CaServerFlags } from '../../src/config/ca.js';
import { createLogger } from '../../src/log.js';
import { cleanEnv } from '../ca-helpers.js';

/** The error `meshca ca <args>` would exit with, under `env` (cleaned like a started CA's); fails if it starts. */
export async function caStartupError(args: string[], env: NodeJS.ProcessEnv): Promise<Error> {
  const program = new Command().exitOverride();
  let flags: CaServerFlags | undefined;
  addCaServerOptions(program.command('ca')).action((parsed: CaServerFlags) => {
    flags = parsed;
  });
  await program.parseAsync(['ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', ...args], { from: 'user' });
  if (!flags) throw new Error('commander did not run the ca action');
  const clean = cleanEnv(env);
  try {
    const config = readCaServerConfig(flags, clean);
    assertCanAuthenticate(config);
    const signer = await openSigner(config.keySource, createLogger({ level: 'silent', format: 'json' }), { env: clean });
    await signer.close();
  } catch (error) {
    if (error instanceof Error) return error;
    throw error;
  }
  throw new Error(`meshca ca ${args.join(' ')} would have started`);
}

/**
 * What the command line makes of `error` (src/cli.ts): the exit code (2 for a bad flag or variable, a usage error)
 * and the `meshca: <message>` it prints.
 */
export function cliOutcome(error: Error): { code: number; stderr: string } {
  const code = error instanceof ConfigError ? 2 : 'exitCode' in error && typeof error.exitCode === 'number' ? error.exitCode : 1;
  return { code, stderr: `meshca: ${error.message}\n` };
}
