/**
 * TEMPORARY (poller branch only): the `bundle` group with `list` and `set`, so the poller's tests can run them
 * through the CLI before the (endpoint) helper's src/commands/bundle.ts exists. Drop this file and its cli.ts /
 * descriptions.ts lines at merge: bundle.ts calls registerBundleList and registerBundleSet instead.
 */
import type { Command } from 'commander';
import { registerBundleList } from './bundle-list.js';
import { registerBundleSet } from './bundle-set.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

export function registerBundleCommand(program: Command): void {
  const group = program.command('bundle').description(COMMAND_DESCRIPTIONS.bundle);
  registerBundleList(group);
  registerBundleSet(group);
}
