/**
 * Caller authentication for the CA: authenticators are tried in order (client certificate, TokenReview, JWT) and
 * the first success wins. When none succeeds, the error lists each authenticator's reason so a user can tell a
 * wrong audience from an unknown issuer, without ever echoing the token.
 */
import { AuthenticationError, type AuthRequest, type Authenticator, type Caller } from './types.js';

export { ClientCertAuthenticator } from './client-cert.js';
export {
  TokenReviewAuthenticator,
  POD_NAME_EXTRA,
  POD_UID_EXTRA,
  DEFAULT_MAX_INFLIGHT_TOKENREVIEWS,
  TOO_MANY_TOKENREVIEWS,
  type TokenReviewResult,
  type TokenReviewObserver,
} from './tokenreview.js';
export { JwtAuthenticator, parseJwtRules, type JwtRule } from './jwt.js';
export {
  NodeImpersonation,
  PodCaches,
  parseNodeAccounts,
  type NodeAccount,
  type ImpersonationVerdict,
  type NodeCheck,
  type NodeCheckRequest,
  type NodeCheckVerdict,
} from './impersonation.js';
export { kubePodSource, PodCache, podIsLive, systemClock, whyPodIsNotLive, type CachedPod, type Clock, type PodSource } from './pod-cache.js';
export { KubeClusters, type KubeCluster } from './kube-clusters.js';
export { TrustDomains, TRUST_DOMAIN_ALIASES_SETTING, aliasProblem } from './trust-domains.js';
export * from './types.js';

/** Istio's message for a request no authenticator accepted. */
const AUTHENTICATE_FAILURE = 'request authenticate failure';

export class AuthenticatorChain {
  constructor(readonly authenticators: readonly Authenticator[]) {}

  get names(): string[] {
    return this.authenticators.map((a) => a.name);
  }

  /** Returns the first authenticated caller; throws AuthenticationError (`denied` or `unavailable`) otherwise. */
  async authenticate(request: AuthRequest): Promise<Caller> {
    const reasons: string[] = [];
    const skipped: string[] = [];
    let unavailable = false;
    for (const authenticator of this.authenticators) {
      const outcome = await authenticator.authenticate(request);
      if (outcome.kind === 'ok') return outcome.caller;
      if (outcome.kind === 'unavailable') unavailable = true;
      (outcome.kind === 'skip' ? skipped : reasons).push(`${authenticator.name}: ${outcome.reason}`);
    }
    // Say why each credential failed; list what was missing only when nothing usable was presented at all.
    if (reasons.length === 0) reasons.push(...skipped);
    if (reasons.length === 0) reasons.push('no authenticator is configured');
    if (unavailable) {
      // Not the caller's fault: a dependency could not be asked. Fail closed with a retryable status.
      throw new AuthenticationError('unavailable', `authentication could not be completed: ${reasons.join('; ')}`);
    }
    throw new AuthenticationError('denied', `${AUTHENTICATE_FAILURE}: ${reasons.join('; ')}`);
  }
}
