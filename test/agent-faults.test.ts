/**
 * Faults around the node agent:
 *  - the agent killed with SIGKILL and restarted on the same socket: the stale socket is replaced, Envoy-like
 *    clients (SecretWatch, reconnecting by themselves) get valid secrets again, none is left without one;
 *  - the CA killed with SIGKILL while the agent renews and new workloads keep arriving, then restarted: the agent
 *    recovers by itself, renewals resume under the same root, and the workloads that arrived meanwhile are served;
 *  - a node clock 5 minutes slow or fast: certificates are accepted and renewed at the grace ratio of their real
 *    lifetime, never in a loop and never after they expire (on virtual time: the agent in process on a ManualClock).
 * Real seconds: the SIGKILL tests run the real binaries, and the CA one waits for real renewals (SECRET_TTL=6s) to
 * fail and then succeed; it waits for events (log records, metrics, pushes), never for a fixed number of seconds.
 * It is one of the two agent tests on real seconds (the other: agent-rotation-e2e.test.ts).
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { CaCallError, type CaClient, type CertificateRequest } from '../src/agent/index.js';
import { MAX_CLOCK_SKEW_MS, renewalSchedule, verificationTime } from '../src/agent/rotation.js';
import { connectSds, SecretWatch, workloadTokenMetadata, type SecretUpdate } from '../src/agent/sds-client.js';
import {
  certificateToPem,
  certificatesFromPem,
  createCaCertificate,
  LeafIssuer,
  parseCertificate,
  parseCsr,
  verifyCsr,
  type ParsedCertificate,
  generateKeyPairFor,
} from '../src/pki/index.js';
import type { SdsClient } from '../src/wire/protos.js';
import { startCa, type RunningCa } from './ca-helpers.js';
import {
  decodeSecret,
  eventually,
  metricsText,
  metricValue,
  RawSotwStream,
  ReadyKeys,
  startAgentProcess,
  startTestAgent,
  tempDir,
  tokenLabel,
  type AgentProcess,
} from './agent-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { ManualClock, wholeSecondNow } from './support/manual-clock.js';
import { opensslVerify } from './support/openssl.js';

const MINUTE = 60_000;

function leafOf(chainPem: string): ParsedCertificate {
  return parseCertificate(certificatesFromPem(chainPem)[0]!);
}

function firstPem(chainPem: string): string {
  return chainPem.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
}

/** An Envoy sidecar's `default` secret: a SecretWatch that reconnects by itself, with what it has applied. */
interface Workload {
  spiffeId: string;
  updates: SecretUpdate[];
  streamErrors: grpc.status[];
  watch: SecretWatch;
  client: SdsClient;
}

function startWorkload(socket: string, token: string, spiffeId: string): Workload {
  const client = connectSds(socket);
  const workload: Workload = { spiffeId, updates: [], streamErrors: [], client, watch: undefined as unknown as SecretWatch };
  workload.watch = new SecretWatch(
    client,
    { name: 'default', metadata: () => workloadTokenMetadata(token) },
    {
      onUpdate: (update) => workload.updates.push(update),
      onStreamError: (error) => workload.streamErrors.push(error.code),
    },
  );
  return workload;
}

function stopWorkload(workload: Workload): void {
  workload.watch.close();
  workload.client.close();
}

/** The workload holds a secret for its own identity that is valid now and verifies against `rootPem`. */
function assertValidSecret(workload: Workload, rootPem: string, label: string): ParsedCertificate {
  const update = workload.updates.at(-1);
  assert.ok(update?.certificateChain, `${label}: ${workload.spiffeId} has a secret`);
  const leaf = leafOf(update.certificateChain);
  assert.equal(leaf.sans.uris[0], workload.spiffeId, label);
  assert.ok(leaf.notAfter.getTime() > Date.now(), `${label}: ${workload.spiffeId} holds an unexpired certificate`);
  const verified = opensslVerify(firstPem(update.certificateChain), '', rootPem);
  assert.ok(verified.ok, `${label}: ${verified.output}`);
  return leaf;
}

