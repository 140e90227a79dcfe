/**
 * The rotation schedule: each renewal must take place when r = (NotAfter − renewal time) / (NotAfter − time the
 * previous secret arrived) is the grace ratio drawn within SECRET_GRACE_PERIOD_RATIO ± SECRET_GRACE_PERIOD_RATIO_JITTER.
 *  - On virtual time (the agent's identity cache with node:test's mock timers and an injected random draw), the
 *    renewal happens at exactly the computed millisecond, and not one millisecond before, over several rotations.
 *  - End to end, with the real `meshca ca` and `meshca agent` on real seconds, one rotation arrives as an SDS push
 *    no earlier than the upper end of the jitter allows, and well before expiry (a generous bound: the machine may
 *    be loaded, and this checks the wiring, not the timer's accuracy). The ratio is set to 0.75 (renewal a quarter
 *    into the 10 s lifetime), so the setting is seen to reach the agent and the wait is 2.5 s, not 5.
 *
 * Real seconds: the end-to-end test below is one of the two agent tests that wait for a real certificate's renewal
 * (the other is the CA killed with SIGKILL in agent-faults.test.ts). Every other schedule is asserted on virtual
 * time (here, identity-cache.test.ts, agent-rotation.test.ts, renewal-schedule.test.ts, agent-faults.test.ts).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it, mock } from 'node:test';
import { KeyPool } from '../src/agent/keys.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { tokenCredential } from '../src/agent/credentials.js';
import { WorkloadSecrets } from '../src/agent/workload-secrets.js';
import { startCa, type RunningCa } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { decodeSecret, InProcessCa, memoryLogger, RawSotwStream, startAgentProcess, tempDir, workloadJwt, type AgentProcess } from './agent-helpers.js';

const KEY = { algorithm: 'ECDSA', rsaBits: 2048, curve: 'P256', pkcs8: false } as const;

describe('rotation at the grace-period ratio, on virtual time', () => {
  afterEach(() => mock.timers.reset());

  it('renews at exactly NotAfter − r·(NotAfter − received) for each drawn r in 0.5 ± 0.01, and not a millisecond earlier', async () => {
    const start = Date.parse('2031-05-01T00:00:00Z');
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: start });
    // Each issuance draws the jitter's size, then its side (below 0.5 adds): r = 0.5 + 0.01·size or 0.5 − 0.01·size.
    const draws = [
      [0.3, 0.1, 0.503],
      [0.8, 0.9, 0.492],
      [1, 0.2, 0.51],
      [1, 0.7, 0.49],
    ] as const;
    const randoms: number[] = draws.flatMap(([size, side]) => [size, side]);
    const ca = new InProcessCa();
    const keys = new KeyPool(KEY, 0);
    const secrets = new WorkloadSecrets({
      ca,
      keys,
      key: KEY,
      ttlSeconds: 20,
      grace: { ratio: 0.5, jitter: 0.01 },
      idleTtlMs: 3_600_000,
      trustDomain: 'cluster.local',
      log: memoryLogger().log,
      metrics: new AgentMetrics({ defaultMetrics: false }),
      clock: () => Date.now(),
      random: () => {
        const next = randoms.shift();
        assert.ok(next !== undefined, 'no more grace draws were expected');
        return next;
      },
    });
    // A renewal starts by taking a key: counted synchronously, so a timer that fired early is seen at once.
    let keysTaken = 0;
    const take = keys.take.bind(keys);
    keys.take = () => {
      keysTaken++;
      return take();
    };
    const turns = async (count: number): Promise<void> => {
      for (let i = 0; i < count; i++) await new Promise((resolve) => setImmediate(resolve));
    };
    /** Key generation and signing are real work: wait for their outcome by real time (Date is virtual). */
    const until = async (what: string, predicate: () => boolean): Promise<void> => {
      const deadline = performance.now() + 10_000;
      while (!predicate() && performance.now() < deadline) await turns(10);
      assert.ok(predicate(), what);
    };
    try {
      ca.addWorkload('tok-rotating', 'shop', 'rotating');
      const lease = await secrets.acquire(tokenCredential(workloadJwt('tok-rotating')));
      let pushes = 0;
      lease.onChange(() => pushes++);
      let receivedAt = Date.now();
      let secret = lease.current();
      const observed: number[] = [];
      for (let i = 0; i < draws.length - 1; i++) {
        const ratio = draws[i]![2];
        const notAfter = secret.leaf.notAfter.getTime();
        const lifetime = notAfter - receivedAt;
        assert.ok(lifetime > 19_000 && lifetime <= 20_000, `lifetime ${lifetime} ms follows SECRET_TTL=20s`);
        const renewAt = Math.floor(receivedAt + (1 - ratio) * lifetime);
        assert.equal(secret.renewAt, renewAt, `rotation ${i + 1}: scheduled at r = ${ratio}`);
        const takenBefore = keysTaken;
        mock.timers.tick(renewAt - 1 - Date.now());
        await turns(50);
        assert.equal(keysTaken, takenBefore, `rotation ${i + 1}: no renewal started ${renewAt - receivedAt - 1} ms after receipt`);
        assert.equal(pushes, i);
        assert.equal(lease.current().leaf.serialHex, secret.leaf.serialHex);
        mock.timers.tick(1);
        await turns(5);
        assert.equal(keysTaken, takenBefore + 1, `rotation ${i + 1}: renewal started at ${renewAt - receivedAt} ms (r = ${ratio})`);
        await until(`rotation ${i + 1}: the renewed secret reaches the lease`, () => pushes === i + 1);
        assert.equal(Date.now(), renewAt, 'virtual time stood still while the CA answered');
        const next = lease.current();
        assert.notEqual(next.leaf.serialHex, secret.leaf.serialHex);
        assert.deepEqual(next.leaf.sans.uris, ['spiffe://cluster.local/ns/shop/sa/rotating']);
        observed.push((notAfter - Date.now()) / lifetime);
        secret = next;
        receivedAt = Date.now();
      }
      observed.forEach((r, i) => assert.ok(Math.abs(r - draws[i]![2]) < 0.0001, `rotation ${i + 1}: r = ${r}, drawn ${draws[i]![2]}`));
      lease.release();
    } finally {
      secrets.close();
      keys.close();
    }
  });
});

