/**
 * The pieces of SPIFFE federation on the CA, and the narrow interfaces between them:
 *   - `OwnBundle`: this CA's roots as a SPIFFE bundle with a sequence (own-bundle.ts);
 *   - the bundle endpoint, which serves it (bundle-endpoint.ts);
 *   - `FederatedBundles`: other trust domains' bundles, fetched from their endpoints or read from files, the last
 *     good one kept (federated-bundles.ts);
 *   - `TrustBundleFeed`: all of it as one value, for the agents (feed.ts; served over gRPC by src/server).
 */
import type { SpiffeBundle } from '../../pki/index.js';

/** The CA's own bundle: changes when the roots do (rotation, cacerts reload), with a greater sequence each time. */
export interface OwnBundle {
  current(): SpiffeBundle;
  /** Called after the bundle changed. Returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
}

/** How the client authenticates another trust domain's bundle endpoint (SPIFFE Federation, section 5). */
export type EndpointProfile =
  /** Web PKI: the system's roots, or the roots in `caFile` when given. */
  | { kind: 'https_web'; caFile?: string }
  /** The endpoint's X.509-SVID must be `endpointId` and chain to the trust domain's own (last good) bundle. */
  | { kind: 'https_spiffe'; endpointId: string };

/** One trust domain this CA federates with, and where its bundle comes from. */
export interface FederationTarget {
  trustDomain: string;
  source:
    | { kind: 'endpoint'; url: URL; profile: EndpointProfile; /** https_spiffe: the first bundle, before any fetch. */ initialBundlePath?: string }
    | { kind: 'file'; path: string };
}

/** What /debug/federation, `meshca bundle list` and the metrics say of one federated trust domain. */
export interface FederatedBundleStatus {
  trustDomain: string;
  /** Where the bundle in use came from: fetched, a static file, read back from the state directory, the initial bundle, or `meshca bundle set`. */
  origin: 'endpoint' | 'file' | 'persisted' | 'initial' | 'set' | 'none';
  sequence?: number;
  authorities: number;
  /** When the bundle in use was fetched or read. */
  updatedAt?: Date;
  lastAttemptAt?: Date;
  /** The last refresh's error, cleared by the next success. */
  lastError?: string;
  nextRefreshAt?: Date;
}

/** Other trust domains' bundles (only those known: a trust domain with no good bundle yet is absent). */
export interface FederatedBundles {
  bundles(): readonly SpiffeBundle[];
  status(): readonly FederatedBundleStatus[];
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
}

/** Everything the CA trusts, as one value replaced as a whole. */
export interface TrustBundleSet {
  readonly trustDomain: string;
  /** Trust-domain aliases (--trust-domain-aliases): peers in these trust domains are verified with `own`. */
  readonly aliases: readonly string[];
  readonly own: SpiffeBundle;
  /** Sorted by trust domain; never holds the CA's own trust domain or an alias. */
  readonly federated: readonly SpiffeBundle[];
  /** Equal versions are equal sets (a hash of every trust domain and authority). */
  readonly version: string;
}

export interface TrustBundleFeed {
  current(): TrustBundleSet;
  onChange(listener: (set: TrustBundleSet) => void): () => void;
}
