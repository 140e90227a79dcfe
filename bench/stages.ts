/**
 * Part "stages": the CPU budget of one certificate, per stage, from a CPU profile of the real server under load.
 *
 * `meshca ca` as the README starts it (one process; MESHCA_BENCH_STAGES_WORKERS=1,2 adds or picks --workers counts), a P-256
 * self-signed root, callers authenticated by JWT_RULE (a JWKS file, ES256 tokens shaped like projected
 * service-account tokens, one per workload), the load generator at concurrency 64 over the workloads' CSRs.
 * Each build is measured twice: plain, for certs/s and server CPU per certificate (/proc), and under
 * `--cpu-prof`, whose samples inside the load generator's measured window are given to stages by
 * bench/cpu-profile.ts and divided by the certificates issued in that window.
 *
 * MESHCA_BENCH_BASELINE_CLI=/other/tree/dist/cli.js measures that build too, interleaved with this one
 * (baseline, this, baseline, this), so that a change is judged by a ratio within one run.
 * MESHCA_BENCH_STAGES_ROUNDS repeats the interleaved sequence.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { assertIssuedChain } from './check.js';
import { attributeProfile, emptyBreakdown, STAGES, type CpuProfile, type Stage } from './cpu-profile.js';
import { CLI, loadgenAgainst, startCaProcess, type Workloads } from './e2e.js';
import { BENCH_NAMESPACE, makeWorkloadCsrs, workloadServiceAccount } from './fixtures.js';

export interface StageRun {
  /** 'this tree' or 'baseline'. */
  build: string;
  profiled: boolean;
  certsPerSecond: number;
  serverCpuUsPerCert: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  /** Profiled runs: main-thread µs per certificate per stage, and their sum (busy) and the idle time. */
  stageUsPerCert?: Record<Stage, number>;
  busyUsPerCert?: number;
  idleShare?: number;
}

export interface StagesResult {
  concurrency: number;
  workloads: number;
  /** The --workers counts measured (one: every row; several: named in each build's label). */
  workers: number[];
  profileIntervalUs: number;
  baselineCli: string | null;
  runs: StageRun[];
}

export interface StagesOptions {
  dir: string;
  concurrency: number;
  workloads: number;
  warmupSeconds: number;
  seconds: number;
  log: (line: string) => void;
}

const AUDIENCE = 'istio-ca';
const PROFILE_INTERVAL_US = 200;

async function makeJwtWorkloads(dir: string, workloads: number): Promise<{ workloads: Workloads; rule: string }> {
  const issuer = await DevTokenIssuer.loadOrCreate(path.join(dir, 'jwt-issuer'));
  const tokens = await Promise.all(
    Array.from({ length: workloads }, (_, i) => issuer.mint({ namespace: BENCH_NAMESPACE, serviceAccount: workloadServiceAccount(i), audiences: [AUDIENCE], ttlSeconds: 3600 })),
  );
  const csrs = await makeWorkloadCsrs('ec', { count: workloads, workloads, distinctKeys: workloads });
  return {
    workloads: { csrs, tokens, requests: csrs.map((c) => ({ csrPem: c.csrPem, token: tokens[c.workload]! })) },
    rule: JSON.stringify(issuer.jwtRule([AUDIENCE])),
  };
}

function readProfiles(dir: string): CpuProfile[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as CpuProfile);
}

let profileDirs = 0;

