/**
 * Kubernetes TokenReview authentication (Istio's KubeJWTAuthenticator): the bearer token is sent to the API
 * server of the cluster named by the `clusterid` header, with `spec.audiences` = TOKEN_AUDIENCES.
 *
 * Successful reviews are cached by the token's SHA-256 (never the token itself) for min(token exp, cache TTL), so
 * a fleet of agents renewing with the same token costs one API call; failures are never cached so a fixed RBAC or
 * a recreated pod takes effect at once. Concurrent reviews of the same token share one API call.
 * An API server that cannot be asked fails closed as `unavailable`, never as a verdict about the caller.
 * At most `maxInFlight` API calls run at once (--max-inflight-tokenreviews): when the API server is slow, further
 * new tokens are refused at once as `unavailable` instead of queueing without bound; each call ends at its
 * timeout, so capacity comes back by itself.
 */
import type { V1TokenReview } from '@kubernetes/client-node';
import { WorkloadId } from '../pki/index.js';
import { callWithDeadline, describeKubeError } from '../kube/api.js';
import type { KubeCluster, KubeClusters } from './kube-clusters.js';
import { TokenCache } from './token-cache.js';
import {
  audienceMismatch,
  audiencesOf,
  extractBearerToken,
  isServiceAccountUsername,
  parseServiceAccountUsername,
  type AuthOutcome, type AuthRequest, type Authenticator } from './types.js';

export const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
export const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
const SERVICE_ACCOUNTS_GROUP = 'system:serviceaccounts';
export const DEFAULT_MAX_INFLIGHT_TOKENREVIEWS = 64;
/** The start of the message for a request refused because too many reviews are running (tests match on it). */
export const TOO_MANY_TOKENREVIEWS = 'too many TokenReviews in flight';

/** How one TokenReview API call ended, for `meshca_tokenreview_requests_total{result}`. */
export type TokenReviewResult = 'authenticated' | 'rejected' | 'error';

export interface TokenReviewObserver {
  onReview?(result: TokenReviewResult): void;
  onCacheHit?(): void;
  /** The number of API calls in flight changed. */
  onInFlight?(count: number): void;
  /** A request was refused because `maxInFlight` calls were already running. */
  onOverload?(): void;
}

export interface TokenReviewOptions {
  clusters: KubeClusters;
  /** TOKEN_AUDIENCES. */
  audiences: readonly string[];
  trustDomain: string;
  cacheTtlSeconds: number;
  timeoutSeconds: number;
  /** At most this many TokenReview API calls at once (default 64). */
  maxInFlight?: number;
  observer?: TokenReviewObserver;
  now?: () => number;
  /**
   * Asks someone else to review a token this authenticator has not cached (a `meshca ca --workers` worker asks
   * the primary process, which holds the API connections, the shared cache and the in-flight limit). Without
   * it, this authenticator calls the API server itself.
   */
  reviewer?: (clusterId: string, token: string) => Promise<AuthOutcome>;
}

/** The token's `exp` in ms, read without verification: only ever used to shorten how long a verdict is cached. */
/** The claims of a JWT without checking its signature (for a cache bound or a message), or undefined. */
function unverifiedClaims(token: string): Record<string, unknown> | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as unknown;
    return claims && typeof claims === 'object' && !Array.isArray(claims) ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export function unverifiedExpiryMs(token: string): number | undefined {
  const exp = unverifiedClaims(token)?.exp;
  return typeof exp === 'number' ? exp * 1000 : undefined;
}

function firstExtra(extra: Record<string, string[]> | undefined, key: string): string | undefined {
  const values = extra?.[key];
  return Array.isArray(values) && typeof values[0] === 'string' && values[0] !== '' ? values[0] : undefined;
}

function limit(text: string, max = 300): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

