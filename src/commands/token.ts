/** `meshca token`: mint a development service-account token from the `meshca dev` JWT issuer. */
import type { Command } from 'commander';
import { DevTokenIssuer } from '../authn/dev-issuer.js';
import { readDuration } from '../config/env.js';
import { addFlag, readStateDir, STATE_DIR_FLAG } from '../config/flags.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface TokenFlags {
  namespace: string;
  serviceAccount: string;
  audience: string;
  ttl: string;
  stateDir?: string;
  init?: boolean;
}

export function registerTokenCommand(program: Command): void {
  const command = program
    .command('token')
    .description(COMMAND_DESCRIPTIONS.token)
    .requiredOption('--namespace <ns>', 'Kubernetes namespace of the service account')
    .requiredOption('--service-account <sa>', 'service account name')
    .option('--audience <list>', 'token audiences, comma-separated', 'istio-ca')
    .option('--ttl <duration>', 'token lifetime', '1h')
    .option('--init', 'create a new dev issuer in the state directory when it holds none (otherwise run `meshca dev` first)');
  // The dev issuer's key is in the state directory of `meshca dev`, so both read the same flag and variable.
  addFlag(command, STATE_DIR_FLAG);
  command.action(async (flags: TokenFlags) => {
    const ttlSeconds = readDuration(flags.ttl, {}, { flag: '--ttl' }, 3600, { min: 1, max: 366 * 86400 });
    const audiences = flags.audience
      .split(',')
      .map((a) => a.trim())
      .filter(Boolean);
    if (audiences.length === 0) throw new Error('--audience needs at least one audience');
    const stateDir = readStateDir(flags.stateDir, process.env);
    const issuer = flags.init ? await DevTokenIssuer.loadOrCreate(stateDir) : await DevTokenIssuer.load(stateDir);
    const token = await issuer.mint({ namespace: flags.namespace, serviceAccount: flags.serviceAccount, audiences, ttlSeconds });
    process.stdout.write(`${token}\n`);
  });
}
