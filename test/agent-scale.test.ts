/**
 * Concurrent SDS streams on one real agent (ECDSA keys), against the real CA: "pods" of 25 service accounts
 * (`npm test` 125 pods, 250 streams; `npm run soak` 250 pods, MESHCA_SCALE_PODS), each pod opening a `default` and a `ROOTCA` stream like an Envoy sidecar does. Every stream must get
 * its own workload's secret. The agent's memory per stream is printed (reported, not asserted).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connectSds } from '../src/agent/sds-client.js';
import type { SdsClient } from '../src/wire/protos.js';
import { startCa, type RunningCa } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { decodeSecret, metricValue, RawSotwStream, startAgentProcess, tempDir, type AgentProcess } from './agent-helpers.js';

/** Each pod's token is a new proof (one CSR to the CA), which is most of this test's cost. */
const PODS = Math.max(25, Number(process.env.MESHCA_SCALE_PODS ?? 125));
const SERVICE_ACCOUNTS = 25;

describe(`${PODS * 2} concurrent SDS streams on one agent`, () => {
  let kube: KubeStandin;
  let ca: RunningCa;
  let agent: AgentProcess;
  const caState = tempDir('meshca-ca-scale-');
  const clients: SdsClient[] = [];

  before(async () => {
    kube = await startKubeStandin();
    ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
    agent = await startAgentProcess({ caAddress: ca.grpcAddress, caRootPem: ca.rootPem });
  });

  after(async () => {
    for (const client of clients) client.close();
    await agent?.stop();
    await ca?.proc.stop();
    await kube?.close();
    caState.cleanup();
  });

  it('serves every stream its own workload secret and reports memory per stream', async () => {
    const pods = await Promise.all(
      Array.from({ length: PODS }, async (_, i) => {
        const serviceAccount = `sa-${i % SERVICE_ACCOUNTS}`;
        return { serviceAccount, token: await kube.mintToken({ namespace: 'scale', serviceAccount, podName: `pod-${i}` }) };
      }),
    );
    // One channel per group of pods, as separate Envoys would have (the socket is shared).
    for (let i = 0; i < SERVICE_ACCOUNTS; i++) clients.push(connectSds(agent.socket));
    const before = await agent.metrics();
    const started = Date.now();
    const streams: { stream: RawSotwStream; serviceAccount: string; name: string }[] = [];
    for (const [i, pod] of pods.entries()) {
      for (const name of ['default', 'ROOTCA']) {
        const stream = new RawSotwStream(clients[i % clients.length]!, pod.token);
        stream.subscribe([name]);
        streams.push({ stream, serviceAccount: pod.serviceAccount, name });
      }
    }
    const responses = await Promise.all(streams.map(({ stream }) => stream.next(60_000)));
    const elapsedMs = Date.now() - started;
    responses.forEach((response, i) => {
      const { stream, serviceAccount, name } = streams[i]!;
      stream.ack(response, [name]);
      const secret = decodeSecret(response.resources[0]!);
      if (name === 'default') {
        assert.equal(secret.spiffeId, `spiffe://cluster.local/ns/scale/sa/${serviceAccount}`);
        assert.match(secret.keyPem!, /BEGIN EC PRIVATE KEY/);
      } else {
        assert.equal(secret.rootsPem!.trim(), ca.rootPem.trim());
      }
    });
    const during = await agent.metrics();
    assert.equal(metricValue(during, 'meshca_sds_connected_streams', { api: 'sotw' }), streams.length);
    assert.equal(metricValue(during, 'meshca_agent_secrets_cached'), SERVICE_ACCOUNTS);
    const rss = (text: string): number => metricValue(text, 'istio_agent_process_resident_memory_bytes');
    const heap = (text: string): number => metricValue(text, 'istio_agent_nodejs_heap_size_used_bytes');
    const perStream = (value: (text: string) => number): string => ((value(during) - value(before)) / streams.length / 1024).toFixed(1);
    console.log(
      `# ${streams.length} streams served in ${elapsedMs} ms; agent memory per stream: ` +
        `RSS ${perStream(rss)} KiB, heap ${perStream(heap)} KiB (RSS ${(rss(during) / 1048576).toFixed(1)} MiB total); ` +
        `${metricValue(during, 'istio_agent_num_outgoing_requests', { request_type: 'csr' })} CSRs`,
    );
    for (const { stream } of streams) stream.close();
  });
});
