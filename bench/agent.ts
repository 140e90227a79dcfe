/**
 * Part 5: one `meshca agent` (node mode, SDS on a Unix socket) with many Envoy-like streams connecting at once,
 * each connection with its own workload token (one stream per connection, the worst case, or several: an Envoy
 * sidecar's `default` and `ROOTCA`); the agent gets its certificates from a real `meshca ca` (P-256 CA, so the
 * part measures the agent, not RSA signing). Measures the time until every stream holds its secret, the agent's
 * RSS growth per stream, how long new pods wait for their first secret (quiet, and during a rotation), and how long
 * one rotation of every identity takes to reach all streams.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import type { KubeStandin } from '../test/standins/kube.js';
import { stopChild } from './children.js';
import { CLI, SERVER_NAME, spawnLogged, startCaProcess, waitForLogLine } from './e2e.js';
import { BENCH_NAMESPACE, workloadServiceAccount } from './fixtures.js';
import { forkTs } from './ipc.js';
import { readProcessCpuSeconds, readProcessMemoryKiB } from './proc.js';
import type { FirstSecretLatency, SdsLoadCommand, SdsLoadMessage } from './sds-load.js';

export interface AgentRunSpec {
  keyType: 'ECDSA' | 'RSA';
  streams: number;
  /** Distinct workload identities (service accounts) among the connections; each connection has its own token. */
  identities: number;
  /**
   * SDS streams per connection, all with that connection's token (default 1: every stream its own connection and
   * token, the worst case). 2 is an Envoy sidecar: `default` and `ROOTCA` multiplexed over one HTTP/2 connection.
   */
  streamsPerConnection?: number;
}

export interface AgentRun extends AgentRunSpec {
  allServedSeconds: number;
  /** VmRSS 1 s after all streams are served minus VmRSS before the first one, per stream. */
  rssPerStreamKiB: number;
  /** The same with the peak (VmHWM) instead: includes the garbage of the burst. */
  peakRssPerStreamKiB: number;
  /**
   * VmRSS after a full garbage collection (asked for over the inspector protocol) at both ends, per stream: what the
   * streams really keep, without the garbage V8 has not collected yet. Only with MESHCA_BENCH_AGENT_GC=1 (it
   * perturbs the headline figure above); null otherwise or when the inspector could not be reached.
   */
  rssPerStreamAfterGcKiB: number | null;
  /** Live JS heap (after that collection) per stream. */
  heapPerStreamAfterGcKiB: number | null;
  /**
   * Where the RSS after GC goes, per stream (process.memoryUsage() in the agent, asked over the inspector): the
   * JS heap V8 holds (committed) and its live part, memory outside the heap that JS objects own (`external`, of
   * which `arrayBuffers`: Buffers), and the rest of the RSS (`native`: malloc'd by OpenSSL, nghttp2, libuv, V8's
   * own code and metadata). Null without MESHCA_BENCH_AGENT_GC=1.
   */
  memoryPerStreamAfterGcKiB: { rss: number; heapTotal: number; heapUsed: number; external: number; arrayBuffers: number; native: number } | null;
  agentRssBeforeMiB: number;
  agentRssAfterMiB: number;
  /** CPU seconds the agent and the CA used from the first connection until every stream was served. */
  agentCpuSeconds: number;
  caCpuSeconds: number;
  /** The SDS load client's CPU in the same burst (one process playing every Envoy: a bound on the rate it can open streams). */
  clientCpuSeconds: number;
  /** From the first rotated secret pushed to the last one (includes the ±1% grace-ratio jitter). */
  rotationSeconds: number | null;
  /** Streams that received a rotated secret before the timeout (1.5 x SECRET_TTL); null without rotation. */
  rotatedStreams: number | null;
  /** Streams whose certificate rotates (`default`; ROOTCA streams get no push); null without rotation. */
  rotatingStreams: number | null;
  /**
   * Time to first secret of a batch of new pods (new tokens of identities the agent holds, each its own connection
   * with streamsPerConnection streams) opened at once: once all streams are served and quiet, and again at the first
   * rotated secret, while the agent renews every identity (null without rotation).
   */
  newStreamsQuiet: FirstSecretLatency | null;
  newStreamsDuringRotation: FirstSecretLatency | null;
  secretTtlSeconds: number;
  errors: number;
  errorSamples: string[];
  /** Streams of the burst that failed and were retried after a backoff (a refused connection, for one). */
  streamRetries?: number;
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
  // Thousands of streams take tens of seconds to serve on this machine: renewal (at half the TTL) must come after.
  return Math.max(20, Math.ceil(10 + 3 * keygenSeconds), Math.ceil(spec.streams / 60));
}

