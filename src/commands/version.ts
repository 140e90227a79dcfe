/** `meshca version`: which build this is (the same facts as the `meshca_build_info` metric). */
import type { Command } from 'commander';
import { buildInfo } from '../util/build-info.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

export function registerVersionCommand(program: Command): void {
  program
    .command('version')
    .description(COMMAND_DESCRIPTIONS.version)
    .option('--json', 'print one JSON object ({"version", "commit", "nodeVersion"}) instead of lines')
    .action((flags: { json?: boolean }) => {
      const info = buildInfo();
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify(info)}\n`);
        return;
      }
      process.stdout.write(`version: ${info.version}\ncommit: ${info.commit}\nnode: ${info.nodeVersion}\n`);
    });
}