describe('agent and CA killed with SIGKILL (real binaries)', () => {
  let kube: KubeStandin;
  let ca: RunningCa | null = null;
  const caState = tempDir('meshca-ca-faults-');
  const run = tempDir('meshca-agent-faults-');
  const socket = path.join(run.dir, 'sds.sock');
  const agents: AgentProcess[] = [];
  const workloads: Workload[] = [];

  const startNodeAgent = async (): Promise<AgentProcess> => {
    // The same socket path every time, like a DaemonSet's host path; the helper's own socket flag is overridden.
    const agent = await startAgentProcess({ caAddress: ca!.grpcAddress, caRootPem: ca!.rootPem, env: { SECRET_TTL: '6s' }, args: ['--sds-socket', socket] });
    agents.push(agent);
    return agent;
  };
  const metrics = async (agent: AgentProcess): Promise<string> => (await fetch(`${agent.statusUrl}/metrics`)).text();

  before(async () => {
    kube = await startKubeStandin();
    ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
  });
  after(async () => {
    workloads.forEach(stopWorkload);
    for (const agent of agents) await agent.stop();
    await ca?.proc.stop();
    await kube?.close();
    caState.cleanup();
    run.cleanup();
  });

  /** Six Envoy-like sidecars of three service accounts on the node, each with its own token. */
  const startWorkloads = async (): Promise<void> => {
    for (let i = 0; i < 6; i++) {
      const serviceAccount = `sa-${i % 3}`;
      const token = await kube.mintToken({ namespace: 'faults', serviceAccount, podName: `pod-${i}` });
      workloads.push(startWorkload(socket, token, `spiffe://cluster.local/ns/faults/sa/${serviceAccount}`));
    }
    await eventually(() => workloads.every((w) => w.updates.length > 0), 'every workload to get its first secret', 20_000);
  };

  it('replaces the stale socket after SIGKILL, and every Envoy-like client reconnects by itself and gets a valid secret', async () => {
    const first = await startNodeAgent();
    await startWorkloads();
    const before = workloads.map((w) => assertValidSecret(w, ca!.rootPem, 'before the kill'));

    await first.proc.stop('SIGKILL');
    assert.ok(existsSync(socket) && statSync(socket).isSocket(), 'the killed agent left its socket behind');
    await eventually(() => workloads.every((w) => w.streamErrors.length > 0), 'every client to notice the dead agent');
    assert.ok(workloads.every((w) => w.streamErrors.every((code) => code === grpc.status.UNAVAILABLE)), 'clients saw UNAVAILABLE');

    const second = await startNodeAgent();
    assert.equal(statSync(socket).mode & 0o777, 0o666, 'the new agent owns a fresh socket');
    const updatesAtRestart = workloads.map((w) => w.updates.length);
    await eventually(() => workloads.every((w, i) => w.updates.length > updatesAtRestart[i]!), 'every client to get a secret from the new agent', 30_000);
    workloads.forEach((w, i) => {
      const leaf = assertValidSecret(w, ca!.rootPem, 'after the restart');
      assert.notEqual(leaf.serialHex, before[i]!.serialHex, 'issued by the new agent');
    });
    assert.equal(metricValue(await metrics(second), 'meshca_sds_connected_streams', { api: 'sotw' }), workloads.length);
  });

  it('recovers by itself from a CA killed with SIGKILL while renewing and taking new workloads, under the same root', async () => {
    // Continues with the agent and workloads of the previous test when it ran; stands on its own otherwise.
    const agent = agents.find((a) => a.proc.child.exitCode === null && a.proc.child.signalCode === null) ?? (await startNodeAgent());
    if (workloads.length === 0) await startWorkloads();
    const arrivalsClient = connectSds(socket);
    const rootBefore = ca!.rootPem;
    const address = ca!.grpcAddress;
    // Load: new pods keep arriving, each with its own token (a CSR each), through the outage.
    let loading = true;
    const arrivals: Promise<ReturnType<typeof decodeSecret> & { receivedAt: number }>[] = [];
    const load = (async () => {
      for (let i = 0; loading; i++) {
        const token = await kube.mintToken({ namespace: 'faults', serviceAccount: 'arrival', podName: `arrival-${i}` });
        const stream = new RawSotwStream(arrivalsClient, token);
        stream.subscribe(['default']);
        arrivals.push(
          stream.next(60_000).then(
            (response) => {
              stream.close();
              return { ...decodeSecret(response.resources[0]!), receivedAt: Date.now() };
            },
            (error: unknown) => {
              stream.close();
              throw error;
            },
          ),
        );
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
    })();
    try {
      // The kill comes once a new workload has been served by the live CA (an event, not a fixed second).
      await eventually(() => arrivals.length > 0, 'the first new workload to ask', 20_000);
      await arrivals[0];
      const updatesAtKill = workloads.map((w) => w.updates.length);
      const recordsAtKill = agent.proc.records.length;
      await ca!.proc.stop('SIGKILL');
      ca = null;
      await eventually(
        async () => metricValue(await metrics(agent), 'istio_agent_num_failed_outgoing_requests', { request_type: 'csr', error_code: 'UNAVAILABLE' }) >= 3,
        'CSRs to fail while the CA is dead',
        20_000,
      );
      // The CA stays dead until the renewal of every identity on the node (due every ~3 s with SECRET_TTL=6s) has
      // failed at least once: an event in the agent's log, not a fixed number of seconds.
      const identities = new Set(workloads.map((w) => w.spiffeId));
      const failedRenewals = (): Set<unknown> =>
        new Set(
          agent.proc.records
            .slice(recordsAtKill)
            .filter((r) => r.msg === 'certificate renewal failed; serving the current certificate and retrying')
            .map((r) => r.identity),
        );
      await eventually(() => [...identities].every((id) => failedRenewals().has(id)), 'the renewal of every identity to fail while the CA is dead', 20_000);
      // Workloads keep their current secret meanwhile (a renewal due before the kill may have landed just after it).
      const updatesAtRestart = workloads.map((w) => w.updates.length);
      workloads.forEach((w, i) => assert.ok(updatesAtRestart[i]! <= updatesAtKill[i]! + 1, `${w.spiffeId}: no renewal while the CA was dead`));

      ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath, '--grpc-addr', address]);
      const restartedAt = Date.now();
      assert.equal(ca.rootPem, rootBefore, 'the CA came back with the same root');
      await eventually(() => workloads.every((w, i) => w.updates.length > updatesAtRestart[i]!), 'every workload to be renewed after the restart', 45_000);
      for (const workload of workloads) {
        const leaf = assertValidSecret(workload, rootBefore, 'after the CA restart');
        // Backdated by the CA's 2 minutes: issued after the restart means NotBefore after restart − 2 min − 1 s.
        assert.ok(leaf.notBefore.getTime() >= restartedAt - 2 * MINUTE - 1000, 'renewed by the restarted CA');
      }
    } finally {
      loading = false;
      await load;
    }
    const served = await Promise.all(arrivals);
    arrivalsClient.close();
    assert.ok(served.length >= 10, `${served.length} workloads arrived during the test`);
    for (const secret of served) {
      assert.equal(secret.spiffeId, 'spiffe://cluster.local/ns/faults/sa/arrival');
      // Checked at the time it was served: these certificates live 6 s.
      const verified = opensslVerify(firstPem(secret.chainPem!), '', rootBefore, ['-attime', String(Math.floor(secret.receivedAt / 1000))]);
      assert.ok(verified.ok, verified.output);
    }
    const text = await metrics(agent);
    assert.equal(metricValue(text, 'meshca_agent_expired_certificates'), 0, 'no workload was left with an expired certificate');
    assert.ok(metricValue(text, 'meshca_agent_rotations_total', { result: 'failure' }) >= 1, 'the failed renewals were counted');
  });
});

