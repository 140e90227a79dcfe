/**
 * SPIFFE federation on the CA, started as one piece by `meshca ca` and `meshca dev`: the own bundle (always: agents
 * watch it with the aliases), the bundles of the trust domains it federates with (--federate-with), the feed that
 * combines them for WatchTrustBundles, and the bundle endpoint (--bundle-endpoint-addr).
 */
import type { Registry } from 'prom-client';
import type { Logger } from '../../log.js';
import { systemClock, type Clock } from '../../util/clock.js';
import type { WorkloadSigner } from '../signer.js';
import { startBundleEndpoint, type BundleEndpoint, type BundleEndpointConfig } from './bundle-endpoint.js';
import { federationDebugView, startFederation } from './federated-bundles.js';
import { trustBundleFeed } from './feed.js';
import { ownBundle } from './own-bundle.js';
import type { FederatedBundles, FederationTarget, TrustBundleFeed } from './types.js';

export type { TrustBundleFeed, TrustBundleSet, FederatedBundles, FederationTarget } from './types.js';

/** Peers are told to fetch the own bundle this often when no endpoint setting says otherwise. */
const DEFAULT_REFRESH_HINT_SECONDS = 300;

export interface TrustFederationOptions {
  trustDomain: string;
  aliases: readonly string[];
  /** The CA's state directory; federated bundles are kept in its federation/ subdirectory. */
  stateDir: string;
  targets: readonly FederationTarget[];
  bundleEndpoint?: BundleEndpointConfig;
  /** The bundle endpoint's SVID lifetime (the CA's --server-cert-ttl). */
  svidTtlSeconds: number;
  signer: WorkloadSigner;
  logger: Logger;
  registry: Registry;
  clock?: Clock;
}

export interface TrustFederation {
  /** What agents watch: the own bundle, the aliases and every federated bundle. */
  feed: TrustBundleFeed;
  /** /debug/federation; absent when the CA federates with no one. */
  status?: () => unknown;
  endpoint?: BundleEndpoint;
  close(): Promise<void>;
}

/** The part of the CA's configuration federation reads (CaServerConfig has it all). */
export interface FederationSettings {
  trustDomain: string;
  trustDomainAliases: readonly string[];
  federation: { targets: readonly FederationTarget[] };
  bundleEndpoint?: BundleEndpointConfig;
  serverCertTtlSeconds: number;
}

/** Federation for a CA configured with `settings`, keeping its state under `stateDir`. */
export function startConfiguredFederation(
  settings: FederationSettings,
  context: { stateDir: string; signer: WorkloadSigner; logger: Logger; registry: Registry },
): Promise<TrustFederation> {
  return startTrustFederation({
    trustDomain: settings.trustDomain,
    aliases: settings.trustDomainAliases,
    targets: settings.federation.targets,
    ...(settings.bundleEndpoint ? { bundleEndpoint: settings.bundleEndpoint } : {}),
    svidTtlSeconds: settings.serverCertTtlSeconds,
    ...context,
  });
}

/** Starts what the options ask for; on an error, what was started is stopped again before it is thrown. */
export async function startTrustFederation(options: TrustFederationOptions): Promise<TrustFederation> {
  const clock = options.clock ?? systemClock;
  const own = ownBundle(options.signer, options.trustDomain, {
    refreshHintSeconds: options.bundleEndpoint?.refreshHintSeconds ?? DEFAULT_REFRESH_HINT_SECONDS,
    logger: options.logger,
  });
  let federated: FederatedBundles | undefined;
  let endpoint: BundleEndpoint | undefined;
  try {
    if (options.targets.length > 0) {
      federated = await startFederation({ targets: [...options.targets], stateDir: options.stateDir, clock, logger: options.logger, registry: options.registry });
    }
    if (options.bundleEndpoint) {
      endpoint = await startBundleEndpoint({
        config: options.bundleEndpoint,
        bundle: own,
        signer: options.signer,
        svidTtlSeconds: options.svidTtlSeconds,
        logger: options.logger,
        registry: options.registry,
        now: () => clock.now(),
      });
    }
  } catch (error) {
    await federated?.close();
    own.close();
    throw error;
  }
  const feed = trustBundleFeed({ trustDomain: options.trustDomain, aliases: options.aliases, own, ...(federated ? { federated } : {}) });
  return {
    feed,
    ...(federated ? { status: federationDebugView(federated, clock) } : {}),
    ...(endpoint ? { endpoint } : {}),
    close: async () => {
      await endpoint?.close();
      await federated?.close();
      own.close();
    },
  };
}
