/**
 * `npm run bench`: meshca's benchmark. Every figure is given with its ratio to OpenSSL's own rate measured in the
 * same run, because absolute numbers drift on shared machines.
 *
 *   npm run bench                      full run (a few minutes), writes bench/results/latest.json and bench/RESULTS.md
 *   npm run bench -- --quick           smoke run: a few seconds per part
 *   --smoke                            the test suite's run: a quick run on the shortest measurements (one OpenSSL process)
 *   npm run bench -- --only core,e2e   some parts (the OpenSSL limit always runs: the ratios need it)
 *   --out DIR                          where latest.json goes (default bench/results)
 *   --markdown FILE | --no-markdown    where the Markdown table goes (default bench/RESULTS.md, full runs of every part only)
 *   --keep                             keep the run's temp dir (server logs, state) and print where it is
 *   --prototype                        also measure the worker-thread signing prototype (bench/proto-ca.ts)
 *   MESHCA_BENCH_SERVER_NODE_ARGS      extra node flags for the measured `meshca ca`, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
 *   MESHCA_BENCH_LOADGEN_NODE_ARGS     the same for the load generator
 *   MESHCA_BENCH_AGENT_CLI             part "agent": run this build's dist/cli.js as the agent (a baseline)
 *   MESHCA_BENCH_AGENT_RUNS            part "agent": its rows, e.g. ECDSA:2000:400 (key type:streams:identities) or
 *                                      ECDSA:10000:2000:2 (…:streams per connection: Envoys multiplexing default + ROOTCA)
 *   MESHCA_BENCH_AGENT_ROTATION=1      part "agent" in a --quick run: also wait for the rotation of every identity
 *   MESHCA_BENCH_BASELINE_CLI          part "stages": also measure this build's dist/cli.js, interleaved (see bench/stages.ts)
 *   MESHCA_BENCH_E2E_FLOORS=N          part "e2e": only the two transport floors (grpc-js, node:http2), interleaved N times
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { AgentOptions } from './agent.js';
import { runCoreBench } from './core.js';
import { ContentionMonitor } from './contention.js';
import { CA_KINDS, type CaKind, type EchoTransport } from './fixtures.js';
import { measureOpensslLimit, type LimitResult } from './limit.js';
import { BENCH_DIR, REPO_ROOT } from './paths.js';
import { machineInfo, PART_NAMES, PartUnavailable, renderMarkdown, type BenchResults, type CoreKindReport, type PartName, type TargetResult } from './report.js';


interface Settings {
  limitSeconds: number;
  /** `openssl speed -multi` processes; undefined: one per core. */
  limitProcesses?: number;
  coreSeconds: number;
  stepSeconds: number;
  rsaKeys: number;
  e2eWarmupSeconds: number;
  e2eSeconds: number;
  concurrencies: number[];
  apiServerRequests: number;
  /** CA key types to measure again with the worker-thread prototype (bench/proto-ca.ts; `--prototype`). */
  prototypeKinds: CaKind[];
  /** CA key types to measure again as one process (`meshca ca --workers 1`), for comparison. */
  singleProcessKinds: CaKind[];
  agent: Omit<AgentOptions, 'kube' | 'dir' | 'log'>;
}

const FULL: Settings = {
  limitSeconds: 3,
  coreSeconds: 3,
  stepSeconds: 0.3,
  rsaKeys: 8,
  e2eWarmupSeconds: 1,
  e2eSeconds: 3,
  concurrencies: [1, 16, 256],
  apiServerRequests: 1000,
  prototypeKinds: [],
  singleProcessKinds: ['rsa', 'ec'],
  agent: {
    runs: [
      { keyType: 'ECDSA', streams: 100, identities: 100 },
      { keyType: 'ECDSA', streams: 500, identities: 500 },
      // RSA: identities shared by several pods, as on a real node. 100 streams only: the agent proves every new
      // token with a CSR of its own fresh key, so 500 RSA streams cost 500 key generations (~130 s of CPU).
      { keyType: 'RSA', streams: 100, identities: 25 },
    ],
    rotation: true,
  },
};