/**
 * A CA whose clock is `offsetMs` ahead of this node's (negative: behind), backdating like meshca (2 minutes).
 * Its root is old, as a real one would be, so only the leaf's times show the skew.
 */
class SkewedCa implements CaClient {
  readonly address = 'skewed-ca';
  calls = 0;
  readonly rootPem: string;
  private readonly issuer: LeafIssuer;

  constructor(
    private readonly offsetMs: number,
    private readonly nodeNow: () => number,
  ) {
    const { privateKey }: { privateKey: KeyObject } = generateKeyPairFor('ec-p256');
    const root = parseCertificate(
      createCaCertificate({
        subject: { organization: 'meshca-test', commonName: 'skewed root' },
        subjectKey: privateKey,
        notBefore: new Date(nodeNow() - 86400_000),
        notAfter: new Date(nodeNow() + 30 * 86400_000),
      }),
    );
    this.rootPem = certificateToPem(root.der);
    this.issuer = new LeafIssuer({ certificate: root, privateKey });
  }

  /** The CA's clock. */
  now(): number {
    return this.nodeNow() + this.offsetMs;
  }

  async createCertificate(request: CertificateRequest): Promise<string[]> {
    this.calls++;
    if (request.token === undefined || tokenLabel(request.token) !== 'tok-skew') throw new CaCallError(grpc.status.UNAUTHENTICATED, 'request authenticate failure');
    const csr = parseCsr(request.csrPem);
    verifyCsr(csr);
    const leaf = this.issuer.issue({ spkiDer: csr.spkiDer, uris: ['spiffe://cluster.local/ns/clock/sa/skewed'], ttlSeconds: request.ttlSeconds, now: this.now() });
    return [certificateToPem(leaf.der), this.rootPem];
  }

