/**
 * Many new workloads at once: the agent keeps a bounded number of CSRs in flight to the CA (the rest wait their
 * turn instead of being refused and retried), resends the same CSR on a retry, and still matches every answer to
 * its own key.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { CaClient, CertificateRequest } from '../src/agent/ca-client.js';
import { tokenCredential } from '../src/agent/credentials.js';
import { CaCallError } from '../src/agent/errors.js';
import { KeyPool } from '../src/agent/keys.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { WorkloadSecrets } from '../src/agent/workload-secrets.js';
import { parseCsr } from '../src/pki/index.js';
import { InProcessCa, memoryLogger, tokenLabel, wireToken } from './agent-helpers.js';

/** Wraps the in-process CA: counts concurrent calls, refuses each token's first CSR as overloaded, records CSRs. */
class BusyCa implements CaClient {
  readonly address = 'busy-ca';
  inFlight = 0;
  maxInFlight = 0;
  readonly csrsByToken = new Map<string, string[]>();

  constructor(private readonly inner: InProcessCa) {}

  async createCertificate(request: CertificateRequest): Promise<string[]> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, 5));
      const seen = this.csrsByToken.get(tokenLabel(request.token ?? '')) ?? [];
      seen.push(request.csrPem);
      this.csrsByToken.set(tokenLabel(request.token ?? ''), seen);
      if (seen.length === 1) throw new CaCallError(grpc.status.UNAVAILABLE, 'too many TokenReviews in flight');
      return await this.inner.createCertificate(request);
    } finally {
      this.inFlight--;
    }
  }

  async waitUntilReachable(): Promise<void> {}

  close(): void {}
}

describe('CSRs from many new workloads at once', () => {
  it('stay within the concurrency limit, are resent unchanged on retry, and each answer matches its key', async () => {
    const inner = new InProcessCa();
    const ca = new BusyCa(inner);
    const keyConfig = { algorithm: 'ECDSA', rsaBits: 2048, curve: 'P256', pkcs8: false } as const;
    const keys = new KeyPool(keyConfig, 0);
    const secrets = new WorkloadSecrets({
      ca,
      keys,
      key: keyConfig,
      ttlSeconds: 3600,
      grace: { ratio: 0.5, jitter: 0 },
      idleTtlMs: 60_000,
      trustDomain: 'cluster.local',
      log: memoryLogger().log,
      metrics: new AgentMetrics({ defaultMetrics: false }),
      maxConcurrentCsrs: 4,
      // Short, fixed backoff: the test is about the queue, not the retry timing.
      random: () => 0,
    });
    try {
      const workloads = Array.from({ length: 30 }, (_, i) => {
        const token = `token-${i}`;
        return { token, identity: inner.addWorkload(token, 'default', `sa-${i}`) };
      });
      const leases = await Promise.all(workloads.map(({ token }) => secrets.acquire(tokenCredential(wireToken(token)))));
      for (const [i, lease] of leases.entries()) {
        assert.equal(lease.identity, workloads[i]!.identity, `workload ${i} got its own identity`);
        const secret = lease.current();
        const csrs = ca.csrsByToken.get(workloads[i]!.token) ?? [];
        assert.equal(csrs.length, 2, `workload ${i}: one refused CSR and one retry`);
        assert.equal(csrs[1], csrs[0], `workload ${i}: the retry resent the same CSR`);
        assert.ok(secret.leaf.spkiDer.equals(parseCsr(csrs[0]!).spkiDer), `workload ${i}: the served leaf is for the key in its CSR`);
      }
      assert.ok(ca.maxInFlight <= 4, `at most 4 CSRs in flight at once, saw ${ca.maxInFlight}`);
      assert.ok(ca.maxInFlight >= 2, `CSRs still went out in parallel, saw at most ${ca.maxInFlight}`);
      for (const lease of leases) lease.release();
    } finally {
      secrets.close();
      keys.close();
    }
  });
});
