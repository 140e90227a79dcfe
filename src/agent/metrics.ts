/**
 * The agent's Prometheus metrics. Where the istio-agent has a metric for the same thing, the name, type and labels
 * are the ones it exposes on :15020/metrics (`istio_agent_*`, listed with their sources in
 * docs/istio-metric-names.json), so dashboards and alerts written for Istio keep working; meshca's own are
 * prefixed `meshca_`. The Node.js process metrics carry the `istio_agent_` prefix too, as the istio-agent's process
 * and Go runtime metrics do. Each agent owns its registry, so several agents can run in one process (tests).
 */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { registerBuildInfo } from '../util/build-info-metric.js';

/** The prefix of every istio-agent metric, and of the agent's process metrics. */
const AGENT_PREFIX = 'istio_agent_';

export interface ExpiryReading {
  resourceName: string;
  /** SPIFFE ID for workload certificates, '' for trust bundles and files. */
  identity: string;
  notAfter: Date;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly outgoingRequests: Counter<'request_type'>;
  readonly failedOutgoingRequests: Counter<'request_type' | 'error_code'>;
  readonly outgoingRetries: Counter<'request_type'>;
  readonly outgoingLatency: Counter<'request_type'>;
  readonly fileWatcherFailures: Counter;
  readonly fileSecretFailures: Counter;
  readonly connectedStreams: Gauge<'api'>;
  readonly pushes: Counter<'api' | 'resource_type'>;
  readonly nacks: Counter<'api' | 'resource_type'>;
  readonly ignoredRequests: Counter<'api' | 'reason'>;
  readonly unsentResponses: Gauge<'api'>;
  readonly coalescedPushes: Counter<'api' | 'resource_type'>;
  readonly secretsCached: Gauge;
  readonly rotations: Counter<'result'>;
  readonly keysGenerated: Counter;
  readonly keysReused: Counter;
  readonly refusedTokens: Counter<'reason'>;
  private expirySource: () => ExpiryReading[] = () => [];
  /** The clock the expiry gauges count down on (the identity cache's, so a test on virtual time sees them move). */
  private now: () => number = () => Date.now();

  constructor(options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: AGENT_PREFIX });
    registerBuildInfo(this.registry);
    this.outgoingRequests = new Counter({ name: 'istio_agent_num_outgoing_requests', help: 'Number of total outgoing requests (CSRs) to the CA', labelNames: ['request_type'], registers });
    this.failedOutgoingRequests = new Counter({ name: 'istio_agent_num_failed_outgoing_requests', help: 'Number of outgoing requests to the CA that failed (error_code: the gRPC status, a meshca addition)', labelNames: ['request_type', 'error_code'], registers });
    this.outgoingRetries = new Counter({ name: 'istio_agent_num_outgoing_retries', help: 'Number of retried requests to the CA', labelNames: ['request_type'], registers });
    this.outgoingLatency = new Counter({ name: 'istio_agent_outgoing_latency', help: 'Total time spent in requests to the CA, in milliseconds', labelNames: ['request_type'], registers });
    this.fileWatcherFailures = new Counter({ name: 'istio_agent_num_file_watcher_failures_total', help: 'Number of times a watcher for a file-cert:/file-root: file or the CA root file could not be added (polling still notices changes)', registers });
    this.fileSecretFailures = new Counter({ name: 'istio_agent_num_file_secret_failures_total', help: 'Number of times a file-cert:/file-root: resource could not be read from its file', registers });
    const source = (): ExpiryReading[] => this.expirySource();
    const now = (): number => this.now();
    new Gauge({
      name: 'istio_agent_cert_expiry_seconds',
      help: 'Seconds until the certificate served as this resource expires (negative once expired); for default, the soonest of all identities on this agent',
      // Istio's one label. A node agent serves many identities: the series per resource carries the soonest expiry,
      // so its cardinality stays bounded by the resources, not the pods; per-identity series are opt-in
      // (--identity-expiry-metric, capped).
      labelNames: ['resource_name'],
      registers,
      collect() {
        this.reset();
        const at = now();
        const soonest = new Map<string, number>();
        for (const reading of source()) {
          const expiresAt = reading.notAfter.getTime();
          if (expiresAt < (soonest.get(reading.resourceName) ?? Infinity)) soonest.set(reading.resourceName, expiresAt);
        }
        for (const [resourceName, expiresAt] of soonest) this.set({ resource_name: resourceName }, Math.round((expiresAt - at) / 1000));
      },
    });
    new Gauge({
      name: 'meshca_agent_expired_certificates',
      help: 'Cached workload certificates past their NotAfter (the CA could not renew them in time)',
      registers,
      collect() {
        const at = now();
        this.set(source().filter((r) => r.identity !== '' && r.notAfter.getTime() <= at).length);
      },
    });
    this.connectedStreams = new Gauge({ name: 'meshca_sds_connected_streams', help: 'Open SDS streams', labelNames: ['api'], registers });
    this.pushes = new Counter({ name: 'meshca_sds_pushes_total', help: 'SDS responses sent, per resource type (default, ROOTCA, file-cert, file-root)', labelNames: ['api', 'resource_type'], registers });
    this.nacks = new Counter({ name: 'meshca_sds_nacks_total', help: 'SDS responses the client rejected (NACK)', labelNames: ['api', 'resource_type'], registers });
    this.ignoredRequests = new Counter({ name: 'meshca_sds_ignored_requests_total', help: 'SDS requests that got no answer by the protocol rules: stale nonce, or a repeated NACK of a response already rejected', labelNames: ['api', 'reason'], registers });
    this.unsentResponses = new Gauge({ name: 'meshca_sds_unsent_responses', help: 'SDS responses written but not yet taken by a slow client; at most one per stream (later changes are coalesced)', labelNames: ['api'], registers });
    this.coalescedPushes = new Counter({ name: 'meshca_sds_coalesced_pushes_total', help: 'Resource versions never sent to a stream because a newer version replaced them while the client was not reading', labelNames: ['api', 'resource_type'], registers });
    this.secretsCached = new Gauge({ name: 'meshca_agent_secrets_cached', help: 'Workload identities with a cached key and certificate', registers });
    this.rotations = new Counter({ name: 'meshca_agent_rotations_total', help: 'Certificate renewals, by result', labelNames: ['result'], registers });
    this.keysGenerated = new Counter({ name: 'meshca_agent_workload_keys_generated_total', help: 'Workload private keys generated (pool refills and on demand)', registers });
    this.keysReused = new Counter({ name: 'meshca_agent_workload_keys_reused_total', help: 'Workload keys handed out again after the CA refused the token of the CSR they were made for (no certificate exists for them)', registers });
    this.refusedTokens = new Counter({ name: 'meshca_agent_refused_tokens_total', help: 'SDS calls refused by the agent itself before any key or CA call: malformed metadata or token, expired token, a token the CA refused moments ago, too many new tokens from one connection', labelNames: ['reason'], registers });
  }

  /** Where the expiry gauges read certificates from, and the clock they count down on (default Date.now). */
  setExpirySource(source: () => ExpiryReading[], now: () => number = () => Date.now()): void {
    this.expirySource = source;
    this.now = now;
  }
}

/** The resource type label of an SDS resource name. */
export function resourceType(name: string): string {
  if (name === 'default' || name === 'ROOTCA' || name === 'ALL') return name;
  if (name.startsWith('spiffe://')) return 'trust-domain';
  if (name.startsWith('file-cert:')) return 'file-cert';
  if (name.startsWith('file-root:')) return 'file-root';
  return 'unknown';
}
