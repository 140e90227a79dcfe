/** The CA's own bundle, its aliases and the federated bundles, combined into one TrustBundleSet that agents watch. */
import { createHash } from 'node:crypto';
import type { SpiffeBundle } from '../../pki/index.js';
import type { FederatedBundles, OwnBundle, TrustBundleFeed, TrustBundleSet } from './types.js';

function versionOf(trustDomain: string, aliases: readonly string[], bundles: readonly SpiffeBundle[]): string {
  const hash = createHash('sha256').update(trustDomain).update('\0').update(aliases.join(',')).update('\0');
  for (const bundle of bundles) {
    hash.update(bundle.trustDomain).update('\0');
    for (const cert of bundle.x509Authorities) hash.update(cert.der);
    hash.update('\0');
  }
  return hash.digest('hex').slice(0, 32);
}

function combine(trustDomain: string, aliases: readonly string[], own: SpiffeBundle, federated: readonly SpiffeBundle[]): TrustBundleSet {
  // A federated bundle may not speak for our own trust domain or an alias of it.
  const others = federated
    .filter((bundle) => bundle.trustDomain !== trustDomain && !aliases.includes(bundle.trustDomain))
    .slice()
    .sort((a, b) => (a.trustDomain < b.trustDomain ? -1 : a.trustDomain > b.trustDomain ? 1 : 0));
  return { trustDomain, aliases, own, federated: others, version: versionOf(trustDomain, aliases, [own, ...others]) };
}

export function trustBundleFeed(options: { trustDomain: string; aliases: readonly string[]; own: OwnBundle; federated?: FederatedBundles }): TrustBundleFeed {
  const { trustDomain, aliases, own, federated } = options;
  const listeners = new Set<(set: TrustBundleSet) => void>();
  const build = (): TrustBundleSet => combine(trustDomain, aliases, own.current(), federated?.bundles() ?? []);
  let current = build();
  const refresh = (): void => {
    const next = build();
    if (next.version === current.version) return;
    current = next;
    for (const listener of [...listeners]) listener(next);
  };
  own.onChange(refresh);
  federated?.onChange(refresh);
  return {
    current: () => current,
    onChange: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