export class TokenReviewAuthenticator implements Authenticator {
  readonly name = 'tokenreview' as const;
  private readonly cache: TokenCache<Extract<AuthOutcome, { kind: 'ok' }>>;
  private readonly inFlight = new Map<string, Promise<AuthOutcome>>();
  private readonly now: () => number;
  private readonly maxInFlight: number;
  private apiCallsInFlight = 0;

  constructor(private readonly options: TokenReviewOptions) {
    this.now = options.now ?? Date.now;
    this.cache = new TokenCache({ ttlMs: options.cacheTtlSeconds * 1000, now: this.now });
    this.maxInFlight = options.maxInFlight ?? DEFAULT_MAX_INFLIGHT_TOKENREVIEWS;
  }

  /** TokenReview API calls that have not finished yet. */
  get apiCallsRunning(): number {
    return this.apiCallsInFlight;
  }

  async authenticate(request: AuthRequest): Promise<AuthOutcome> {
    const token = extractBearerToken(request.header('authorization'));
    if (!token) return { kind: 'skip', reason: 'no "authorization: Bearer <token>" header' };
    const resolved = this.options.clusters.resolve(request.header('clusterid'));
    if ('error' in resolved) return { kind: 'denied', reason: resolved.error };
    return this.authenticateToken(resolved.cluster, token);
  }

  /**
   * Reviews a token for a cluster named by its ID (what a worker's `reviewer` asks of the primary): the cache,
   * the coalescing of identical reviews and the in-flight limit apply as for a request.
   */
  reviewToken(clusterId: string, token: string): Promise<AuthOutcome> {
    const resolved = this.options.clusters.resolve(clusterId);
    if ('error' in resolved) return Promise.resolve({ kind: 'denied', reason: resolved.error });
    return this.authenticateToken(resolved.cluster, token);
  }

  private async authenticateToken(cluster: KubeCluster, token: string): Promise<AuthOutcome> {
    const key = TokenCache.keyOf(token, cluster.id);

    const cached = this.cache.get(key);
    if (cached) {
      this.options.observer?.onCacheHit?.();
      return cached;
    }
    const pending = this.inFlight.get(key);
    if (pending) {
      // Joining a review already in flight also saves an API call.
      const outcome = await pending;
      if (outcome.kind === 'ok') this.options.observer?.onCacheHit?.();
      return outcome;
    }

    const reviewer = this.options.reviewer;
    // A delegated review is limited where the API calls are made (the primary), not here.
    if (!reviewer && this.apiCallsInFlight >= this.maxInFlight) {
      // Refuse at once: waiting for a slot would only pile up callers behind an API server that is not keeping up.
      this.options.observer?.onOverload?.();
      return {
        kind: 'unavailable',
        reason: `${TOO_MANY_TOKENREVIEWS} (${this.maxInFlight}, the --max-inflight-tokenreviews limit): the Kubernetes API server of cluster "${cluster.id}" is not keeping up; retry later`,
      };
    }
    const review = (reviewer ? reviewer(cluster.id, token) : this.review(cluster, token)).then((outcome) => {
      if (outcome.kind === 'ok') this.cache.set(key, outcome, unverifiedExpiryMs(token));
      return outcome;
    });
    this.inFlight.set(key, review);
    try {
      return await review;
    } finally {
      this.inFlight.delete(key);
    }
  }

  /** Number of cached verdicts (for /debug). */
  get cacheSize(): number {
    return this.cache.size;
  }