const QUICK: Settings = {
  limitSeconds: 1,
  coreSeconds: 1,
  stepSeconds: 0.05,
  rsaKeys: 2,
  e2eWarmupSeconds: 0.3,
  e2eSeconds: 1,
  concurrencies: [1, 16, 256],
  apiServerRequests: 1000,
  prototypeKinds: [],
  singleProcessKinds: [],
  agent: { runs: [{ keyType: 'ECDSA', streams: 100, identities: 100 }], rotation: false },
};

/**
 * The test suite's run (`--smoke`): every part and every figure of a quick run, on the shortest measurements
 * that still yield them. The limit is measured in one OpenSSL process (its rate per process, times the threads,
 * is the all-threads denominator), so the figures say that the bench works, not how fast this machine is.
 */
const SMOKE: Settings = {
  ...QUICK,
  limitProcesses: 1,
  coreSeconds: 0.2,
  stepSeconds: 0.01,
  rsaKeys: 1,
};

function parseParts(text: string | undefined): PartName[] {
  if (!text) return [...PART_NAMES];
  const wanted = text.split(',').map((s) => s.trim()).filter(Boolean);
  for (const name of wanted) {
    if (!(PART_NAMES as readonly string[]).includes(name)) throw new Error(`unknown part "${name}" in --only (parts: ${PART_NAMES.join(', ')})`);
  }
  // The limit is every ratio's denominator: it always runs.
  return PART_NAMES.filter((p) => p === 'limit' || wanted.includes(p));
}

function parseAgentRuns(text: string): AgentOptions['runs'] {
  return text.split(',').map((item) => {
    const [keyType, streams, identities, perConnection = '1', ...rest] = item.trim().split(':');
    const valid = (keyType === 'ECDSA' || keyType === 'RSA') && Number(streams) >= 1 && Number(identities) >= 1 && rest.length === 0;
    if (!valid || !Number.isInteger(Number(perConnection)) || Number(perConnection) < 1 || Number(streams) % Number(perConnection) !== 0) {
      throw new Error(
        `MESHCA_BENCH_AGENT_RUNS: "${item}" is not KEYTYPE:STREAMS:IDENTITIES[:STREAMS_PER_CONNECTION] such as ECDSA:2000:400 or ECDSA:10000:2000:2 ` +
          '(streams a whole multiple of streams per connection)',
      );
    }
    return { keyType, streams: Number(streams), identities: Number(identities), streamsPerConnection: Number(perConnection) };
  });
}

