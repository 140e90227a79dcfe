/**
 * Parts 3 and 4: the real `meshca ca` process (dist/cli.js) over gRPC/TLS, authenticating callers by TokenReview
 * against the Kubernetes stand-in (answering in 1 ms), driven by the load generator in a separate process.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startKubeStandin, type KubeStandin } from '../test/standins/kube.js';
import { assertIssuedChain } from './check.js';
import { stopChild, trackChild } from './children.js';
import { forkTs } from './ipc.js';
import { BENCH_NAMESPACE, CA_KINDS, makeWorkloadCsrs, TRANSPORT_FLOOR_MODES, workloadServiceAccount, type CaKind, type EchoTransport, type WorkloadCsr } from './fixtures.js';
import type { LoadgenConfig, LoadgenMessage, LoadgenPhase, LoadgenPhaseResult, LoadgenRequest } from './loadgen.js';
import { readProcessTreeMemoryKiB } from './proc.js';

export { REPO_ROOT } from './paths.js';
import { REPO_ROOT } from './paths.js';
export const CLI = path.join(REPO_ROOT, 'dist/cli.js');
export const SERVER_NAME = 'meshca.istio-system.svc';
const CLUSTER_ID = 'Kubernetes';

export interface E2eLevel {
  concurrency: number;
  certsPerSecond: number;
  /** certs/s against OpenSSL's -multi sign rate for the CA key type. */
  ratio: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Server CPU (user + system) per 1000 certificates. */
  serverCpuSecondsPer1000: number;
  /** The load generator's own CPU per 1000 certificates (it shares the cores with the server). */
  loadgenCpuSecondsPer1000: number;
  calls: number;
  errors: number;
  errorSamples: string[];
}

export interface E2eKindResult {
  kind: CaKind;
  label: string;
  /**
   * Which server was measured: 'meshca ca' (dist/cli.js), 'prototype, N signing threads' (bench/proto-ca.ts), or
   * 'transport floor' (bench/echo-ca.ts: same API and message sizes, no CA work at all).
   */
  serverMode: string;
  prototypeThreads: number | null;
  /** `meshca ca --workers`: the processes serving the API (1 for the prototype and the transport floor). */
  workers: number;
  levels: E2eLevel[];
  serverPeakRssMiB: number;
}

export interface ApiServerResult {
  requests: number;
  workloads: number;
  concurrency: number;
  tokenReviews: number;
  tokenReviewsPer1000: number;
  errors: number;
}

// ---------------------------------------------------------------------------------------------------------------
// The CA process

export interface CaProcess {
  pid: number;
  grpcAddress: string;
  /** host:port of /metrics. */
  monitoringAddress: string;
  rootCertPem: string;
  rootCertFile: string;
  logFile: string;
  stop(): Promise<void>;
}

interface LogLine {
  msg?: string;
  grpcAddress?: string;
  monitoringAddress?: string;
}

function readLogLines(file: string): LogLine[] {
  if (!existsSync(file)) return [];
  const out: LogLine[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      // A line being written right now; the next poll sees it whole.
    }
  }
  return out;
}

function tail(file: string, lines = 15): string {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n') : '(no output)';
}

/** Waits for a JSON log line whose msg matches; the child's output goes to a file so that reading it costs nothing. */
export async function waitForLogLine(child: ChildProcess, file: string, pattern: RegExp, what: string, timeoutMs = 60_000): Promise<LogLine> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = readLogLines(file).find((l) => typeof l.msg === 'string' && pattern.test(l.msg));
    if (found) return found;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before logging "${pattern.source}":\n${tail(file)}`);
    }
    if (Date.now() > deadline) throw new Error(`${what} did not log "${pattern.source}" within ${timeoutMs / 1000}s:\n${tail(file)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Runs `node <script> <args>` with stdout+stderr into `logFile`. */
export function spawnLogged(script: string, args: string[], logFile: string, env: NodeJS.ProcessEnv = {}, execArgv: string[] = []): ChildProcess {
  const fd = openSync(logFile, 'a');
  try {
    return trackChild(spawn(process.execPath, [...execArgv, script, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] }));
  } finally {
    closeSync(fd);
  }
}

let caStarts = 0;
/** Distinct workloads (service accounts, tokens) calling the CA in part 3. */
export const WORKLOADS = 100;

