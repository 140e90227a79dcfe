/**
 * The identity cache as PEM text with gRPC statuses: the form the SDS server (resources.ts) and OUTPUT_CERTS
 * (output-certs.ts) serve. Everything about identities, proof and renewal lives in cache/identity-cache.ts; this
 * view only encodes (each cached version once, shared by every stream that watches it) and maps errors to
 * SdsError. Another API would be another such view over the same cache.
 */
import type { WorkloadKeyConfig } from '../config/agent.js';
import { certificateToPem, type ParsedCertificate } from '../pki/index.js';
import { clockFrom } from '../util/clock.js';
import {
  IdentityCache,
  type AcquireContext,
  type CachedIdentity,
  type IdentityCacheOptions,
  type IdentityLease as CacheLease,
  type Lease,
  type TrustBundle as CachedBundle,
} from './cache/identity-cache.js';
import type { WorkloadCredential } from './credentials.js';
import { SdsError, toSdsError } from './errors.js';
import { encodeWorkloadKey } from './keys.js';
import type { ExpiryReading } from './metrics.js';

export { DEFAULT_MAX_CONCURRENT_CSRS, DEFAULT_REFUSAL_TTL_MS, type AcquireContext } from './cache/identity-cache.js';

export interface IdentitySecret {
  /** The SPIFFE ID(s) in the leaf's SAN, comma-joined when there are several. */
  identity: string;
  keyPem: string;
  /** Leaf, intermediates and the root bundle, concatenated like istio-agent does for Envoy. */
  chainPem: string;
  /** The trust bundle from the CA's response (its last element). */
  rootsPem: string;
  leaf: ParsedCertificate;
  /** Local clock, like renewAt and expiresAt. */
  receivedAt: number;
  renewAt: number;
  /** When the certificate expires by the local clock: NotAfter, unless this node's clock is off (renewalSchedule). */
  expiresAt: number;
  /** Content version: equal versions are the same secret. */
  version: string;
}

export interface TrustBundle {
  pem: string;
  version: string;
  roots: readonly ParsedCertificate[];
}

/** A stream's hold on one identity's secret; a revocation ends the stream so the client reconnects. */
export type IdentityLease = Lease<IdentitySecret, SdsError>;

export interface WorkloadSecretsOptions extends Omit<IdentityCacheOptions, 'clock'> {
  /** How workload keys are written out (PKCS#1/SEC1 or PKCS#8). */
  key: WorkloadKeyConfig;
  /** The clock for token expiry, renewal and the refusal cache (epoch ms; default Date.now). Timers stay real. */
  clock?: () => number;
}

function pemOf(ders: readonly Buffer[]): string {
  return ders.map((der) => certificateToPem(der)).join('');
}

export class WorkloadSecrets {
  /** PEM forms, made once per cached version (a renewal is a new CachedIdentity, a new bundle a new object). */
  private readonly secrets = new WeakMap<CachedIdentity, IdentitySecret>();
  private readonly bundles = new WeakMap<CachedBundle, TrustBundle>();

  readonly cache: IdentityCache;
  private readonly keyConfig: WorkloadKeyConfig;

  /** A view over an existing cache (`{ cache, key }`), or a new cache with its view (the cache's options and `key`). */
  constructor(options: WorkloadSecretsOptions | { cache: IdentityCache; key: WorkloadKeyConfig }) {
    this.keyConfig = options.key;
    if ('cache' in options) {
      this.cache = options.cache;
    } else {
      const { key: _key, clock, ...cacheOptions } = options;
      this.cache = new IdentityCache({ ...cacheOptions, ...(clock ? { clock: clockFrom(clock) } : {}) });
    }
  }

  /** New tokens being proven now, and waiting for their turn. */
  get proofs(): { running: number; queued: number } {
    return this.cache.proofs;
  }

  /** Identities currently cached (for metrics and logs). */
  get size(): number {
    return this.cache.size;
  }

  /**
   * Proves `credential` (a CSR to the CA on first sight) and returns a lease on the identity the CA granted.
   * Rejects with an SdsError naming the cause: no/refused token, CA unreachable, unusable CA answer.
   */
  async acquire(credential: WorkloadCredential, context: AcquireContext = {}): Promise<IdentityLease> {
    let lease: CacheLease;
    try {
      lease = await this.cache.acquire(credential, context);
    } catch (error) {
      throw toSdsError(error);
    }
    return {
      identity: lease.identity,
      current: () => this.secretOf(lease.current()),
      onChange: (listener) => lease.onChange((identity) => listener(this.secretOf(identity))),
      onRevoked: (listener) => lease.onRevoked((error) => listener(toSdsError(error))),
      release: () => lease.release(),
    };
  }

  trustBundle(): TrustBundle | null {
    const bundle = this.cache.trustBundle();
    return bundle && this.bundleOf(bundle);
  }

  onTrustBundle(listener: (bundle: TrustBundle) => void): () => void {
    return this.cache.onTrustBundle((bundle) => listener(this.bundleOf(bundle)));
  }

  expiryReadings(): ExpiryReading[] {
    const readings: ExpiryReading[] = [];
    for (const cached of this.cache.identities()) {
      // By the local clock, so that the metrics count down to the real expiry even on a node with a skewed clock.
      readings.push({ resourceName: 'default', identity: cached.identity, notAfter: new Date(cached.expiresAt) });
    }
    const bundle = this.cache.trustBundle();
    if (bundle && bundle.roots.length > 0) {
      const earliest = bundle.roots.reduce((a, b) => (a.notAfter <= b.notAfter ? a : b));
      readings.push({ resourceName: 'ROOTCA', identity: '', notAfter: earliest.notAfter });
    }
    return readings;
  }

  close(): void {
    this.cache.close();
  }

  private bundleOf(bundle: CachedBundle): TrustBundle {
    let view = this.bundles.get(bundle);
    if (!view) {
      view = { pem: pemOf(bundle.roots.map((root) => root.der)), version: bundle.version, roots: bundle.roots };
      this.bundles.set(bundle, view);
    }
    return view;
  }

  private secretOf(cached: CachedIdentity): IdentitySecret {
    let secret = this.secrets.get(cached);
    if (!secret) {
      const rootsPem = this.bundleOf(cached.bundle).pem;
      secret = {
        identity: cached.identity,
        keyPem: encodeWorkloadKey(cached.key, this.keyConfig),
        chainPem: pemOf(cached.chain) + rootsPem,
        rootsPem,
        leaf: cached.leaf,
        receivedAt: cached.receivedAt,
        renewAt: cached.renewAt,
        expiresAt: cached.expiresAt,
        version: cached.version,
      };
      this.secrets.set(cached, secret);
    }
    return secret;
  }
}