function log(line: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

function limitFor(limit: LimitResult, kind: CaKind): number {
  return limit[CA_KINDS[kind].opensslAlgorithm].signPerSecond;
}

export function evaluateTargets(results: BenchResults): TargetResult[] {
  const targets: TargetResult[] = [];
  const e2e = (kind: CaKind) => results.e2e?.find((k) => k.kind === kind && k.serverMode === 'meshca ca');
  const prototype = results.e2e?.find((k) => k.prototypeThreads !== null);
  const level = (kind: CaKind, concurrency: number) => e2e(kind)?.levels.find((l) => l.concurrency === concurrency);
  const ratioTarget = (kind: CaKind, goal: number): TargetResult => {
    const l = level(kind, 256);
    return {
      description: `end to end, concurrency 256, ${CA_KINDS[kind].label} CA`,
      target: `>= ${goal}x OpenSSL ${CA_KINDS[kind].opensslAlgorithm} -multi`,
      measured: l ? `${l.ratio.toFixed(3)}x (${Math.round(l.certsPerSecond)} certs/s)` : null,
      met: l ? l.ratio >= goal : null,
    };
  };
  targets.push(ratioTarget('rsa', 0.4), ratioTarget('ec', 0.05));
  const prototypeTop = prototype?.levels.find((l) => l.concurrency === 256);
  if (prototype && prototypeTop) {
    const goal = prototype.kind === 'rsa' ? 0.4 : 0.05;
    targets.push({
      description: `(prototype, not meshca ca) end to end, concurrency 256, ${prototype.label} CA, ${prototype.serverMode}`,
      target: `>= ${goal}x OpenSSL ${CA_KINDS[prototype.kind].opensslAlgorithm} -multi`,
      measured: `${prototypeTop.ratio.toFixed(3)}x (${Math.round(prototypeTop.certsPerSecond)} certs/s)`,
      met: prototypeTop.ratio >= goal,
    });
  }
  for (const kind of ['rsa', 'ec'] as const) {
    const low = level(kind, 1);
    const high = level(kind, 256);
    targets.push({
      description: `p99 at concurrency 256 vs p50 at concurrency 1, ${CA_KINDS[kind].label} CA`,
      target: '< 10x',
      measured: low && high ? `${(high.p99Ms / low.p50Ms).toFixed(1)}x (${high.p99Ms.toFixed(1)} ms / ${low.p50Ms.toFixed(2)} ms)` : null,
      met: low && high ? high.p99Ms < 10 * low.p50Ms : null,
    });
  }
  for (const kind of ['rsa', 'ec'] as const) {
    const levels = e2e(kind)?.levels ?? [];
    const best = Math.max(0, ...levels.map((l) => l.certsPerSecond));
    const last = levels[levels.length - 1];
    targets.push({
      description: `no throughput cliff as concurrency grows, ${CA_KINDS[kind].label} CA`,
      target: 'certs/s at the highest concurrency >= 80% of the best level',
      measured: last && best > 0 ? `${Math.round((last.certsPerSecond / best) * 100)}% (curve: ${levels.map((l) => `c${l.concurrency} ${Math.round(l.certsPerSecond)}/s`).join(', ')})` : null,
      met: last && best > 0 ? last.certsPerSecond >= 0.8 * best : null,
    });
  }
  const api = results.apiserver;
  targets.push({
    description: 'TokenReview calls per 1000 CSRs from 100 workloads',
    target: '<= 100',
    measured: api ? api.tokenReviewsPer1000.toFixed(1) : null,
    met: api ? api.tokenReviewsPer1000 <= 100 : null,
  });
  const agent500 = results.agent?.runs.find((r) => r.keyType === 'ECDSA' && r.streams === 500);
  targets.push({
    description: 'agent, 500 ECDSA streams all served',
    target: 'within 5 s',
    measured: agent500 ? `${agent500.allServedSeconds.toFixed(2)} s` : null,
    met: agent500 ? agent500.allServedSeconds <= 5 && agent500.errors === 0 : null,
  });
  targets.push({
    description: 'agent, RSS growth per stream (500 ECDSA streams)',
    target: '< 50 KiB',
    measured: agent500 ? `${agent500.rssPerStreamKiB.toFixed(1)} KiB` : null,
    met: agent500 ? agent500.rssPerStreamKiB < 50 : null,
  });
  const k8s = results.kubernetes;
  targets.push({
    description: '1,000 PodCertificateRequests filed at once: all Issued, API calls per request',
    target: 'all Issued, <= 3 API calls per request, 0 refused status writes',
    measured: k8s ? `${k8s.issued}/${k8s.requests} Issued in ${k8s.seconds.toFixed(2)} s, ${k8s.apiCallsPerRequest.toFixed(2)} calls per request, ${k8s.rejectedStatusWrites} refused` : null,
    met: k8s ? k8s.issued === k8s.requests && k8s.apiCallsPerRequest <= 3 && k8s.rejectedStatusWrites === 0 : null,
  });
  const pkcs11 = results.pkcs11;
  targets.push({
    description: 'PKCS#11 intermediate mode vs the in-memory key source, P-256, concurrency 64',
    target: '>= 0.9x the in-memory certs/s',
    measured: pkcs11 ? `${pkcs11.intermediateRatio.toFixed(2)}x` : null,
    met: pkcs11 ? pkcs11.intermediateRatio >= 0.9 : null,
  });
  return targets;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      smoke: { type: 'boolean', default: false },
      only: { type: 'string' },
      out: { type: 'string' },
      markdown: { type: 'string' },
      'no-markdown': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      prototype: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const smoke = values.smoke === true;
  const quick = smoke || values.quick === true;
  const settings: Settings = { ...(smoke ? SMOKE : quick ? QUICK : FULL) };
  // MESHCA_BENCH_AGENT_RUNS=ECDSA:2000:400,...: the agent part's rows (key type, streams, identities) instead.
  const agentRuns = process.env.MESHCA_BENCH_AGENT_RUNS;
  if (agentRuns) settings.agent = { ...settings.agent, runs: parseAgentRuns(agentRuns) };
  // MESHCA_BENCH_AGENT_ROTATION=1: wait for the rotation of every identity in a --quick run too (the full run does).
  if (process.env.MESHCA_BENCH_AGENT_ROTATION === '1') settings.agent = { ...settings.agent, rotation: true };
  if (values.prototype) settings.prototypeKinds = ['rsa'];
  const parts = parseParts(values.only);
  const outDir = path.resolve(values.out ?? path.join(BENCH_DIR, 'results'));
  const everything = parts.length === PART_NAMES.length;
  const markdownFile = values['no-markdown'] ? undefined : values.markdown ? path.resolve(values.markdown) : !quick && everything ? path.join(BENCH_DIR, 'RESULTS.md') : undefined;
  const argv = process.argv.slice(2);
  const results: BenchResults = {
    version: 1,
    date: new Date().toISOString(),
    mode: smoke ? 'smoke' : quick ? 'quick' : 'full',
    command: `npm run bench${argv.length > 0 ? ` -- ${argv.join(' ')}` : ''}`,
    parts,
    machine: machineInfo(),
    targets: [],
    problems: [],
    contention: [],
    durationSeconds: 0,
  };
  const started = performance.now();
  const cores = availableParallelism();
  let failed = false;
  const runDir = mkdtempSync(path.join(tmpdir(), 'meshca-bench-'));

  const contention = new ContentionMonitor();
  const attempt = async (part: PartName, body: () => Promise<void>): Promise<void> => {
    if (!parts.includes(part)) return;
    contention.begin(part);
    try {
      await body();
    } catch (error) {
      const message = (error as Error).message;
      results.problems.push({ part, message });
      if (error instanceof PartUnavailable) {
        log(`${part}: not run: ${message}`);
      } else {
        failed = true;
        log(`${part}: FAILED: ${(error as Error).stack ?? message}`);
      }
    } finally {
      contention.end();
    }
  };

  try {
    const limitProcesses = settings.limitProcesses ?? cores;
    log(`OpenSSL limit: openssl speed -seconds ${settings.limitSeconds} -multi ${limitProcesses} rsa2048 ecdsap256`);
    contention.begin('limit');
    const limit = await measureOpensslLimit({ seconds: settings.limitSeconds, processes: limitProcesses });
    contention.end();
    results.limit = limit;

    await attempt('core', async () => {
      const core: CoreKindReport[] = [];
      for (const kind of ['rsa', 'ec'] as const) {
        const result = await runCoreBench(kind, { seconds: settings.coreSeconds, stepSeconds: settings.stepSeconds, threads: cores, rsaKeys: settings.rsaKeys, log });
        const limitRate = limitFor(limit, kind);
        const perProcess = limitRate / limit.processes;
        // With one OpenSSL process per thread (a full or quick run) the denominator is the -multi rate itself.
        core.push({ ...result, singleRatio: result.single.certsPerSecond / perProcess, allRatio: result.all.certsPerSecond / (perProcess * result.all.threads) });
      }
      results.core = core;
    });

    await attempt('kubernetes', async () => {
      const { runKubernetesBench } = await import('./kubernetes.js');
      results.kubernetes = await runKubernetesBench({ requests: 1000, log });
    });

    await attempt('stages', async () => {
      if (!existsSync(path.join(REPO_ROOT, 'dist/commands/ca.js'))) throw new PartUnavailable('`meshca ca` is not in this build (dist/commands/ca.js is missing)');
      const { runStagesBench } = await import('./stages.js');
      results.stages = await runStagesBench({ dir: runDir, concurrency: 64, workloads: 1000, warmupSeconds: settings.e2eWarmupSeconds, seconds: settings.e2eSeconds + 1, log });
    });

    const needsServer = parts.includes('e2e') || parts.includes('apiserver') || parts.includes('agent') || parts.includes('pkcs11');
    const caBuilt = existsSync(path.join(REPO_ROOT, 'dist/commands/ca.js'));
    if (needsServer && !caBuilt) {
      for (const part of ['e2e', 'apiserver', 'agent', 'pkcs11'] as const) {
        if (parts.includes(part)) results.problems.push({ part, message: '`meshca ca` is not in this build (dist/commands/ca.js is missing)' });
      }
    } else if (needsServer) {
      // Loaded only when needed: the Kubernetes stand-in and gRPC clients make start-up slower.
      const { runApiServerLoad, runE2e, startBenchKube } = await import('./e2e.js');
      const { runAgentBench } = await import('./agent.js');
      const kube = await startBenchKube();
      try {
        await attempt('e2e', async () => {
          results.e2e = [];
          // `meshca ca --workers <cores>` is what a user runs on this machine; one process is shown beside it.
          const floorRounds = Number(process.env.MESHCA_BENCH_E2E_FLOORS ?? 0);
          const floors: { kind: CaKind; echo: EchoTransport }[] = [
            { kind: 'ec', echo: 'grpc-js' },
            // The same floor without grpc-js: what another server transport could at most buy (issue 16).
            { kind: 'ec', echo: 'http2' },
          ];
          const runs: { kind: CaKind; prototypeThreads?: number; echo?: EchoTransport; workers?: number }[] = floorRounds > 0 ? Array.from({ length: floorRounds }, () => floors).flat() : [
            { kind: 'rsa' },
            { kind: 'ec' },
            ...(cores > 1 ? settings.singleProcessKinds.map((kind) => ({ kind, workers: 1 })) : []),
            ...settings.prototypeKinds.map((kind) => ({ kind, prototypeThreads: Math.max(1, cores - 1) })),
            ...floors,
          ];
          for (const run of runs) {
            results.e2e.push(
              await runE2e({
                kind: run.kind,
                kube,
                dir: runDir,
                concurrencies: settings.concurrencies,
                warmupSeconds: settings.e2eWarmupSeconds,
                seconds: settings.e2eSeconds,
                rsaKeys: settings.rsaKeys,
                limitSignPerSecond: limitFor(limit, run.kind),
                log,
                ...(run.prototypeThreads !== undefined ? { prototypeThreads: run.prototypeThreads } : {}),
                ...(run.echo ? { echo: run.echo } : {}),
                ...(run.workers !== undefined ? { workers: run.workers } : {}),
                cores,
              }),
            );
          }
        });
        await attempt('apiserver', async () => {
          results.apiserver = await runApiServerLoad({ kube, dir: runDir, requests: settings.apiServerRequests, workloads: 100, concurrency: 16, workers: cores, log });
        });
        await attempt('agent', async () => {
          if (!existsSync(path.join(REPO_ROOT, 'dist/commands/agent.js'))) {
            throw new PartUnavailable('`meshca agent` is not in this build (dist/commands/agent.js is missing)');
          }
          results.agent = await runAgentBench({ ...settings.agent, kube, dir: runDir, log });
        });
        await attempt('pkcs11', async () => {
          const { runPkcs11Bench } = await import('./pkcs11.js');
          results.pkcs11 = await runPkcs11Bench({ kube, dir: runDir, concurrency: 64, warmupSeconds: settings.e2eWarmupSeconds, seconds: settings.e2eSeconds, workers: cores, log });
        });
      } finally {
        await kube.close();
      }
    }
  } finally {
    if (values.keep) log(`kept the run directory ${runDir}`);
    else rmSync(runDir, { recursive: true, force: true });
  }

  results.durationSeconds = (performance.now() - started) / 1000;
  results.contention = contention.results();
  results.targets = evaluateTargets(results);
  const markdown = renderMarkdown(results);
  mkdirSync(outDir, { recursive: true });
  writeFileSync(path.join(outDir, 'latest.json'), `${JSON.stringify(results, null, 2)}\n`);
  if (markdownFile) writeFileSync(markdownFile, markdown);
  process.stdout.write(`\n${markdown}`);
  log(`results: ${path.join(outDir, 'latest.json')}${markdownFile ? ` and ${markdownFile}` : ''}`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  },
);