/** Extra node flags for the measured server, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile it. */
export function serverNodeArgs(): string[] {
  return (process.env.MESHCA_BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

export interface CaProcessOptions {
  kind: CaKind;
  /** The TokenReview clusters; omitted, the CA authenticates by the JWT_RULE in extraArgs only. */
  kubeconfigPath?: string;
  dir: string;
  extraArgs?: string[];
  /** Run bench/proto-ca.ts (meshca ca + signing on this many worker threads) instead of dist/cli.js ca. */
  prototypeThreads?: number;
  /** `--workers` of `meshca ca` (default 1). */
  workers?: number;
  /** Another key source than the self-signed root: its flags, its environment and the root file clients trust. */
  keySource?: { args: string[]; env: NodeJS.ProcessEnv; rootCertFile: string };
  /** Node flags for the server besides MESHCA_BENCH_SERVER_NODE_ARGS (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** Another build's dist/cli.js (a baseline to compare with); default this tree's. */
  cli?: string;
}

let rateLimitFlag: string[] | undefined;

/**
 * The benchmark plays 100 workloads asking for thousands of certificates a second: a per-identity rate limit,
 * where `meshca ca` has one, is switched off so that it measures signing, not refusals.
 */
function rateLimitArgs(): string[] {
  if (rateLimitFlag === undefined) {
    const help = spawnSync(process.execPath, [CLI, 'ca', '--help'], { encoding: 'utf8' }).stdout ?? '';
    rateLimitFlag = help.includes('--max-csr-per-identity-per-minute') ? ['--max-csr-per-identity-per-minute', '0'] : [];
  }
  return rateLimitFlag;
}

let hasWorkersFlag: boolean | undefined;

/** `--workers N`, when this build of `meshca ca` has the flag (an older build measures as one process). */
function workersArgs(workers: number): string[] {
  hasWorkersFlag ??= (spawnSync(process.execPath, [CLI, 'ca', '--help'], { encoding: 'utf8' }).stdout ?? '').includes('--workers');
  if (workers > 1 && !hasWorkersFlag) throw new Error('this build of `meshca ca` has no --workers flag');
  return hasWorkersFlag ? ['--workers', String(workers)] : [];
}

export async function startCaProcess(options: CaProcessOptions): Promise<CaProcess> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  // A fresh state dir and log per start: an old log's "ready" line must never be taken for this process's.
  const name = `ca-${options.kind}-${++caStarts}`;
  const stateDir = path.join(options.dir, name);
  const logFile = path.join(options.dir, `${name}.log`);
  const args = [
    ...(options.keySource?.args ?? ['--ca-source', 'self-signed']),
    '--ca-key-type', CA_KINDS[options.kind].keySpec,
    '--state-dir', stateDir,
    '--grpc-addr', '127.0.0.1:0',
    '--monitoring-addr', '127.0.0.1:0',
    '--server-dns', SERVER_NAME,
    ...(options.kubeconfigPath !== undefined ? ['--kubeconfig', options.kubeconfigPath] : []),
    ...rateLimitArgs(),
    ...workersArgs(options.workers ?? 1),
    ...(options.extraArgs ?? []),
  ];
  const child =
    options.prototypeThreads === undefined
      ? spawnLogged(options.cli ?? CLI, ['ca', ...args], logFile, options.keySource?.env ?? {}, [...serverNodeArgs(), ...(options.nodeArgs ?? [])])
      : spawnLogged(fileURLToPath(new URL('./proto-ca.ts', import.meta.url)), args, logFile, { MESHCA_BENCH_SIGNING_THREADS: String(options.prototypeThreads) }, [
          '--import',
          'tsx',
          ...serverNodeArgs(),
        ]);
  try {
    const ready = await waitForLogLine(child, logFile, /^CA server ready$/, '`meshca ca`');
    if (!ready.grpcAddress) throw new Error('`meshca ca` logged "CA server ready" without grpcAddress');
    const rootCertFile = options.keySource?.rootCertFile ?? path.join(stateDir, 'root-cert.pem');
    return {
      pid: child.pid!,
      grpcAddress: ready.grpcAddress,
      monitoringAddress: ready.monitoringAddress ?? '',
      rootCertPem: readFileSync(rootCertFile, 'utf8'),
      rootCertFile,
      logFile,
      stop: () => stopChild(child),
    };
  } catch (error) {
    await stopChild(child);
    throw error;
  }
}

/**
 * bench/echo-ca.ts: the same API over TLS answering at once with a fixed chain (the transport floor), served by
 * grpc-js or, with `http2`, by Node's http2 server with the gRPC framing written out (what grpc-js itself costs).
 */
export async function startEchoProcess(dir: string, transport: EchoTransport = 'grpc-js'): Promise<CaProcess> {
  const logFile = path.join(dir, `echo-${++caStarts}.log`);
  const child = spawnLogged(fileURLToPath(new URL('./echo-ca.ts', import.meta.url)), [SERVER_NAME, transport], logFile, {}, ['--import', 'tsx', ...serverNodeArgs()]);
  try {
    const ready = (await waitForLogLine(child, logFile, /^echo CA ready$/, 'the echo server')) as LogLine & { rootCertPem?: string };
    if (!ready.grpcAddress || !ready.rootCertPem) throw new Error('the echo server did not say where it listens');
    const rootCertFile = path.join(dir, `echo-${caStarts}-root.pem`);
    writeFileSync(rootCertFile, ready.rootCertPem);
    return { pid: child.pid!, grpcAddress: ready.grpcAddress, monitoringAddress: '', rootCertPem: ready.rootCertPem, rootCertFile, logFile, stop: () => stopChild(child) };
  } catch (error) {
    await stopChild(child);
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The load generator process

export interface Loadgen {
  run(phase: Omit<LoadgenPhase, 'type'>): Promise<LoadgenPhaseResult>;
  close(): Promise<void>;
}

export async function startLoadgen(config: Omit<LoadgenConfig, 'requestsFile'>, requests: LoadgenRequest[], dir: string): Promise<Loadgen> {
  const requestsFile = path.join(dir, `loadgen-requests-${process.hrtime.bigint()}.json`);
  const configFile = `${requestsFile}.config.json`;
  writeFileSync(requestsFile, JSON.stringify(requests));
  writeFileSync(configFile, JSON.stringify({ ...config, requestsFile } satisfies LoadgenConfig));
  const nodeArgs = (process.env.MESHCA_BENCH_LOADGEN_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = forkTs<LoadgenPhase | { type: 'exit' }, LoadgenMessage>(new URL('./loadgen.ts', import.meta.url), [configFile], nodeArgs);
  const first = await child.next();
  if (first.type !== 'ready') throw new Error(`the load generator did not start: ${first.type === 'error' ? first.message : first.type}`);
  return {
    async run(phase) {
      const message = await child.request({ type: 'run', ...phase });
      if (message.type === 'error') throw new Error(`load generator: ${message.message}`);
      if (message.type !== 'result') throw new Error('the load generator answered out of turn');
      return message;
    },
    async close() {
      child.send({ type: 'exit' });
      await child.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Workloads: tokens and CSRs

export interface Workloads {
  csrs: WorkloadCsr[];
  tokens: string[];
  requests: LoadgenRequest[];
}

export async function makeWorkloads(kube: KubeStandin, kind: CaKind, options: { workloads: number; csrs: number; rsaKeys: number }): Promise<Workloads> {
  const tokens = await Promise.all(
    Array.from({ length: options.workloads }, (_, i) =>
      kube.mintToken({ namespace: BENCH_NAMESPACE, serviceAccount: workloadServiceAccount(i), audiences: ['istio-ca'], ttlSeconds: 3600 }),
    ),
  );
  const csrs = await makeWorkloadCsrs(kind, { count: options.csrs, workloads: options.workloads, distinctKeys: kind === 'rsa' ? options.rsaKeys : options.csrs });
  return { csrs, tokens, requests: csrs.map((c) => ({ csrPem: c.csrPem, token: tokens[c.workload]! })) };
}

export async function startBenchKube(): Promise<KubeStandin> {
  const kube = await startKubeStandin({ namespaces: [BENCH_NAMESPACE] });
  kube.state.delayMs = 1;
  return kube;
}

// ---------------------------------------------------------------------------------------------------------------
// The parts

export interface E2eOptions {
  kind: CaKind;
  kube: KubeStandin;
  dir: string;
  concurrencies: number[];
  warmupSeconds: number;
  seconds: number;
  rsaKeys: number;
  /** OpenSSL's -multi sign rate for this CA key type. */
  limitSignPerSecond: number;
  log: (line: string) => void;
  /** Measure bench/proto-ca.ts with this many signing threads instead of the real `meshca ca`. */
  prototypeThreads?: number;
  /** Measure the transport floor (bench/echo-ca.ts, served by grpc-js or by node:http2) instead of a CA. */
  echo?: EchoTransport;
  /** `meshca ca --workers`; the rows with as many workers as cores are the ones the targets are judged on. */
  workers?: number;
  /** The number of cores: `--workers` equal to it is reported as plain 'meshca ca'. */
  cores: number;
}

/** A load generator calling `server` with the workloads' pre-made CSRs and tokens. */
export function loadgenAgainst(server: CaProcess, workloads: Workloads, dir: string): Promise<Loadgen> {
  return startLoadgen(
    { address: server.grpcAddress, rootCertPem: server.rootCertPem, serverName: SERVER_NAME, serverPid: server.pid, clusterId: CLUSTER_ID },
    workloads.requests,
    dir,
  );
}

export async function runE2e(options: E2eOptions): Promise<E2eKindResult> {
  const info = CA_KINDS[options.kind];
  const workers = options.echo || options.prototypeThreads !== undefined ? 1 : (options.workers ?? options.cores);
  const workloads = await makeWorkloads(options.kube, options.kind, { workloads: WORKLOADS, csrs: 512, rsaKeys: options.rsaKeys });
  const server = options.echo
    ? await startEchoProcess(options.dir, options.echo)
    : await startCaProcess({
        kind: options.kind,
        kubeconfigPath: options.kube.kubeconfigPath,
        dir: options.dir,
        ...(options.prototypeThreads !== undefined ? { prototypeThreads: options.prototypeThreads } : {}),
        workers,
      });
  const mode = options.echo
    ? TRANSPORT_FLOOR_MODES[options.echo]
    : options.prototypeThreads === undefined
      ? workers === options.cores
        ? 'meshca ca'
        : `meshca ca --workers ${workers}`
      : `prototype, ${options.prototypeThreads} signing thread${options.prototypeThreads === 1 ? '' : 's'}`;
  let loadgen: Loadgen | undefined;
  try {
    loadgen = await loadgenAgainst(server, workloads, options.dir);
    // Steady state is measured: every workload's token is reviewed (and cached) before the first level, otherwise
    // the cold TokenReviews (a new TLS connection each) would land in the concurrency-1 window. Part 4 measures
    // the cold start on its own.
    await loadgen.run({ concurrency: 16, warmupSeconds: 0, count: 2 * WORKLOADS });
    const levels: E2eLevel[] = [];
    for (const concurrency of options.concurrencies) {
      options.log(`e2e ${info.label}: concurrency ${concurrency} for ${options.seconds}s`);
      const result = await loadgen.run({ concurrency, warmupSeconds: options.warmupSeconds, seconds: options.seconds });
      if (result.sample && !options.echo) {
        const csr = workloads.csrs[result.sample.requestIndex]!;
        assertIssuedChain(result.sample.chain, csr.identity, csr.csrPem);
      }
      levels.push({
        concurrency,
        certsPerSecond: result.certsPerSecond,
        ratio: result.certsPerSecond / options.limitSignPerSecond,
        p50Ms: result.p50Ms,
        p90Ms: result.p90Ms,
        p99Ms: result.p99Ms,
        maxMs: result.maxMs,
        serverCpuSecondsPer1000: result.ok > 0 ? (result.serverCpuSeconds / result.ok) * 1000 : 0,
        loadgenCpuSecondsPer1000: result.ok > 0 ? (result.loadgenCpuSeconds / result.ok) * 1000 : 0,
        calls: result.calls,
        errors: result.errors,
        errorSamples: result.errorSamples,
      });
      if (result.ok === 0) throw new Error(`no certificate was issued at concurrency ${concurrency}: ${result.errorSamples.join('; ')}`);
    }
    return { kind: options.kind, label: options.echo ? mode : info.label, serverMode: mode, prototypeThreads: options.prototypeThreads ?? null, workers, levels, serverPeakRssMiB: readProcessTreeMemoryKiB(server.pid, 'VmHWM') / 1024 };
  } finally {
    await loadgen?.close();
    await server.stop();
  }
}

export interface ApiServerOptions {
  kube: KubeStandin;
  dir: string;
  requests: number;
  workloads: number;
  concurrency: number;
  /** `meshca ca --workers`: reviews are shared through the primary, so the count must not grow with it. */
  workers: number;
  log: (line: string) => void;
}

/** TokenReview calls the CA makes per 1000 CSRs from `workloads` distinct workloads, starting cold. */
export async function runApiServerLoad(options: ApiServerOptions): Promise<ApiServerResult> {
  // P-256: the cheapest to sign, so the part measures authentication, not signing.
  const workloads = await makeWorkloads(options.kube, 'ec', { workloads: options.workloads, csrs: options.workloads * 2, rsaKeys: 0 });
  const server = await startCaProcess({ kind: 'ec', kubeconfigPath: options.kube.kubeconfigPath, dir: options.dir, workers: options.workers });
  let loadgen: Loadgen | undefined;
  try {
    loadgen = await loadgenAgainst(server, workloads, options.dir);
    options.log(`apiserver: ${options.requests} CSRs from ${options.workloads} workloads at concurrency ${options.concurrency}`);
    const before = options.kube.state.tokenReviewCount;
    const result = await loadgen.run({ concurrency: options.concurrency, warmupSeconds: 0, count: options.requests });
    const tokenReviews = options.kube.state.tokenReviewCount - before;
    if (result.ok === 0) throw new Error(`no certificate was issued: ${result.errorSamples.join('; ')}`);
    return {
      requests: result.calls,
      workloads: options.workloads,
      concurrency: options.concurrency,
      tokenReviews,
      tokenReviewsPer1000: (tokenReviews / result.calls) * 1000,
      errors: result.errors,
    };
  } finally {
    await loadgen?.close();
    await server.stop();
  }
}
