/**
 * Opt-in (--identity-expiry-metric): one series per cached SPIFFE ID with its certificate's NotAfter, so that an
 * alert can name the workload whose certificate is about to expire. Off by default because its cardinality grows
 * with the workloads on the node; --identity-metric-limit caps the series, and the identities left without one are
 * counted (and logged) so that a capped view is never mistaken for a complete one.
 */
import { Gauge } from 'prom-client';
import type { Logger } from '../log.js';
import type { AgentMetrics } from './metrics.js';

export const IDENTITY_EXPIRY_METRIC = 'meshca_agent_identity_cert_expiry_timestamp_seconds';

export interface IdentityExpiry {
  identity: string;
  notAfter: Date;
}

export function registerIdentityExpiryMetric(
  metrics: AgentMetrics,
  options: { identities: () => readonly IdentityExpiry[]; limit: number; log: Logger },
): void {
  const { limit, log } = options;
  // Identities keep their series while cached, so a full set does not shuffle which ones are shown between scrapes.
  const listed = new Set<string>();
  let warned = false;
  const assign = (): { series: IdentityExpiry[]; unlisted: number } => {
    const current = new Map(options.identities().map((entry) => [entry.identity, entry]));
    for (const id of listed) if (!current.has(id)) listed.delete(id);
    let unlisted = 0;
    for (const id of current.keys()) {
      if (listed.has(id)) continue;
      if (listed.size < limit) listed.add(id);
      else unlisted++;
    }
    if (unlisted > 0 && !warned) {
      log.warn({ limit, unlisted }, `more cached identities than --identity-metric-limit: ${unlisted} have no ${IDENTITY_EXPIRY_METRIC} series; raise the limit or use meshca secrets to see them all`);
    }
    warned = unlisted > 0;
    return { series: [...listed].map((id) => current.get(id)!), unlisted };
  };
  const registers = [metrics.registry];
  new Gauge({
    name: 'meshca_agent_identity_cert_expiry_timestamp_seconds',
    help: 'NotAfter of the certificate cached for this SPIFFE ID, in Unix seconds (opt-in: --identity-expiry-metric; at most --identity-metric-limit series)',
    labelNames: ['spiffe_id'],
    registers,
    collect() {
      this.reset();
      for (const entry of assign().series) this.set({ spiffe_id: entry.identity }, entry.notAfter.getTime() / 1000);
    },
  });
  new Gauge({
    name: 'meshca_agent_identity_expiry_unlisted',
    help: `Cached identities given no ${IDENTITY_EXPIRY_METRIC} series because --identity-metric-limit was reached`,
    registers,
    collect() {
      this.set(assign().unlisted);
    },
  });
}
