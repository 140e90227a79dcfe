/**
 * Node impersonation (CA_TRUSTED_NODE_ACCOUNTS + ImpersonatedIdentity) on its pod cache, against the Kubernetes
 * stand-in over HTTPS (real list and watch streams, real TLS): only live pods count (not Succeeded, Failed or
 * being deleted), for the target service account and for the caller's own pod; once synced, impersonated CSRs
 * cost no API-server call (counted in the stand-in's request log), also with `--workers 2`; a dropped watch is
 * resumed from its resourceVersion and a forgotten history (410) is listed again; a cache that has not synced
 * answers UNAVAILABLE after a bounded wait (driven by a test clock).
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { KubeClusters, NodeImpersonation, type Caller, type Clock, type ImpersonationVerdict, type NodeCheckRequest } from '../src/authn/index.js';
import { loadKubeConfig } from '../src/kube/config.js';
import { WorkloadId } from '../src/pki/index.js';
import { caClient, createCertificate, opensslFacts, opensslKeyAndCsr, startCa, type CallResult, type RunningCa } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { makeTempDir } from './support/process.js';

const AGENT = { namespace: 'kube-system', serviceAccount: 'ztunnel' };
const id = (namespace: string, serviceAccount: string): string => `spiffe://cluster.local/ns/${namespace}/sa/${serviceAccount}`;

/** A clock the test moves by hand: timers fire only when `advance` passes their time. */
class ManualClock implements Clock {
  private time = 1_000_000;
  private timers: { at: number; callback: () => void; cancelled: boolean }[] = [];

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): { cancel(): void } {
    const timer = { at: this.time + ms, callback, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => void (timer.cancelled = true) };
  }

  get pending(): number {
    return this.timers.filter((t) => !t.cancelled).length;
  }

  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((t) => !t.cancelled && t.at <= this.time);
    this.timers = this.timers.filter((t) => !due.includes(t));
    for (const timer of due) timer.callback();
  }
}

