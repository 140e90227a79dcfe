/**
 * The CA's Prometheus metrics. Where istiod's CA has a metric for the same thing, the name, type and labels are
 * the ones istiod exposes (`citadel_server_*`, listed with their sources in docs/istio-metric-names.json), so
 * existing dashboards and alerts keep working; meshca's own additions are prefixed `meshca_`. Metrics live in a Registry passed in, never in
 * prom-client's global registry, so several servers (and tests) can coexist in one process.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { TokenReviewObserver, TokenReviewResult } from '../authn/index.js';
import type { WorkloadSigner } from '../ca/index.js';
import { registerBuildInfo } from '../util/build-info-metric.js';

export class CaMetrics implements TokenReviewObserver {
  readonly csrCount: Counter;
  readonly authenticationFailures: Counter;
  readonly signErrors: Counter<'error'>;
  readonly csrParsingErrors: Counter;
  readonly idExtractionErrors: Counter;
  readonly successfulIssuance: Counter;
  readonly rootCertExpiry: Gauge;
  readonly certChainExpiry: Gauge;
  readonly signDuration: Histogram;
  readonly tokenReviewRequests: Counter<'result'>;
  readonly tokenReviewCacheHits: Counter;
  readonly jwtCacheHits: Counter;
  readonly tokenReviewsInFlight: Gauge;
  readonly tokenReviewOverloads: Counter;
  readonly rateLimited: Counter;
  readonly issuedChainRejected: Counter;

  private rootNotAfterMs: number | undefined;
  private signingNotAfterMs: number | undefined;

  /** `now` (epoch ms, default Date.now) is the clock the `*_expiry_seconds` gauges count down on. */
  constructor(
    readonly registry: Registry,
    now: () => number = Date.now,
  ) {
    const registers = [registry];
    registerBuildInfo(registry);
    this.csrCount = new Counter({ name: 'citadel_server_csr_count', help: 'The number of CSRs received by the CA server.', registers });
    this.authenticationFailures = new Counter({ name: 'citadel_server_authentication_failure_count', help: 'The number of authentication failures.', registers });
    this.signErrors = new Counter({ name: 'citadel_server_csr_sign_err_count', help: 'The number of errors occurred when signing the CSR, by error type.', labelNames: ['error'], registers });
    this.csrParsingErrors = new Counter({ name: 'citadel_server_csr_parsing_err_count', help: 'The number of CSRs that could not be parsed or whose signature did not verify (also counted in citadel_server_csr_sign_err_count{error="CSR_ERROR"}, as istiod does).', registers });
    // istiod defines this counter but never increments it; neither does meshca: the identity is taken from the
    // caller's credential, never extracted from the CSR. Exported (always 0) so queries of it find a series.
    this.idExtractionErrors = new Counter({ name: 'citadel_server_id_extraction_err_count', help: 'The number of errors occurred when extracting the ID from CSR (always 0: the identity comes from the caller, not the CSR).', registers });
    this.successfulIssuance = new Counter({ name: 'citadel_server_success_cert_issuance_count', help: 'The number of certificates issuances that have succeeded.', registers });
    this.rootCertExpiry = new Gauge({
      name: 'citadel_server_root_cert_expiry_timestamp',
      help: 'The unix timestamp, in seconds, when the earliest-expiring trusted root certificate expires.',
      // Every process of `meshca ca --workers N` publishes the same value: summing them would be wrong.
      aggregator: 'min',
      registers,
    });
    this.certChainExpiry = new Gauge({
      name: 'citadel_server_cert_chain_expiry_timestamp',
      help: 'The unix timestamp, in seconds, when the CA signing certificate expires.',
      // Every process of `meshca ca --workers N` publishes the same value: summing them would be wrong.
      aggregator: 'min',
      registers,
    });
    const secondsUntil = (notAfterMs: () => number | undefined) =>
      function (this: Gauge): void {
        const at = notAfterMs();
        if (at === undefined) return;
        this.set(Math.round((at - now()) / 1000));
      };
    new Gauge({
      name: 'citadel_server_root_cert_expiry_seconds',
      help: 'The time remaining, in seconds, before the earliest-expiring trusted root certificate expires (negative once expired).',
      aggregator: 'min',
      registers,
      collect: secondsUntil(() => this.rootNotAfterMs),
    });
    new Gauge({
      name: 'citadel_server_cert_chain_expiry_seconds',
      help: 'The time remaining, in seconds, before the CA signing certificate expires (negative once expired).',
      aggregator: 'min',
      registers,
      collect: secondsUntil(() => this.signingNotAfterMs),
    });
    this.signDuration = new Histogram({
      name: 'meshca_sign_duration_seconds',
      help: 'Time to sign one workload certificate (policy checks and signing, without authentication).',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.tokenReviewRequests = new Counter({ name: 'meshca_tokenreview_requests_total', help: 'TokenReview calls to the Kubernetes API server, by result (authenticated, rejected, error).', labelNames: ['result'], registers });
    this.tokenReviewCacheHits = new Counter({ name: 'meshca_tokenreview_cache_hits_total', help: 'Bearer tokens answered from the TokenReview cache (or by joining an identical review in flight) without an API call.', registers });
    this.jwtCacheHits = new Counter({ name: 'meshca_jwt_cache_hits_total', help: 'JWT_RULE tokens answered from the cache of verified tokens (by SHA-256, until exp, at most 60 s) without verifying their signature again.', registers });
    this.tokenReviewsInFlight = new Gauge({ name: 'meshca_tokenreviews_in_flight', help: 'TokenReview calls to the Kubernetes API servers that have not finished yet (bounded by --max-inflight-tokenreviews).', registers });
    this.tokenReviewOverloads = new Counter({ name: 'meshca_tokenreview_overload_total', help: 'Requests refused with UNAVAILABLE because --max-inflight-tokenreviews TokenReview calls were already in flight.', registers });
    this.rateLimited = new Counter({ name: 'meshca_csr_rate_limited_total', help: 'Certificate requests refused with RESOURCE_EXHAUSTED by --max-csr-per-identity-per-minute.', registers });
    this.issuedChainRejected = new Counter({ name: 'meshca_issued_chain_rejected_total', help: 'Signed certificates withheld because they failed the final check against the request and the published trust bundle (a signing fault).', registers });
    // Export the TokenReview series from the start so a dashboard sees zeros rather than nothing.
    for (const result of ['authenticated', 'rejected', 'error'] as const) this.tokenReviewRequests.inc({ result }, 0);
  }

  onReview(result: TokenReviewResult): void {
    this.tokenReviewRequests.inc({ result });
  }

  onCacheHit(): void {
    this.tokenReviewCacheHits.inc();
  }

  onInFlight(count: number): void {
    this.tokenReviewsInFlight.set(count);
  }

  onOverload(): void {
    this.tokenReviewOverloads.inc();
  }

  /** Publishes what the signer reports now: the earliest root expiry and the signing certificate's. */
  publishSignerExpiries(signer: Pick<WorkloadSigner, 'status'>): void {
    const status = signer.status();
    this.setExpiries(
      status.roots.map((r) => r.notAfter),
      status.signingCertNotAfter,
    );
  }

  /** Publishes the expiry of the roots and of the signing certificate (seconds since the epoch). */
  setExpiries(rootsNotAfter: readonly Date[], signingNotAfter: Date | undefined): void {
    if (rootsNotAfter.length > 0) {
      this.rootNotAfterMs = Math.min(...rootsNotAfter.map((d) => d.getTime()));
      this.rootCertExpiry.set(this.rootNotAfterMs / 1000);
    }
    if (signingNotAfter) {
      this.signingNotAfterMs = signingNotAfter.getTime();
      this.certChainExpiry.set(this.signingNotAfterMs / 1000);
    }
  }
}
