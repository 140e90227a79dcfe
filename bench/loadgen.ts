/**
 * The end-to-end load generator: a separate process (so its CPU is visible and the server gets no help from it)
 * that calls `CreateCertificate` over gRPC/TLS exactly like istio-agent does (Bearer token, clusterid header,
 * CertSigner metadata), with pre-made CSRs and tokens, at a fixed concurrency.
 *
 * Driven by its parent over the IPC channel: each `run` message starts a phase; the answer carries certs/s,
 * latency percentiles and the server's CPU time during the measured window, read from /proc/<pid>/stat.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { IstioCaClient, objectToStruct, type IstioCertificateResponse } from '../src/wire/protos.js';
import { readMainThreadCpuSeconds, readProcessTreeCpuSeconds } from './proc.js';

export interface LoadgenRequest {
  csrPem: string;
  token: string;
}

export interface LoadgenConfig {
  address: string;
  rootCertPem: string;
  serverName: string;
  /** File with a JSON LoadgenRequest[]; requests are sent round robin. */
  requestsFile: string;
  serverPid: number;
  /** The clusterid header an unmodified istio-agent sends. */
  clusterId: string;
}

export interface LoadgenPhase {
  type: 'run';
  concurrency: number;
  /** Unmeasured calls first, for connections and caches to settle. */
  warmupSeconds: number;
  /** Measure for this long... */
  seconds?: number;
  /** ...or exactly this many calls. */
  count?: number;
}

export interface LoadgenPhaseResult {
  type: 'result';
  concurrency: number;
  calls: number;
  ok: number;
  errors: number;
  /** The first few distinct error messages. */
  errorSamples: string[];
  seconds: number;
  certsPerSecond: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  serverCpuSeconds: number;
  /** The server's main thread alone (with --workers, the primary's): what an event loop that is the bottleneck spends. */
  serverMainThreadCpuSeconds: number;
  /** This process's own CPU in the window: the share of the machine the load generator took. */
  loadgenCpuSeconds: number;
  /** One chain from the measured window and the index of its request, for an OpenSSL check by the parent. */
  sample: { chain: string[]; requestIndex: number } | null;
  /** The measured window on the monotonic clock, µs (process.hrtime: the clock of a server's CPU profile). */
  windowFromUs: number;
  windowToUs: number;
}

export type LoadgenMessage = { type: 'ready'; channels: number } | LoadgenPhaseResult | { type: 'error'; message: string };