async function eventually<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function assertOk(result: CallResult): string[] {
  if (!result.ok) assert.fail(`expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

function assertStatus(result: CallResult, code: grpc.status, pattern: RegExp): void {
  assert.equal(result.ok, false, 'expected an error status, got a certificate');
  if (result.ok) return;
  assert.equal(grpc.status[result.code], grpc.status[code], `status (details: ${result.details})`);
  assert.match(result.details, pattern);
}

describe('node impersonation on the pod cache (Kubernetes stand-in over HTTPS)', () => {
  let kube: KubeStandin;
  let clusters: KubeClusters;
  const temp = makeTempDir('meshca-impersonation-');
  const open: NodeImpersonation[] = [];

  before(async () => {
    kube = await startKubeStandin();
    clusters = KubeClusters.fromKubeConfigs('Kubernetes', [{ clusterId: 'Kubernetes', kubeConfig: await loadKubeConfig(kube.kubeconfigPath, {}) }]);
  });

  after(async () => {
    for (const impersonation of open) impersonation.close();
    clusters.close();
    await kube.close();
    temp.cleanup();
  });

  const impersonation = (options: { clock?: Clock; timeoutSeconds?: number } = {}): NodeImpersonation => {
    const made = new NodeImpersonation({
      clusters,
      trustedNodeAccounts: [AGENT],
      trustDomain: 'cluster.local',
      timeoutSeconds: options.timeoutSeconds ?? 5,
      ...(options.clock ? { caches: { clock: options.clock } } : {}),
    });
    open.push(made);
    return made;
  };

  /** The caller a TokenReview of the agent pod's bound token yields. */
  const agentCaller = (podName: string): Caller => ({
    authenticator: 'tokenreview',
    identity: WorkloadId.parse(id(AGENT.namespace, AGENT.serviceAccount)),
    subject: `system:serviceaccount:${AGENT.namespace}:${AGENT.serviceAccount}`,
    kubernetes: { clusterId: 'Kubernetes', ...AGENT, podName, podUid: kube.state.get('pods', AGENT.namespace, podName)!.metadata.uid! },
  });

  /** Asks until the verdict has `kind` (watch events arrive asynchronously), then returns it. */
  const verdictBecomes = (impersonator: NodeImpersonation, caller: Caller, target: string, kind: ImpersonationVerdict['kind']): Promise<ImpersonationVerdict> =>
    eventually(`a ${kind} verdict for ${target}`, async () => {
      const verdict = await impersonator.authorize(caller, target);
      return verdict.kind === kind ? verdict : undefined;
    });

  test('an ImpersonatedIdentity in a trust-domain alias is issued in the current trust domain; one in another domain is refused', async () => {
    const asked: NodeCheckRequest[] = [];
    const impersonator = new NodeImpersonation({
      clusters,
      trustedNodeAccounts: [AGENT],
      trustDomain: 'cluster.local',
      trustDomainAliases: ['old.td'],
      timeoutSeconds: 5,
      nodeCheck: (request) => {
        asked.push(request);
        return Promise.resolve({ kind: 'ok', node: 'node-alias' });
      },
    });
    const caller: Caller = {
      authenticator: 'tokenreview',
      identity: WorkloadId.parse(id(AGENT.namespace, AGENT.serviceAccount)),
      subject: `system:serviceaccount:${AGENT.namespace}:${AGENT.serviceAccount}`,
      kubernetes: { clusterId: 'Kubernetes', ...AGENT, podName: 'ztunnel-alias', podUid: 'uid-alias' },
    };
    const migrated = await impersonator.authorize(caller, 'spiffe://old.td/ns/shop/sa/cart');
    assert.deepEqual(migrated.kind === 'ok' ? { ...migrated, identity: migrated.identity.uri } : migrated, {
      kind: 'ok',
      identity: id('shop', 'cart'),
      node: 'node-alias',
      migratedFrom: 'spiffe://old.td/ns/shop/sa/cart',
    });
    assert.deepEqual(asked.map((r) => r.target), [{ namespace: 'shop', serviceAccount: 'cart' }], 'the node check is for the same service account');
    const current = await impersonator.authorize(caller, id('shop', 'cart'));
    assert.ok(current.kind === 'ok' && current.migratedFrom === undefined);
    assert.deepEqual(await impersonator.authorize(caller, 'spiffe://other.td/ns/shop/sa/cart'), {
      kind: 'denied',
      reason:
        'ImpersonatedIdentity is for trust domain "other.td"; this CA accepts only spiffe://cluster.local/ns/<namespace>/sa/<service account> (or its aliases "old.td"); ' +
        'if "other.td" is this mesh\'s former trust domain, add it to --trust-domain-aliases (MESHCA_TRUST_DOMAIN_ALIASES)',
    });
    assert.equal(asked.length, 2, 'a foreign trust domain is refused before any node check');
  });

  test('a Succeeded, Failed or deleting pod of the target service account on the node does not allow impersonation; a Running one does', async () => {
    kube.state.addPod({ namespace: AGENT.namespace, name: 'ztunnel-a', serviceAccount: AGENT.serviceAccount, nodeName: 'node-a' });
    kube.state.addPod({ namespace: 'shop', name: 'cart-1', serviceAccount: 'cart', nodeName: 'node-a' });
    kube.state.addPod({ namespace: 'shop', name: 'batch-done', serviceAccount: 'batch', nodeName: 'node-a', phase: 'Succeeded' });
    kube.state.addPod({ namespace: 'shop', name: 'crash-1', serviceAccount: 'crash', nodeName: 'node-a', phase: 'Failed' });
    kube.state.addPod({ namespace: 'shop', name: 'going-1', serviceAccount: 'going', nodeName: 'node-a' });
    kube.state.markPodDeleting('shop', 'going-1');
    kube.state.addPod({ namespace: 'shop', name: 'pay-1', serviceAccount: 'pay', nodeName: 'node-b' });
    const impersonator = impersonation();
    const caller = agentCaller('ztunnel-a');

    const allowed = await impersonator.authorize(caller, id('shop', 'cart'));
    assert.deepEqual(allowed.kind === 'ok' ? { kind: allowed.kind, identity: allowed.identity.uri, node: allowed.node } : allowed, { kind: 'ok', identity: id('shop', 'cart'), node: 'node-a' });
    for (const [sa, why] of [
      ['batch', 'Succeeded'],
      ['crash', 'Failed'],
      ['going', 'deleting'],
      ['pay', 'another node'],
    ] as const) {
      const verdict = await impersonator.authorize(caller, id('shop', sa));
      assert.equal(verdict.kind, 'denied', `${sa} (${why}): ${JSON.stringify(verdict)}`);
      if (verdict.kind === 'denied') assert.match(verdict.reason, new RegExp(`no pod of service account shop/${sa} runs on node node-a`));
    }

    // Changes arrive through the watch: the running pod finishes, then a new one of the same account starts.
    kube.state.setPodPhase('shop', 'cart-1', 'Succeeded');
    await verdictBecomes(impersonator, caller, id('shop', 'cart'), 'denied');
    kube.state.addPod({ namespace: 'shop', name: 'cart-2', serviceAccount: 'cart', nodeName: 'node-a' });
    await verdictBecomes(impersonator, caller, id('shop', 'cart'), 'ok');
    kube.state.setPodPhase('shop', 'cart-2', 'Failed');
    await verdictBecomes(impersonator, caller, id('shop', 'cart'), 'denied');
    kube.state.addPod({ namespace: 'shop', name: 'cart-3', serviceAccount: 'cart', nodeName: 'node-a' });
    await verdictBecomes(impersonator, caller, id('shop', 'cart'), 'ok');
    kube.state.markPodDeleting('shop', 'cart-3');
    await verdictBecomes(impersonator, caller, id('shop', 'cart'), 'denied');
  });

  test("the caller's own finished or terminating pod is refused, as is a token for a pod that is gone", async () => {
    kube.state.addPod({ namespace: AGENT.namespace, name: 'ztunnel-c', serviceAccount: AGENT.serviceAccount, nodeName: 'node-c' });
    kube.state.addPod({ namespace: 'shop', name: 'web-c', serviceAccount: 'web', nodeName: 'node-c' });
    const impersonator = impersonation();
    const caller = agentCaller('ztunnel-c');
    assert.equal((await impersonator.authorize(caller, id('shop', 'web'))).kind, 'ok');

    kube.state.setPodPhase(AGENT.namespace, 'ztunnel-c', 'Succeeded');
    const finished = await verdictBecomes(impersonator, caller, id('shop', 'web'), 'denied');
    assert.deepEqual(finished, { kind: 'denied', reason: "the caller's pod kube-system/ztunnel-c has finished (phase Succeeded)" });
    kube.state.setPodPhase(AGENT.namespace, 'ztunnel-c', 'Failed');
    const failed = await eventually('phase Failed in the cache', async () => {
      const verdict = await impersonator.authorize(caller, id('shop', 'web'));
      return verdict.kind === 'denied' && verdict.reason.includes('Failed') ? verdict : undefined;
    });
    assert.deepEqual(failed, { kind: 'denied', reason: "the caller's pod kube-system/ztunnel-c has finished (phase Failed)" });

    kube.state.setPodPhase(AGENT.namespace, 'ztunnel-c', 'Running');
    await verdictBecomes(impersonator, caller, id('shop', 'web'), 'ok');
    kube.state.markPodDeleting(AGENT.namespace, 'ztunnel-c');
    const terminating = await verdictBecomes(impersonator, caller, id('shop', 'web'), 'denied');
    assert.deepEqual(terminating, { kind: 'denied', reason: "the caller's pod kube-system/ztunnel-c is being deleted" });

    kube.state.deletePod(AGENT.namespace, 'ztunnel-c');
    const gone = await eventually('the deletion in the cache', async () => {
      const verdict = await impersonator.authorize(caller, id('shop', 'web'));
      return verdict.kind === 'denied' && /no pod has UID/.test(verdict.reason) ? verdict : undefined;
    });
    assert.match((gone as { reason: string }).reason, /does not match its token: no pod has UID/);
  });

  test('a dropped watch is resumed from its resourceVersion and sees later changes; a forgotten history (410 Expired) is listed again', async () => {
    kube.state.addPod({ namespace: AGENT.namespace, name: 'ztunnel-d', serviceAccount: AGENT.serviceAccount, nodeName: 'node-d' });
    kube.state.addPod({ namespace: 'shop', name: 'api-d', serviceAccount: 'api', nodeName: 'node-d' });
    const impersonator = impersonation();
    const caller = agentCaller('ztunnel-d');
    const mark = kube.state.requests.length;
    assert.equal((await impersonator.authorize(caller, id('shop', 'api'))).kind, 'ok');
    const cache = impersonator.podCaches!.cache('Kubernetes')!;
    const podRequests = (since: number): { lists: number; watches: string[] } => {
      const mine = kube.state.requests.slice(since).filter((r) => r.path === '/api/v1/pods');
      const watches = mine.filter((r) => new URLSearchParams(r.query).get('watch') === 'true');
      return { lists: mine.length - watches.length, watches: watches.map((r) => new URLSearchParams(r.query).get('resourceVersion') ?? '') };
    };
    await eventually('the first watch', () => (podRequests(mark).watches.length >= 1 ? true : undefined));
    assert.equal(podRequests(mark).lists, 1, 'one list to start');

    // The API server ends the stream (as it does every few minutes): the cache watches again from where it was.
    const beforeDrop = kube.state.requests.length;
    const versionBeforeDrop = Number(kube.state.resourceVersion);
    kube.state.closeWatches();
    const resumed = await eventually('a new watch', () => podRequests(beforeDrop).watches[0]);
    assert.ok(Number(resumed) >= versionBeforeDrop - 1 && resumed !== '', `resumed from resourceVersion ${resumed}, not from scratch`);
    assert.equal(podRequests(beforeDrop).lists, 0, 'a resumed watch needs no new list');
    kube.state.setPodPhase('shop', 'api-d', 'Succeeded');
    await verdictBecomes(impersonator, caller, id('shop', 'api'), 'denied');

    // The watch is down while the pod changes and the server forgets that history: the resumed watch gets 410
    // Expired and the cache lists everything again, which brings the change in.
    const beforeExpiry = kube.state.requests.length;
    kube.state.forbidden.add('watch pods');
    kube.state.closeWatches();
    await eventually('a refused watch', () => (kube.state.requests.slice(beforeExpiry).some((r) => r.path === '/api/v1/pods') ? true : undefined));
    kube.state.setPodPhase('shop', 'api-d', 'Running');
    kube.state.compact();
    kube.state.forbidden.delete('watch pods');
    const listsBefore = cache.lists;
    await verdictBecomes(impersonator, caller, id('shop', 'api'), 'ok');
    assert.equal(cache.lists, listsBefore + 1, 'the expired watch led to exactly one new list');
    assert.ok(podRequests(beforeExpiry).lists >= 1, 'the new list is in the request log');
  });

  test('a cache that has not synced makes requests wait a bounded time, then answers UNAVAILABLE', async () => {
    const clock = new ManualClock();
    kube.state.addPod({ namespace: AGENT.namespace, name: 'ztunnel-e', serviceAccount: AGENT.serviceAccount, nodeName: 'node-e' });
    kube.state.addPod({ namespace: 'shop', name: 'db-e', serviceAccount: 'db', nodeName: 'node-e' });
    kube.state.forbidden.add('list pods');
    const impersonator = impersonation({ clock, timeoutSeconds: 3 });
    try {
      const cache = impersonator.podCaches!.cache('Kubernetes')!;
      // The list is refused (403); the cache waits for its backoff timer on the test clock.
      await eventually('the refused list', () => (clock.pending > 0 ? true : undefined));
      let settled = false;
      const verdict = impersonator.authorize(agentCaller('ztunnel-e'), id('shop', 'db'));
      void verdict.then(() => (settled = true));
      clock.advance(2_999);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(settled, false, 'the request still waits before its bound');
      clock.advance(1);
      const answer = await verdict;
      assert.equal(answer.kind, 'unavailable');
      if (answer.kind === 'unavailable') {
        assert.match(answer.reason, /pod cache of cluster "Kubernetes" has not synced .*HTTP 403.*waited 3s; retry later \(the CA needs list and watch on pods\)/);
      }
      assert.equal(cache.size, 0);
    } finally {
      kube.state.forbidden.delete('list pods');
    }
    // Allowed again, the cache syncs on its next attempt (the backoff timer, on the test clock) and answers.
    clock.advance(60_000);
    assert.equal((await verdictBecomes(impersonator, agentCaller('ztunnel-e'), id('shop', 'db'), 'ok')).kind, 'ok');
  });

  for (const workers of [1, 2]) {
    test(`meshca ca${workers > 1 ? ` --workers ${workers}` : ''}: after the pod cache has synced, impersonated CSRs cost zero API-server calls, and a lost watch does not stop them at once`, async () => {
      // Only the CA's own pod requests in the log from here on (a watch an earlier cache was opening may still land).
      for (const earlier of open.splice(0)) earlier.close();
      await new Promise((resolve) => setTimeout(resolve, 300));
      kube.state.addPod({ namespace: AGENT.namespace, name: `ztunnel-w${workers}`, serviceAccount: AGENT.serviceAccount, nodeName: `node-w${workers}` });
      kube.state.addPod({ namespace: 'shop', name: `cart-w${workers}`, serviceAccount: 'cart', nodeName: `node-w${workers}` });
      kube.state.addPod({ namespace: 'shop', name: `done-w${workers}`, serviceAccount: 'done', nodeName: `node-w${workers}`, phase: 'Succeeded' });
      const workload = opensslKeyAndCsr(temp.dir, `workload-${workers}`);
      const mark = kube.state.requests.length;
      let ca: RunningCa | undefined;
      try {
        ca = await startCa(path.join(temp.dir, `state-${workers}`), [
          '--kubeconfig',
          kube.kubeconfigPath,
          '--trusted-node-accounts',
          `${AGENT.namespace}/${AGENT.serviceAccount}`,
          '--max-csr-per-identity-per-minute',
          '0',
          '--trust-domain-aliases',
          'old.td',
          ...(workers > 1 ? ['--workers', String(workers)] : []),
        ]);
        const client = caClient(ca.grpcAddress, ca.rootPem);
        try {
          const token = await kube.mintToken({ namespace: AGENT.namespace, serviceAccount: AGENT.serviceAccount, podName: `ztunnel-w${workers}` });
          const ask = (sa: string): Promise<CallResult> => createCertificate(client, { csr: workload.csrPem, token, metadata: { ImpersonatedIdentity: id('shop', sa) } });
          const first = assertOk(await ask('cart'));
          assert.match(opensslFacts(first[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/cart\s*\n/);
          assertStatus(await ask('done'), grpc.status.UNAUTHENTICATED, /no pod of service account shop\/done runs on node node-w\d \(finished pods/);
          // An ImpersonatedIdentity in the trust-domain alias is issued in the current trust domain, and the audit says so.
          const migrated = assertOk(
            await createCertificate(client, { csr: workload.csrPem, token, metadata: { ImpersonatedIdentity: 'spiffe://old.td/ns/shop/sa/cart' } }),
          );
          assert.match(opensslFacts(migrated[0]!).text, /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/cart\s*\n/);
          const audit = await eventually('the audit line of the migrated identity', () =>
            ca!.proc.records.find((r) => r.msg === 'certificate issued' && r.migratedFrom === 'spiffe://old.td/ns/shop/sa/cart'),
          );
          assert.deepEqual([audit.spiffeId, audit.impersonated], [id('shop', 'cart'), true]);

          // Steady state: the token review is cached and the pods are in the cache.
          const steady = kube.state.requests.length;
          const results = await Promise.all(Array.from({ length: 20 }, () => ask('cart')));
          for (const result of results) assertOk(result);
          const calls = kube.state.requests.slice(steady).map((r) => `${r.method} ${r.path}${r.query}`);
          assert.deepEqual(calls, [], 'no API-server call for 20 impersonated CSRs');

          // The pods were listed and watched once, by one process, however many workers serve.
          const podCalls = kube.state.requests.slice(mark).filter((r) => r.path === '/api/v1/pods');
          const watches = podCalls.filter((r) => r.query.includes('watch=true'));
          assert.equal(podCalls.length - watches.length, 1, `one pod list; saw ${podCalls.map((r) => r.query).join(' ')}`);
          assert.equal(watches.length, 1, `one pod watch; saw ${podCalls.map((r) => r.query).join(' ')}`);
          assert.equal(watches.length, 1, 'one pod watch');
          assert.equal(kube.state.requests.slice(mark).filter((r) => /\/pods\/[^/]+$/.test(r.path)).length, 0, 'no pod read by name');

          // A lost watch (refused, streams closed) does not stop impersonation at once: the cache answers from its
          // last state within its staleness bound (60 s) while it reconnects.
          kube.state.forbidden.add('watch pods');
          kube.state.closeWatches();
          assertOk(await ask('cart'));
        } finally {
          kube.state.forbidden.delete('watch pods');
          client.close();
        }
      } finally {
        await ca?.proc.stop();
      }
    });
  }

  test('meshca ca: a pod cache that cannot sync answers impersonated CSRs UNAVAILABLE within --tokenreview-timeout', async () => {
    for (const earlier of open.splice(0)) earlier.close();
    kube.state.addPod({ namespace: AGENT.namespace, name: 'ztunnel-u', serviceAccount: AGENT.serviceAccount, nodeName: 'node-u' });
    kube.state.addPod({ namespace: 'shop', name: 'cart-u', serviceAccount: 'cart', nodeName: 'node-u' });
    const workload = opensslKeyAndCsr(temp.dir, 'workload-u');
    kube.state.forbidden.add('list pods');
    let ca: RunningCa | undefined;
    try {
      ca = await startCa(path.join(temp.dir, 'state-u'), [
        '--kubeconfig',
        kube.kubeconfigPath,
        '--trusted-node-accounts',
        `${AGENT.namespace}/${AGENT.serviceAccount}`,
        '--tokenreview-timeout',
        '0.5s',
      ]);
      const client = caClient(ca.grpcAddress, ca.rootPem);
      try {
        const token = await kube.mintToken({ namespace: AGENT.namespace, serviceAccount: AGENT.serviceAccount, podName: 'ztunnel-u' });
        const result = await createCertificate(client, { csr: workload.csrPem, token, metadata: { ImpersonatedIdentity: id('shop', 'cart') } });
        assertStatus(result, grpc.status.UNAVAILABLE, /^request impersonation authentication failure: the pod cache of cluster "Kubernetes" has not synced .*HTTP 403.*retry later/);
        // The same caller without impersonation is served: only the node check waits for the cache.
        assertOk(await createCertificate(client, { csr: workload.csrPem, token }));
      } finally {
        client.close();
      }
    } finally {
      kube.state.forbidden.delete('list pods');
      await ca?.proc.stop();
    }
  });
});
