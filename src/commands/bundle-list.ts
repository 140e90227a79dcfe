/**
 * `meshca bundle list`: the federated bundles kept in the state directory (`<state-dir>/federation/`): for each
 * trust domain, where its bundle came from (fetched from its endpoint, or `meshca bundle set`), its sequence, its
 * authorities and its age. It reads the files, so it works whether the CA runs or not; the running CA's live view
 * (with the last error and the next refresh) is its /debug/federation.
 */
import type { Command } from 'commander';
import { listPersistedBundles, federationDir } from '../ca/federation/bundle-store.js';
import { fingerprint } from '../ca/index.js';
import { addFlag, readStateDir, STATE_DIR_FLAG } from '../config/flags.js';
import { formatTable } from './decisions.js';

/** A short age for humans: 42s, 5m, 3h12m, 2d4h. */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${s % 3600 >= 60 ? `${Math.floor((s % 3600) / 60)}m` : ''}`;
  return `${Math.floor(s / 86400)}d${s % 86400 >= 3600 ? `${Math.floor((s % 86400) / 3600)}h` : ''}`;
}

export function registerBundleList(group: Command): void {
  const command = group.command('list').description('list the federated bundles kept in the state directory: trust domain, origin, sequence, authorities, age');
  addFlag(command, STATE_DIR_FLAG);
  command.option('--json', 'print one JSON document, each authority with its subject, expiry and SHA-256 fingerprint').action(async (flags: { stateDir?: string; json?: boolean }) => {
    const stateDir = readStateDir(flags.stateDir, process.env);
    const entries = await listPersistedBundles(stateDir);
    const now = Date.now();
    const bad = entries.flatMap((e) => ('error' in e ? [e] : []));
    if (flags.json) {
      const bundles = entries.map((e) =>
        'error' in e
          ? { trustDomain: e.trustDomain, error: e.error }
          : {
              trustDomain: e.trustDomain,
              origin: e.persisted.origin,
              sequence: e.persisted.bundle.sequence ?? null,
              refreshHintSeconds: e.persisted.bundle.refreshHintSeconds ?? null,
              updatedAt: e.persisted.updatedAt.toISOString(),
              ageSeconds: Math.max(0, Math.round((now - e.persisted.updatedAt.getTime()) / 1000)),
              authorities: e.persisted.bundle.x509Authorities.map((cert) => ({ subject: cert.subject, notAfter: cert.notAfter.toISOString(), fingerprintSha256: fingerprint(cert) })),
            },
      );
      process.stdout.write(`${JSON.stringify({ directory: federationDir(stateDir), bundles }, null, 2)}\n`);
    } else if (entries.length === 0) {
      process.stdout.write(`no federated bundles in ${federationDir(stateDir)}: a running CA keeps each bundle it fetches there, and meshca bundle set adds one\n`);
    } else {
      const rows = entries.flatMap((e) =>
        'error' in e
          ? []
          : [[e.trustDomain, e.persisted.origin, e.persisted.bundle.sequence === undefined ? '-' : String(e.persisted.bundle.sequence), String(e.persisted.bundle.x509Authorities.length), formatAge((now - e.persisted.updatedAt.getTime()) / 1000)]],
      );
      if (rows.length > 0) process.stdout.write(`${formatTable(['TRUST DOMAIN', 'ORIGIN', 'SEQUENCE', 'AUTHORITIES', 'AGE'], rows)}\n`);
    }
    for (const e of bad) process.stderr.write(`meshca: ${e.trustDomain}: invalid bundle, a running CA ignores it: ${e.error}\n`);
    if (bad.length > 0) process.exitCode = 1;
  });
}