async function measureOnce(options: StagesOptions, build: { name: string; cli: string }, profiled: boolean, jwt: { workloads: Workloads; rule: string }, workers: number): Promise<StageRun> {
  const profileDir = path.join(options.dir, `stages-profile-${++profileDirs}`);
  if (profiled) mkdirSync(profileDir, { recursive: true });
  const server = await startCaProcess({
    kind: 'ec',
    dir: options.dir,
    workers,
    cli: build.cli,
    extraArgs: ['--jwt-rule', jwt.rule],
    ...(profiled ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-interval', String(PROFILE_INTERVAL_US)] } : {}),
  });
  let result;
  const loadgen = await loadgenAgainst(server, jwt.workloads, options.dir);
  try {
    // Connections up, code optimized, every token seen once (a cache, where there is one, is warm: steady state).
    await loadgen.run({ concurrency: options.concurrency, warmupSeconds: 0, count: options.workloads });
    options.log(`stages: ${build.name}${profiled ? ', profiled' : ''}: P-256, JWT_RULE, concurrency ${options.concurrency} for ${options.seconds}s`);
    result = await loadgen.run({ concurrency: options.concurrency, warmupSeconds: options.warmupSeconds, seconds: options.seconds });
  } finally {
    await loadgen.close();
    // A clean exit on SIGTERM is what writes the profile.
    await server.stop();
  }
  if (result.ok === 0) throw new Error(`stages: no certificate was issued: ${result.errorSamples.join('; ')}`);
  if (result.sample) {
    const csr = jwt.workloads.csrs[result.sample.requestIndex]!;
    assertIssuedChain(result.sample.chain, csr.identity, csr.csrPem);
  }
  const run: StageRun = {
    build: build.name,
    profiled,
    certsPerSecond: result.certsPerSecond,
    serverCpuUsPerCert: (result.serverCpuSeconds / result.ok) * 1e6,
    p50Ms: result.p50Ms,
    p99Ms: result.p99Ms,
    errors: result.errors,
  };
  if (profiled) {
    const profiles = readProfiles(profileDir);
    if (profiles.length === 0) throw new Error(`stages: the server wrote no CPU profile into ${profileDir}`);
    const breakdown = emptyBreakdown();
    for (const profile of profiles) attributeProfile(profile, { fromUs: result.windowFromUs, toUs: result.windowToUs }, breakdown);
    if (breakdown.samples === 0) throw new Error('stages: no profile sample fell inside the measured window (the profile clock is not process.hrtime\'s?)');
    run.stageUsPerCert = Object.fromEntries(STAGES.map((s) => [s, breakdown.stageUs[s] / result.ok])) as Record<Stage, number>;
    run.busyUsPerCert = breakdown.busyUs / result.ok;
    run.idleShare = breakdown.idleUs / (breakdown.idleUs + breakdown.busyUs);
  }
  return run;
}

export async function runStagesBench(options: StagesOptions): Promise<StagesResult> {
  // "1,2": each build with each --workers count (labelled by it), interleaved like the builds.
  const workerCounts = (process.env.MESHCA_BENCH_STAGES_WORKERS ?? '1').split(',').map((w) => Number(w.trim()));
  if (!workerCounts.every((w) => Number.isInteger(w) && w >= 1)) throw new Error('MESHCA_BENCH_STAGES_WORKERS: give process counts such as 1 or 1,2');
  const rounds = Math.max(1, Number(process.env.MESHCA_BENCH_STAGES_ROUNDS ?? 1));
  const baselineCli = process.env.MESHCA_BENCH_BASELINE_CLI ? path.resolve(process.env.MESHCA_BENCH_BASELINE_CLI) : null;
  if (baselineCli && !existsSync(baselineCli)) throw new Error(`MESHCA_BENCH_BASELINE_CLI: ${baselineCli} does not exist (build that tree first)`);
  const trees = [...(baselineCli ? [{ name: 'baseline', cli: baselineCli }] : []), { name: 'this tree', cli: CLI }];
  const builds = trees.flatMap((tree) =>
    workerCounts.map((workers) => ({ name: workerCounts.length > 1 ? `${tree.name}, --workers ${workers}` : tree.name, cli: tree.cli, workers })),
  );
  const jwt = await makeJwtWorkloads(options.dir, options.workloads);
  const runs: StageRun[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const profiled of [false, true]) {
      for (const build of builds) runs.push(await measureOnce(options, build, profiled, jwt, build.workers));
    }
  }
  return { concurrency: options.concurrency, workloads: options.workloads, workers: workerCounts, profileIntervalUs: PROFILE_INTERVAL_US, baselineCli, runs };
}
