/**
 * The parts of a CA server that the single process (`startCaServer`) and `meshca ca --workers N` (primary and
 * workers) build alike: the issuing authority and the authenticators, named from one list.
 */
import {
  AuthenticatorChain,
  ClientCertAuthenticator,
  JwtAuthenticator,
  TokenReviewAuthenticator,
  type Authenticator,
  type AuthenticatorName,
  type AuthOutcome,
  type KubeClusters,
} from '../authn/index.js';
import { CertificateAuthority, type WorkloadSigner } from '../ca/index.js';
import type { CaServerConfig } from '../config/ca.js';
import type { CaMetrics } from './metrics.js';

/** Which authenticators a CA with this configuration runs, in the order they are tried. */
export function authenticatorNames(config: CaServerConfig, clusters: Pick<KubeClusters, 'size'>): AuthenticatorName[] {
  return [...(config.plaintext ? [] : ['client-cert' as const]), ...(clusters.size > 0 ? ['tokenreview' as const] : []), ...(config.jwtRules.length > 0 ? ['jwt' as const] : [])];
}

/** `now`: the clock issuance reads (epoch ms); Date.now unless a test injects one. */
export function createAuthority(config: CaServerConfig, signer: WorkloadSigner, now?: () => number): CertificateAuthority {
  return new CertificateAuthority({
    signer,
    defaultTtlSeconds: config.defaultWorkloadCertTtlSeconds,
    maxTtlSeconds: config.maxWorkloadCertTtlSeconds,
    ...(now ? { now } : {}),
  });
}

/** The TokenReview authenticator of a CA server; `reviewer` set: a `--workers` worker asking its primary. */
export function tokenReviewAuthenticator(
  config: CaServerConfig,
  clusters: KubeClusters,
  metrics: CaMetrics,
  reviewer?: (clusterId: string, token: string) => Promise<AuthOutcome>,
): TokenReviewAuthenticator {
  return new TokenReviewAuthenticator({
    clusters,
    audiences: config.tokenAudiences,
    trustDomain: config.trustDomain,
    cacheTtlSeconds: config.tokenReviewCacheTtlSeconds,
    timeoutSeconds: config.tokenReviewTimeoutSeconds,
    maxInFlight: config.maxInflightTokenReviews,
    observer: metrics,
    ...(reviewer ? { reviewer } : {}),
  });
}

/** The authenticators named by `authenticatorNames`, built. */
export async function buildAuthenticators(
  config: CaServerConfig,
  clusters: KubeClusters,
  metrics: CaMetrics,
  reviewer?: (clusterId: string, token: string) => Promise<AuthOutcome>,
): Promise<AuthenticatorChain> {
  const build: Record<AuthenticatorName, () => Promise<Authenticator> | Authenticator> = {
    'client-cert': () => new ClientCertAuthenticator({ trustDomain: config.trustDomain, trustDomainAliases: config.trustDomainAliases }),
    tokenreview: () => tokenReviewAuthenticator(config, clusters, metrics, reviewer),
    jwt: () =>
      JwtAuthenticator.create({
        rules: config.jwtRules,
        defaultAudiences: config.tokenAudiences,
        trustDomain: config.trustDomain,
        localClusterId: config.clusterId,
        onCacheHit: () => metrics.jwtCacheHits.inc(),
      }),
  };
  const authenticators: Authenticator[] = [];
  for (const name of authenticatorNames(config, clusters)) authenticators.push(await build[name]());
  return new AuthenticatorChain(authenticators);
}