/** New pods in each latency batch: 5% of the connections, at most 100. */
function batchConnections(spec: AgentRunSpec): number {
  return Math.max(1, Math.min(100, Math.round(spec.streams / (spec.streamsPerConnection ?? 1) / 20)));
}

/** MESHCA_BENCH_SDS_CLIENT_NODE_ARGS: node flags for the SDS load client (e.g. --cpu-prof). */
function clientNodeArgs(): string[] {
  return (process.env.MESHCA_BENCH_SDS_CLIENT_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

/** MESHCA_BENCH_AGENT_GC=1: also measure memory after a full GC in the agent (through its inspector). */
function measureAfterGc(): boolean {
  return process.env.MESHCA_BENCH_AGENT_GC === '1';
}

/** Extra node flags for the measured agent, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile it. */
function agentNodeArgs(): string[] {
  return (process.env.MESHCA_BENCH_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

async function runOne(spec: AgentRunSpec, index: number, ca: { pid: number; grpcAddress: string; rootCertFile: string }, options: AgentOptions): Promise<AgentRun> {
  const perConnection = spec.streamsPerConnection ?? 1;
  const label = `agent ${spec.keyType} ${spec.streams} streams${perConnection > 1 ? ` (${perConnection} per connection)` : ''}`;
  const secretTtlSeconds = options.rotation ? rotationTtlSeconds(spec) : NO_ROTATION_SECRET_TTL_SECONDS;
  // Distinct tokens, one per connection: connections sharing an identity are different pods of one service account.
  const mint = (count: number, pod: string): Promise<string[]> =>
    Promise.all(
      Array.from({ length: count }, (_, i) =>
        options.kube.mintToken({
          namespace: BENCH_NAMESPACE,
          serviceAccount: workloadServiceAccount(1000 * (index + 1) + (i % spec.identities)),
          podName: `bench-${index}-${pod}${i}`,
          audiences: ['istio-ca'],
          ttlSeconds: 3600,
        }),
      ),
    );
  const tokens = await mint(spec.streams / perConnection, '');
  // New pods of the same service accounts, for the latency batches (quiet, and during the rotation).
  const probeTokens = await mint(batchConnections(spec), 'probe-');
  const lateTokens = options.rotation ? await mint(batchConnections(spec), 'late-') : [];
  const agentDir = path.join(options.dir, `agent-${index}`);
  mkdirSync(agentDir, { recursive: true });
  const socketPath = path.join(agentDir, 'socket');
  const logFile = path.join(agentDir, 'agent.log');
  // With MESHCA_BENCH_AGENT_GC=1 the inspector lets the bench ask for a full GC before reading memory (`collectGarbage`).
  const agent = spawnLogged(
    // MESHCA_BENCH_AGENT_CLI: another build's dist/cli.js for the agent (a baseline to compare with).
    process.env.MESHCA_BENCH_AGENT_CLI ?? CLI,
    ['agent', '--sds-socket', socketPath, '--ca-addr', ca.grpcAddress, '--ca-root-cert', ca.rootCertFile, '--status-addr', '127.0.0.1:0', '--secret-ttl', `${secretTtlSeconds}s`],
    logFile,
    { ISTIOD_SAN: SERVER_NAME, ISTIO_META_CLUSTER_ID: 'Kubernetes', ECC_SIGNATURE_ALGORITHM: spec.keyType },
    [...(measureAfterGc() ? ['--inspect=127.0.0.1:0'] : []), ...agentNodeArgs()],
  );
  const client = forkTs<SdsLoadCommand, SdsLoadMessage>(new URL('./sds-load.ts', import.meta.url), [], clientNodeArgs());
  try {
    await waitForLogLine(agent, logFile, /^SDS agent ready$/, '`meshca agent`');
    const ready = await client.next();
    if (ready.type !== 'ready') throw new Error('the SDS load client did not start');
    // Let start-up work (key pool, first CA connection) settle before taking the baseline.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const rssBefore = readProcessMemoryKiB(agent.pid!, 'VmRSS');
    // Opt-in: the GC at the start changes what the headline figure sees (start-up garbage is gone before the burst).
    const inspector = measureAfterGc()
      ? await Inspector.connect(logFile).catch((error: unknown) => {
          options.log(`${label}: no inspector, so no figures after GC: ${(error as Error).message}`);
          return null;
        })
      : null;
    const gcBefore = inspector ? await collectGarbage(inspector, agent.pid!) : null;
    const cpuBefore = { agent: readProcessCpuSeconds(agent.pid!), ca: readProcessCpuSeconds(ca.pid), client: readProcessCpuSeconds(client.pid) };
    options.log(`${label}: connecting every stream at once`);
    const opened = await client.request({ type: 'open', socketPath, tokens, streamsPerConnection: perConnection, timeoutSeconds: 120 });
    const agentCpuSeconds = readProcessCpuSeconds(agent.pid!) - cpuBefore.agent;
    const caCpuSeconds = readProcessCpuSeconds(ca.pid) - cpuBefore.ca;
    const clientCpuSeconds = readProcessCpuSeconds(client.pid) - cpuBefore.client;
    if (opened.type !== 'opened') throw new Error(`SDS load client: ${opened.type === 'error' ? opened.message : opened.type}`);
    // What stays: measured after a short settle, not in the middle of the burst's garbage.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const rssAfter = readProcessMemoryKiB(agent.pid!, 'VmRSS');
    const peakAfter = readProcessMemoryKiB(agent.pid!, 'VmHWM');
    const gcAfter = inspector ? await collectGarbage(inspector, agent.pid!) : null;
    inspector?.close();
    if (opened.served === 0) throw new Error(`no stream got a secret: ${opened.errorSamples.join('; ')}`);
    const probed = await client.request({ type: 'probe', socketPath, tokens: probeTokens, streamsPerConnection: perConnection, timeoutSeconds: 60 });
    if (probed.type !== 'probed') throw new Error(`SDS load client: ${probed.type === 'error' ? probed.message : probed.type}`);
    let rotationSeconds: number | null = null;
    let rotatedStreams: number | null = null;
    let rotatingStreams: number | null = null;
    let newStreamsDuringRotation: FirstSecretLatency | null = null;
    if (options.rotation) {
      options.log(`${label}: waiting for the rotation of all`);
      const rotated = await client.request({ type: 'rotation', socketPath, lateTokens, streamsPerConnection: perConnection, timeoutSeconds: secretTtlSeconds * 1.5 });
      if (rotated.type !== 'rotated') throw new Error(`SDS load client: ${rotated.type === 'error' ? rotated.message : rotated.type}`);
      rotationSeconds = rotated.windowSeconds;
      rotatedStreams = rotated.rotated;
      rotatingStreams = rotated.streams;
      newStreamsDuringRotation = rotated.duringRotation;
    }
    return {
      ...spec,
      allServedSeconds: opened.allServedSeconds,
      rssPerStreamKiB: (rssAfter - rssBefore) / spec.streams,
      peakRssPerStreamKiB: (peakAfter - rssBefore) / spec.streams,
      rssPerStreamAfterGcKiB: gcBefore && gcAfter ? (gcAfter.rssKiB - gcBefore.rssKiB) / spec.streams : null,
      heapPerStreamAfterGcKiB: gcBefore && gcAfter ? (gcAfter.heapUsedKiB - gcBefore.heapUsedKiB) / spec.streams : null,
      memoryPerStreamAfterGcKiB: gcBefore?.usage && gcAfter?.usage ? perStream(gcBefore.usage, gcAfter.usage, spec.streams) : null,
      agentRssBeforeMiB: rssBefore / 1024,
      agentRssAfterMiB: rssAfter / 1024,
      agentCpuSeconds,
      caCpuSeconds,
      clientCpuSeconds,
      rotationSeconds,
      rotatedStreams,
      rotatingStreams,
      newStreamsQuiet: probed.latency,
      newStreamsDuringRotation,
      secretTtlSeconds,
      errors: opened.errors,
      errorSamples: opened.errorSamples,
      streamRetries: opened.streamRetries,
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
      runs.push(await runOne(spec, index, { pid: ca.pid, grpcAddress: ca.grpcAddress, rootCertFile: ca.rootCertFile }, options));
    }
    return { runs };
  } finally {
    await ca.stop();
  }
}

interface MemoryUsageKiB {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

function perStream(before: MemoryUsageKiB, after: MemoryUsageKiB, streams: number): NonNullable<AgentRun['memoryPerStreamAfterGcKiB']> {
  const d = (key: keyof MemoryUsageKiB): number => (after[key] - before[key]) / streams;
  // external includes arrayBuffers; what is neither heap nor external is native memory.
  return { rss: d('rss'), heapTotal: d('heapTotal'), heapUsed: d('heapUsed'), external: d('external'), arrayBuffers: d('arrayBuffers'), native: d('rss') - d('heapTotal') - d('external') };
}

/** A full GC in the agent (the inspector's HeapProfiler.collectGarbage), then its VmRSS, live heap and memoryUsage(). */
async function collectGarbage(inspector: Inspector, pid: number): Promise<{ rssKiB: number; heapUsedKiB: number; usage: MemoryUsageKiB | null }> {
  await inspector.call('HeapProfiler.collectGarbage');
  // Let V8 hand freed pages back before reading the resident set.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const usage = (await inspector.call('Runtime.getHeapUsage')) as { usedSize?: number };
  const evaluated = (await inspector.call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true })) as { result?: { value?: unknown } };
  let memory: MemoryUsageKiB | null = null;
  if (typeof evaluated.result?.value === 'string') {
    const raw = JSON.parse(evaluated.result.value) as Record<keyof MemoryUsageKiB, number>;
    memory = { rss: raw.rss / 1024, heapTotal: raw.heapTotal / 1024, heapUsed: raw.heapUsed / 1024, external: raw.external / 1024, arrayBuffers: raw.arrayBuffers / 1024 };
  }
  return { rssKiB: readProcessMemoryKiB(pid, 'VmRSS'), heapUsedKiB: (usage.usedSize ?? 0) / 1024, usage: memory };
}

/** The smallest Chrome DevTools Protocol client that can ask for a GC: one WebSocket, text frames, replies by id. */
class Inspector {
  private nextId = 1;
  private buffered = Buffer.alloc(0);
  private readonly pending = new Map<number, { resolve: (result: unknown) => void; reject: (error: Error) => void }>();

  private constructor(private readonly socket: Socket) {
    socket.on('data', (data: Buffer) => this.receive(data));
    socket.on('error', (error) => this.failAll(error));
    socket.on('close', () => this.failAll(new Error('inspector connection closed')));
  }

  /** Connects to the inspector whose "Debugger listening on ws://..." line node wrote to the log file. */
  static async connect(logFile: string): Promise<Inspector> {
    const match = /Debugger listening on (ws:\/\/\S+)/.exec(readFileSync(logFile, 'utf8'));
    if (!match) throw new Error('the agent did not say where its inspector listens');
    const url = new URL(match[1]!);
    const request = http.request({
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Key': randomBytes(16).toString('base64'), 'Sec-WebSocket-Version': '13' },
    });
    const socket = await new Promise<Socket>((resolve, reject) => {
      request.on('upgrade', (_response, upgraded: Socket) => resolve(upgraded));
      request.on('response', (response) => reject(new Error(`inspector answered HTTP ${response.statusCode} instead of upgrading`)));
      request.on('error', reject);
      request.end();
    });
    return new Inspector(socket);
  }

  call(method: string, params?: Record<string, unknown>): Promise<unknown> {
    const id = this.nextId++;
    const payload = Buffer.from(JSON.stringify({ id, method, ...(params ? { params } : {}) }));
    // Client frames are masked (RFC 6455); the payloads here are far below 64 KiB.
    const mask = randomBytes(4);
    const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
    const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]!));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(Buffer.concat([header, mask, masked]));
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private receive(data: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, data]);
    for (;;) {
      if (this.buffered.length < 2) return;
      let length = this.buffered[1]! & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (this.buffered.length < 4) return;
        length = this.buffered.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (this.buffered.length < 10) return;
        length = Number(this.buffered.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.buffered.length < offset + length) return;
      const opcode = this.buffered[0]! & 0x0f;
      const text = this.buffered.subarray(offset, offset + length).toString('utf8');
      this.buffered = this.buffered.subarray(offset + length);
      if (opcode !== 1) continue;
      const message = JSON.parse(text) as { id?: number; result?: unknown; error?: { message?: string } };
      const waiter = message.id === undefined ? undefined : this.pending.get(message.id);
      if (!waiter) continue;
      this.pending.delete(message.id!);
      if (message.error) waiter.reject(new Error(message.error.message ?? 'inspector error'));
      else waiter.resolve(message.result);
    }
  }

  private failAll(error: Error): void {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }
}