// Callers share up to this many channels (each its own TLS connection). Measured on the 2-core machine with the
// transport floor at concurrency 256: 4 connections cost both processes least (16 cost ~40% more CPU per call);
// MESHCA_BENCH_LOADGEN_CHANNELS overrides it.
const MAX_CHANNELS = Number(process.env.MESHCA_BENCH_LOADGEN_CHANNELS ?? 4);

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const config = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as LoadgenConfig;
  const requests = JSON.parse(readFileSync(config.requestsFile, 'utf8')) as LoadgenRequest[];
  const credentials = grpc.credentials.createSsl(Buffer.from(config.rootCertPem));
  const clients = Array.from(
    { length: MAX_CHANNELS },
    () =>
      new IstioCaClient(config.address, credentials, {
        'grpc.ssl_target_name_override': config.serverName,
        'grpc.use_local_subchannel_pool': 1,
        // Per-call bookkeeping the load generator has no use for: it competes with the server for the same cores.
        'grpc.enable_retries': 0,
        'grpc.enable_channelz': 0,
      }),
  );
  const certSigner = objectToStruct({ CertSigner: '' });
  let next = 0;

  const call = (client: IstioCaClient, index: number): Promise<IstioCertificateResponse> => {
    const request = requests[index % requests.length]!;
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${request.token}`);
    metadata.set('clusterid', config.clusterId);
    return new Promise((resolve, reject) => {
      client.CreateCertificate({ csr: request.csrPem, validity_duration: '86400', metadata: certSigner }, metadata, { deadline: Date.now() + 30_000 }, (error, response) =>
        error || !response ? reject(error ?? new Error('empty response')) : resolve(response),
      );
    });
  };

  const runPhase = async (phase: LoadgenPhase): Promise<LoadgenPhaseResult> => {
    const channels = Math.min(phase.concurrency, MAX_CHANNELS);
    const latencies: number[] = [];
    const errorSamples: string[] = [];
    let ok = 0;
    let errors = 0;
    let measuring = false;
    let stop = false;
    let started = 0;
    let sample: LoadgenPhaseResult['sample'] = null;
    const budget = phase.count;
    const caller = async (slot: number): Promise<void> => {
      const client = clients[slot % channels]!;
      while (!stop) {
        if (measuring && budget !== undefined && started >= budget) return;
        const index = next++;
        const counted = measuring;
        if (counted) started++;
        const begin = performance.now();
        try {
          const response = await call(client, index);
          if (counted && measuring) {
            latencies.push(performance.now() - begin);
            ok++;
            if (!sample) sample = { chain: response.cert_chain, requestIndex: index % requests.length };
          }
        } catch (error) {
          if (counted && measuring) {
            errors++;
            const message = (error as Error).message;
            if (errorSamples.length < 5 && !errorSamples.includes(message)) errorSamples.push(message);
          }
        }
      }
    };
    let cpuBefore = 0;
    let mainThreadCpuBefore = 0;
    let ownCpuBefore = process.cpuUsage();
    let start = 0;
    let windowFromUs = 0;
    const startMeasuring = (): void => {
      cpuBefore = readProcessTreeCpuSeconds(config.serverPid);
      mainThreadCpuBefore = readMainThreadCpuSeconds(config.serverPid);
      ownCpuBefore = process.cpuUsage();
      start = performance.now();
      windowFromUs = Number(process.hrtime.bigint() / 1000n);
      measuring = true;
    };
    // Without a warm-up the very first calls count (a cold start is what is being measured).
    if (phase.warmupSeconds <= 0) startMeasuring();
    const callers = Array.from({ length: phase.concurrency }, (_, slot) => caller(slot));
    if (phase.warmupSeconds > 0) {
      await new Promise((resolve) => setTimeout(resolve, phase.warmupSeconds * 1000));
      startMeasuring();
    }
    if (budget !== undefined) {
      // Count mode: the callers stop themselves once `budget` calls have started in the window.
      await Promise.all(callers);
    } else {
      await new Promise((resolve) => setTimeout(resolve, (phase.seconds ?? 1) * 1000));
    }
    const seconds = (performance.now() - start) / 1000;
    const windowToUs = Number(process.hrtime.bigint() / 1000n);
    const cpuAfter = readProcessTreeCpuSeconds(config.serverPid);
    const mainThreadCpuAfter = readMainThreadCpuSeconds(config.serverPid);
    const ownCpu = process.cpuUsage(ownCpuBefore);
    measuring = false;
    stop = true;
    await Promise.all(callers);
    const sorted = Float64Array.from(latencies).sort();
    return {
      type: 'result',
      concurrency: phase.concurrency,
      calls: ok + errors,
      ok,
      errors,
      errorSamples,
      seconds,
      certsPerSecond: ok / seconds,
      p50Ms: percentile(sorted, 50),
      p90Ms: percentile(sorted, 90),
      p99Ms: percentile(sorted, 99),
      maxMs: sorted.length > 0 ? sorted[sorted.length - 1]! : 0,
      serverCpuSeconds: cpuAfter - cpuBefore,
      serverMainThreadCpuSeconds: mainThreadCpuAfter - mainThreadCpuBefore,
      loadgenCpuSeconds: (ownCpu.user + ownCpu.system) / 1e6,
      sample,
      windowFromUs,
      windowToUs,
    };
  };

  const send = (message: LoadgenMessage): void => {
    process.send?.(message);
  };
  process.on('message', (message: LoadgenPhase | { type: 'exit' }) => {
    if (message.type === 'exit') {
      for (const client of clients) client.close();
      process.exit(0);
    }
    runPhase(message).then(send, (error: unknown) => send({ type: 'error', message: (error as Error).message }));
  });
  // Never outlive the benchmark that drives this process.
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready', channels: MAX_CHANNELS });
}

main().catch((error: unknown) => {
  process.stderr.write(`loadgen: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
