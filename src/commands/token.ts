/** `meshca token`: mint a development service-account token from the `meshca dev` JWT issuer. */
import type { Command } from 'commander';
import { DevTokenIssuer } from '../authn/dev-issuer.js';
import { readDuration } from '../config/env.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface TokenFlags {
  namespace: string;
  serviceAccount: string;
  audience: string;
  ttl: string;
  stateDir: string;
}

export function registerTokenCommand(program: Command): void {
  program
    .command('token')
    .description(COMMAND_DESCRIPTIONS.token)
    .requiredOption('--namespace <ns>', 'Kubernetes namespace of the service account')
    .requiredOption('--service-account <sa>', 'service account name')
    .option('--audience <list>', 'token audiences, comma-separated', 'istio-ca')
    .option('--ttl <duration>', 'token lifetime', '1h')
    .option('--state-dir <dir>', 'state directory holding the dev issuer key (shared with `meshca dev`)', './.meshca')
    .action(async (flags: TokenFlags) => {
      const ttlSeconds = readDuration(flags.ttl, {}, { flag: '--ttl' }, 3600, { min: 1, max: 366 * 86400 });
      const audiences = flags.audience
        .split(',')
        .map((a) => a.trim())
        .filter(Boolean);
      if (audiences.length === 0) throw new Error('--audience needs at least one audience');
      const issuer = await DevTokenIssuer.loadOrCreate(flags.stateDir);
      const token = await issuer.mint({ namespace: flags.namespace, serviceAccount: flags.serviceAccount, audiences, ttlSeconds });
      process.stdout.write(`${token}\n`);
    });
}