  async waitUntilReachable(): Promise<void> {}

  close(): void {}
}

describe('a node clock 5 minutes off', () => {
  it('judges a fresh certificate by its own validity when the local clock disagrees', () => {
    const estimateLifetime = (validity: { notBefore: number; notAfter: number }, receivedAt: number, requestedMs: number) => {
      const { lifetimeMs, clock } = renewalSchedule(validity, receivedAt, requestedMs, 0.5);
      return { lifetimeMs, clock };
    };
    const issuedAt = 1_000_000_000_000;
    const cert = (ttlMs: number, caNow = issuedAt): { notBefore: number; notAfter: number } => ({ notBefore: caNow - 2 * MINUTE, notAfter: caNow + ttlMs });
    const day = 24 * 60 * MINUTE;
    assert.deepEqual(estimateLifetime(cert(day), issuedAt + 50, day), { lifetimeMs: day - 50, clock: 'in-sync' });
    // 5 minutes slow: NotBefore is 3 minutes in the future and NotAfter − now is 5 minutes too long.
    // The certificate's own lifetime is used, less half of X.509's one-second time resolution.
    assert.deepEqual(estimateLifetime(cert(20_000), issuedAt - 5 * MINUTE, 20_000), { lifetimeMs: 19_500, clock: 'behind' });
    // 5 minutes fast with a short lifetime: the certificate looks expired on arrival.
    assert.deepEqual(estimateLifetime(cert(20_000), issuedAt + 5 * MINUTE, 20_000), { lifetimeMs: 19_500, clock: 'ahead' });
    // 5 minutes fast with a day's lifetime: the local reading is kept; renewal comes 2.5 minutes early, not late.
    assert.deepEqual(estimateLifetime(cert(day), issuedAt + 5 * MINUTE, day), { lifetimeMs: day - 5 * MINUTE, clock: 'in-sync' });
    // A CA that grants less than asked (its maximum) is not mistaken for a skewed clock.
    assert.deepEqual(estimateLifetime(cert(60 * MINUTE), issuedAt + 20, day), { lifetimeMs: 60 * MINUTE - 20, clock: 'in-sync' });

    const validity = cert(20_000);
    assert.equal(verificationTime(validity, issuedAt), issuedAt);
    assert.equal(verificationTime(validity, issuedAt - 5 * MINUTE), validity.notBefore);
    assert.equal(verificationTime(validity, issuedAt + 5 * MINUTE), validity.notAfter);
    assert.equal(verificationTime(validity, validity.notAfter + MAX_CLOCK_SKEW_MS + 1), validity.notAfter + MAX_CLOCK_SKEW_MS + 1, 'beyond the allowance the chain check fails');
  });

  it('renews at the grace ratio of the real lifetime, once per rotation, whether the node is 5 minutes slow or fast', async () => {
    // On virtual time: the agent's cache runs on a ManualClock (the node's clock), the CA's clock is that plus the
    // skew, and SDS is real gRPC over a Unix socket. With SECRET_GRACE_PERIOD_RATIO_JITTER=0 the schedule is exact.
    const TTL_SECONDS = 8;
    const ROTATIONS = 2;
    // The agent's lifetime estimate with a skewed clock: the requested one less half of X.509's one-second
    // resolution (NotAfter may fall that much short); renewal comes at half of it.
    const ESTIMATE_MS = TTL_SECONDS * 1000 - 500;
    const cases = [
      { name: '5 minutes slow', offset: 5 * MINUTE, warning: "this node's clock seems behind the CA's" },
      { name: '5 minutes fast', offset: -5 * MINUTE, warning: "this node's clock seems ahead of the CA's" },
    ];
    for (const c of cases) {
      const clock = new ManualClock(wholeSecondNow());
      const ca = new SkewedCa(c.offset, () => clock.now());
      const keys = new ReadyKeys();
      const t = await startTestAgent({ ca, clock, keys, flags: { secretTtl: `${TTL_SECONDS}s` }, env: { SECRET_GRACE_PERIOD_RATIO_JITTER: '0' } });
      const { agent, records, client } = t;
      const stream = new RawSotwStream(client, 'tok-skew');
      try {
        stream.subscribe(['default']);
        let response = await stream.next();
        let receivedAt = clock.now();
        let leaf = decodeSecret(response.resources[0]!).leaf!;
        stream.ack(response, ['default']);
        assert.ok(records.some((r) => String(r.msg).startsWith(c.warning)), `${c.name}: the skew is reported`);
        const ratios: number[] = [];
        for (let rotation = 1; rotation <= ROTATIONS; rotation++) {
          const cached = agent.cache.identities()[0]!;
          assert.equal(cached.renewAt, receivedAt + ESTIMATE_MS / 2, `${c.name}: rotation ${rotation} scheduled at half of the estimated lifetime`);
          assert.equal(cached.expiresAt, receivedAt + ESTIMATE_MS, `${c.name}: expiry by the local clock`);
          const takenBefore = keys.taken;
          await clock.advanceTo(cached.renewAt - 1);
          assert.equal(keys.taken, takenBefore, `${c.name}: rotation ${rotation} does not start a millisecond early`);
          assert.equal(ca.calls, rotation, `${c.name}: no renewal loop`);
          await clock.advanceTo(cached.renewAt);
          response = await stream.next();
          const pushedAt = clock.now();
          assert.equal(pushedAt, cached.renewAt);
          stream.ack(response, ['default']);
          const next = decodeSecret(response.resources[0]!);
          assert.notEqual(next.leaf!.serialHex, leaf.serialHex);
          // Measured on the CA's clock, the one the certificate's validity uses.
          const notAfter = leaf.notAfter.getTime();
          const receivedOnCa = receivedAt + c.offset;
          const pushedOnCa = pushedAt + c.offset;
          assert.ok(pushedOnCa < notAfter, `${c.name}: rotation ${rotation} came before the previous certificate expired`);
          const lifetime = notAfter - receivedOnCa;
          const ratio = (notAfter - pushedOnCa) / lifetime;
          ratios.push(ratio);
          // The estimate (requested − 0.5 s) is off from the real lifetime by at most X.509's rounding: r within 0.5 ± 0.5 s / lifetime.
          assert.ok(
            Math.abs(ratio - 0.5) <= 500 / lifetime,
            `${c.name}: rotation ${rotation} at r = ${ratio.toFixed(4)} of the real lifetime, expected 0.5 ± ${(500 / lifetime).toFixed(3)}`,
          );
          assert.equal(ca.calls, 1 + rotation, `${c.name}: one CSR per rotation, no renewal loop`);
          leaf = next.leaf!;
          receivedAt = pushedAt;
        }
        const metrics = await metricsText(agent);
        assert.equal(metricValue(metrics, 'meshca_agent_expired_certificates'), 0, `${c.name}: nothing reported expired`);
        const expiry = metricValue(metrics, 'istio_agent_cert_expiry_seconds', { resource_name: 'default' });
        assert.equal(expiry, Math.round(ESTIMATE_MS / 1000), `${c.name}: istio_agent_cert_expiry_seconds ${expiry} counts down the real lifetime`);
        console.log(`# ${c.name}: grace ratios ${ratios.map((r) => r.toFixed(4)).join(', ')} of the real lifetime`);
      } finally {
        stream.close();
        await t.close();
      }
    }
  });
});