describe('rotation at the grace-period ratio, end to end on real seconds (SECRET_TTL=10s, SECRET_GRACE_PERIOD_RATIO=0.75)', () => {
  let kube: KubeStandin;
  let ca: RunningCa;
  let agent: AgentProcess;
  const caState = tempDir('meshca-ca-rotation-');

  before(async () => {
    kube = await startKubeStandin();
    ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
    agent = await startAgentProcess({ caAddress: ca.grpcAddress, caRootPem: ca.rootPem, env: { SECRET_TTL: '10s', SECRET_GRACE_PERIOD_RATIO: '0.75' } });
  });

  after(async () => {
    await agent?.stop();
    await ca?.proc.stop();
    await kube?.close();
    caState.cleanup();
  });

  it('pushes a renewed secret no earlier than 76% of its lifetime before expiry, and well before expiry', async () => {
    const token = await kube.mintToken({ namespace: 'shop', serviceAccount: 'rotating' });
    const stream = new RawSotwStream(agent.client, token);
    stream.subscribe(['default']);
    const response = await stream.next(20_000);
    // The agent received the secret before this client did: its lifetime as the agent saw it is at least this long.
    const receivedAt = Date.now();
    const secret = decodeSecret(response.resources[0]!);
    stream.ack(response, ['default']);
    const notAfter = secret.leaf!.notAfter.getTime();
    const lifetime = notAfter - receivedAt;
    assert.ok(lifetime > 5_000 && lifetime <= 10_000, `lifetime ${lifetime} ms follows SECRET_TTL=10s`);
    const pushed = await stream.next(lifetime);
    const pushedAt = Date.now();
    const next = decodeSecret(pushed.resources[0]!);
    assert.notEqual(next.leaf!.serialHex, secret.leaf!.serialHex);
    assert.equal(next.spiffeId, 'spiffe://cluster.local/ns/shop/sa/rotating');
    const ratio = (notAfter - pushedAt) / lifetime;
    console.log(`# observed grace ratio on real seconds: ${ratio.toFixed(4)}`);
    // Never early (the timer cannot fire before its time; 50 ms for the agent having received it first) ...
    assert.ok(ratio <= 0.76 + 50 / lifetime, `pushed at r = ${ratio.toFixed(4)}: earlier than 0.75 + 0.01 allows`);
    // ... and, however loaded the machine (a generous bound: up to 5.5 s late), with a good part of the lifetime left.
    assert.ok(ratio >= 0.2, `pushed at r = ${ratio.toFixed(4)}: too close to expiry`);
    stream.close();
  });
});