  private async review(cluster: KubeCluster, token: string): Promise<AuthOutcome> {
    const body: V1TokenReview = {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token, audiences: [...this.options.audiences] },
    };
    const api = cluster.authentication;
    if (!api) return { kind: 'unavailable', reason: `cluster "${cluster.id}" has no API client to review tokens with` };
    let response: V1TokenReview;
    this.changeInFlight(+1);
    try {
      response = await callWithDeadline(
        (options) => api.createTokenReview({ body }, options),
        this.options.timeoutSeconds * 1000,
        () => this.changeInFlight(-1),
      );
    } catch (error) {
      this.options.observer?.onReview?.('error');
      return { kind: 'unavailable', reason: this.describeFailure(cluster, error) };
    }
    const outcome = this.judge(cluster, response, token);
    this.options.observer?.onReview?.(outcome.kind === 'ok' ? 'authenticated' : 'rejected');
    return outcome;
  }

  private changeInFlight(delta: number): void {
    this.apiCallsInFlight += delta;
    this.options.observer?.onInFlight?.(this.apiCallsInFlight);
  }

  private describeFailure(cluster: KubeCluster, error: unknown): string {
    const { status, detail } = describeKubeError(error);
    const where = `the Kubernetes API server of cluster "${cluster.id}" (${cluster.server})`;
    if (status === 403) {
      return `${where} refused the CA's TokenReview (${limit(detail)}): the CA's service account lacks RBAC permission to create tokenreviews.authentication.k8s.io; bind it to the ClusterRole system:auth-delegator`;
    }
    if (status === 401) {
      return `${where} did not accept the CA's own credentials (HTTP 401): check the CA's kubeconfig or service-account token`;
    }
    return `could not reach ${where} to review the token: ${limit(detail)}`;
  }

  private judge(cluster: KubeCluster, response: V1TokenReview, token: string): AuthOutcome {
    const status = response.status;
    if (!status?.authenticated) {
      // The API server's own text ("token audiences [...] is invalid for the target audiences [...]") is cut at any
      // length and names no fix; the token's aud (which the caller sent) says it better, bounded.
      const aud = unverifiedClaims(token)?.aud;
      const claimed = audiencesOf(aud);
      if (/audience/i.test(status?.error ?? '') && claimed.length > 0 && !claimed.some((a) => typeof a === 'string' && this.options.audiences.includes(a))) {
        return { kind: 'denied', reason: `cluster "${cluster.id}" did not authenticate the token: ${audienceMismatch(aud, this.options.audiences, 'TOKEN_AUDIENCES')}` };
      }
      return { kind: 'denied', reason: `the token was not authenticated by cluster "${cluster.id}": ${limit(status?.error || 'no reason given')}` };
    }
    const username = status.user?.username ?? '';
    const account = parseServiceAccountUsername(username);
    if (!account) {
      if (isServiceAccountUsername(username)) {
        return {
          kind: 'denied',
          reason: `the token's user "${limit(username, 100)}" is not system:serviceaccount:<namespace>:<service account> with valid Kubernetes names`,
        };
      }
      return { kind: 'denied', reason: `the token does not belong to a service account (user "${limit(username, 100)}")` };
    }
    const groups = status.user?.groups ?? [];
    if (!groups.includes(SERVICE_ACCOUNTS_GROUP)) {
      return { kind: 'denied', reason: `the token's user is not in the group ${SERVICE_ACCOUNTS_GROUP}` };
    }
    const granted = status.audiences ?? [];
    if (!granted.some((audience) => this.options.audiences.includes(audience))) {
      return {
        kind: 'denied',
        reason: audienceMismatch(granted, this.options.audiences, 'TOKEN_AUDIENCES'),
      };
    }
    let identity: WorkloadId;
    try {
      identity = WorkloadId.of({ trustDomain: this.options.trustDomain, namespace: account.namespace, serviceAccount: account.serviceAccount });
    } catch (error) {
      return { kind: 'denied', reason: `the service account cannot be expressed as a SPIFFE ID: ${(error as Error).message}` };
    }
    const podName = firstExtra(status.user?.extra, POD_NAME_EXTRA);
    const podUid = firstExtra(status.user?.extra, POD_UID_EXTRA);
    return {
      kind: 'ok',
      caller: {
        authenticator: this.name,
        identity,
        subject: username,
        kubernetes: {
          clusterId: cluster.id,
          namespace: account.namespace,
          serviceAccount: account.serviceAccount,
          ...(podName ? { podName } : {}),
          ...(podUid ? { podUid } : {}),
        },
      },
    };
  }
}
