/**
 * `meshca bundle set <trust-domain> --file <bundle.json|pem>`: makes a bundle the one kept for a federated trust
 * domain in `<state-dir>/federation/<trust-domain>.json`, after the same checks a fetched bundle meets. A running
 * CA re-reads that file every 5 seconds and uses the new bundle at once, whatever its sequence: this is how an admin
 * gives an https_spiffe endpoint its first bundle, or recovers from a trust domain whose sequence went back.
 */
import type { Command } from 'commander';
import { FILE_CHECK_INTERVAL_MS, persistedBundlePath, readBundleFile, readPersistedBundle, writePersistedBundle } from '../ca/federation/bundle-store.js';
import { ConfigError } from '../config/env.js';
import { addFlag, readStateDir, STATE_DIR_FLAG } from '../config/flags.js';
import { validateTrustDomain } from '../pki/index.js';

export function authorityCount(n: number): string {
  return `${n} ${n === 1 ? 'authority' : 'authorities'}`;
}

export function registerBundleSet(group: Command): void {
  const command = group
    .command('set')
    .description("make a file's bundle (SPIFFE bundle JSON or PEM) the one kept for a federated trust domain; a running CA picks it up within 5s")
    .argument('<trust-domain>', 'the federated trust domain, e.g. other.example')
    .requiredOption('--file <bundle>', 'the bundle: SPIFFE bundle JSON (e.g. from meshca bundle show) or PEM CA certificates');
  addFlag(command, STATE_DIR_FLAG);
  command.action(async (trustDomain: string, flags: { file: string; stateDir?: string }) => {
    try {
      validateTrustDomain(trustDomain);
    } catch (error) {
      throw new ConfigError(`invalid trust domain "${trustDomain}": ${(error as Error).message}`);
    }
    const stateDir = readStateDir(flags.stateDir, process.env);
    const bundle = await readBundleFile(trustDomain, flags.file);
    const previous = await readPersistedBundle(stateDir, trustDomain).catch(() => undefined);
    await writePersistedBundle(stateDir, bundle, 'set', new Date());
    const sequence = bundle.sequence === undefined ? 'no sequence' : `sequence ${bundle.sequence}`;
    const replaced = previous ? `, replacing ${previous.bundle.sequence === undefined ? 'a bundle without sequence' : `sequence ${previous.bundle.sequence}`} (${previous.origin})` : '';
    process.stdout.write(
      `${trustDomain}: ${authorityCount(bundle.x509Authorities.length)}, ${sequence}, written to ${persistedBundlePath(stateDir, trustDomain)}${replaced}; a running CA federating with ${trustDomain} uses it within ${FILE_CHECK_INTERVAL_MS / 1000}s\n`,
    );
  });
}
