/**
 * Part 5: one `meshca agent` (node mode, SDS on a Unix socket) with many Envoy-like streams connecting at once,
 * each with its own workload token; the agent gets its certificates from a real `meshca ca` (P-256 CA, so the
 * part measures the agent, not RSA signing). Measures the time until every stream holds its secret, the agent's
 * RSS growth per stream, and how long one rotation of every identity takes to reach all streams.
 */
import { mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import type { KubeStandin } from '../test/standins/kube.js';
import { stopChild } from './children.js';
import { CLI, SERVER_NAME, spawnLogged, startCaProcess, waitForLogLine } from './e2e.js';
import { BENCH_NAMESPACE, workloadServiceAccount } from './fixtures.js';
import { forkTs } from './ipc.js';
import { readProcessMemoryKiB } from './proc.js';
import type { SdsLoadCommand, SdsLoadMessage } from './sds-load.js';

export interface AgentRunSpec {
  keyType: 'ECDSA' | 'RSA';
  streams: number;
  /** Distinct workload identities (service accounts) among the streams; each stream still has its own token. */
  identities: number;
}

export interface AgentRun extends AgentRunSpec {
  allServedSeconds: number;
  /** VmRSS 1 s after all streams are served minus VmRSS before the first one, per stream. */
  rssPerStreamKiB: number;
  /** The same with the peak (VmHWM) instead: includes the garbage of the burst. */
  peakRssPerStreamKiB: number;
  agentRssBeforeMiB: number;
  agentRssAfterMiB: number;
  /** From the first rotated secret pushed to the last one (includes the ±1% grace-ratio jitter). */
  rotationSeconds: number | null;
  /** Streams that received a rotated secret before the timeout (1.5 x SECRET_TTL); null without rotation. */
  rotatedStreams: number | null;
  secretTtlSeconds: number;
  errors: number;
  errorSamples: string[];
}

export interface AgentResult {
  runs: AgentRun[];
}

export interface AgentOptions {
  runs: AgentRunSpec[];
  /** Wait for every identity to be renewed once (SECRET_TTL short enough for that). */
  rotation: boolean;
  kube: KubeStandin;
  dir: string;
  log: (line: string) => void;
}

const NO_ROTATION_SECRET_TTL_SECONDS = 3600;
// CPU seconds of one RSA-2048 key generation (issue 6's measurement).
const RSA_KEYGEN_SECONDS = 0.26;

/**
 * SECRET_TTL for a rotation run: renewal comes at 50% (±1%) of the lifetime, which must fall well after every
 * stream has been served (RSA identities each need a key first), yet keep the wait short.
 */
function rotationTtlSeconds(spec: AgentRunSpec): number {
  const keygenSeconds = spec.keyType === 'RSA' ? (spec.identities * RSA_KEYGEN_SECONDS) / availableParallelism() : 0;
  return Math.max(20, Math.ceil(10 + 3 * keygenSeconds));
}

async function runOne(spec: AgentRunSpec, index: number, ca: { grpcAddress: string; rootCertFile: string }, options: AgentOptions): Promise<AgentRun> {
  const label = `agent ${spec.keyType} ${spec.streams} streams`;
  const secretTtlSeconds = options.rotation ? rotationTtlSeconds(spec) : NO_ROTATION_SECRET_TTL_SECONDS;
  // Distinct tokens: streams sharing an identity are different pods of the same service account.
  const tokens = await Promise.all(
    Array.from({ length: spec.streams }, (_, i) =>
      options.kube.mintToken({
        namespace: BENCH_NAMESPACE,
        serviceAccount: workloadServiceAccount(1000 * (index + 1) + (i % spec.identities)),
        podName: `bench-${index}-${i}`,
        audiences: ['istio-ca'],
        ttlSeconds: 3600,
      }),
    ),
  );
  const agentDir = path.join(options.dir, `agent-${index}`);
  mkdirSync(agentDir, { recursive: true });
  const socketPath = path.join(agentDir, 'socket');
  const logFile = path.join(agentDir, 'agent.log');
  const agent = spawnLogged(
    CLI,
    ['agent', '--sds-socket', socketPath, '--ca-addr', ca.grpcAddress, '--ca-root-cert', ca.rootCertFile, '--status-addr', '127.0.0.1:0', '--secret-ttl', `${secretTtlSeconds}s`],
    logFile,
    { ISTIOD_SAN: SERVER_NAME, ISTIO_META_CLUSTER_ID: 'Kubernetes', ECC_SIGNATURE_ALGORITHM: spec.keyType },
  );
  const client = forkTs<SdsLoadCommand, SdsLoadMessage>(new URL('./sds-load.ts', import.meta.url), []);
  try {
    await waitForLogLine(agent, logFile, /^SDS agent ready$/, '`meshca agent`');
    const ready = await client.next();
    if (ready.type !== 'ready') throw new Error('the SDS load client did not start');
    // Let start-up work (key pool, first CA connection) settle before taking the baseline.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const rssBefore = readProcessMemoryKiB(agent.pid!, 'VmRSS');
    options.log(`${label}: connecting every stream at once`);
    const opened = await client.request({ type: 'open', socketPath, tokens, timeoutSeconds: 120 });
    if (opened.type !== 'opened') throw new Error(`SDS load client: ${opened.type === 'error' ? opened.message : opened.type}`);
    // What stays: measured after a short settle, not in the middle of the burst's garbage.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const rssAfter = readProcessMemoryKiB(agent.pid!, 'VmRSS');
    const peakAfter = readProcessMemoryKiB(agent.pid!, 'VmHWM');
    if (opened.served === 0) throw new Error(`no stream got a secret: ${opened.errorSamples.join('; ')}`);
    let rotationSeconds: number | null = null;
    let rotatedStreams: number | null = null;
    if (options.rotation) {
      options.log(`${label}: waiting for the rotation of all`);
      const rotated = await client.request({ type: 'rotation', timeoutSeconds: secretTtlSeconds * 1.5 });
      if (rotated.type !== 'rotated') throw new Error(`SDS load client: ${rotated.type === 'error' ? rotated.message : rotated.type}`);
      rotationSeconds = rotated.windowSeconds;
      rotatedStreams = rotated.rotated;
    }
    return {
      ...spec,
      allServedSeconds: opened.allServedSeconds,
      rssPerStreamKiB: (rssAfter - rssBefore) / spec.streams,
      peakRssPerStreamKiB: (peakAfter - rssBefore) / spec.streams,
      agentRssBeforeMiB: rssBefore / 1024,
      agentRssAfterMiB: rssAfter / 1024,
      rotationSeconds,
      rotatedStreams,
      secretTtlSeconds,
      errors: opened.errors,
      errorSamples: opened.errorSamples,
    };
  } finally {
    client.send({ type: 'exit' });
    await client.close();
    await stopChild(agent);
  }
}

export async function runAgentBench(options: AgentOptions): Promise<AgentResult> {
  const ca = await startCaProcess({ kind: 'ec', kubeconfigPath: options.kube.kubeconfigPath, dir: options.dir });
  try {
    const runs: AgentRun[] = [];
    for (const [index, spec] of options.runs.entries()) {
      runs.push(await runOne(spec, index, { grpcAddress: ca.grpcAddress, rootCertFile: ca.rootCertFile }, options));
    }
    return { runs };
  } finally {
    await ca.stop();
  }
}
