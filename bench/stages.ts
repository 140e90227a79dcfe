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
 * (baseline, this, baseline, this), so that a change is judged by a ratio within one run; several builds are given
 * as NAME=PATH,NAME=PATH (each measured in turn before this tree).
 * MESHCA_BENCH_STAGES_ROUNDS repeats the interleaved sequence. MESHCA_BENCH_STAGES_CA=rsa signs with an RSA-2048 root
 * instead of P-256 (the workloads' keys stay P-256). MESHCA_BENCH_STAGES_PROFILE=0 skips the profiled runs (an A/B
 * of rates and CPU only, twice as quick).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { assertIssuedChain } from './check.js';
import { attributeProfile, emptyBreakdown, STAGES, type CpuProfile, type Stage } from './cpu-profile.js';
import { CLI, loadgenAgainst, startCaProcess, type Workloads } from './e2e.js';
import { BENCH_NAMESPACE, CA_KINDS, makeWorkloadCsrs, workloadServiceAccount, type CaKind } from './fixtures.js';

export interface StageRun {
  /** 'this tree' or 'baseline'. */
  build: string;
  profiled: boolean;
  certsPerSecond: number;
  serverCpuUsPerCert: number;
  /** Of which the main thread's (the event loop; the rest is libuv's pool, e.g. off-thread signatures, and V8's helpers). */
  mainThreadCpuUsPerCert: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  /** Profiled runs: main-thread µs per certificate per stage, and their sum (busy) and the idle time. */
  stageUsPerCert?: Record<Stage, number>;
  busyUsPerCert?: number;
  idleShare?: number;
}

export interface StagesResult {
  /** The CA's key (the root that signs): P-256 unless MESHCA_BENCH_STAGES_CA=rsa. */
  caKind: CaKind;
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

async function measureOnce(
  options: StagesOptions,
  build: { name: string; cli: string },
  profiled: boolean,
  jwt: { workloads: Workloads; rule: string },
  workers: number,
  caKind: CaKind,
): Promise<StageRun> {
  const profileDir = path.join(options.dir, `stages-profile-${++profileDirs}`);
  if (profiled) mkdirSync(profileDir, { recursive: true });
  const server = await startCaProcess({
    kind: caKind,
    dir: options.dir,
    workers,
    // Profiled runs start the module tree beside the bundle (dist/cli-modules.js, scripts/bundle.mjs): its file names tell the stages apart.
    cli: profiled ? moduleEntry(build.cli) : build.cli,
    extraArgs: ['--jwt-rule', jwt.rule],
    ...(profiled ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-interval', String(PROFILE_INTERVAL_US)] } : {}),
  });
  let result;
  const loadgen = await loadgenAgainst(server, jwt.workloads, options.dir);
  try {
    // Connections up, code optimized, every token seen once (a cache, where there is one, is warm: steady state).
    await loadgen.run({ concurrency: options.concurrency, warmupSeconds: 0, count: options.workloads });
    options.log(`stages: ${build.name}${profiled ? ', profiled' : ''}: ${CA_KINDS[caKind].label} CA, JWT_RULE, concurrency ${options.concurrency} for ${options.seconds}s`);
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
    mainThreadCpuUsPerCert: (result.serverMainThreadCpuSeconds / result.ok) * 1e6,
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

/** The unbundled entry beside a bundled dist/cli.js; the CLI itself for builds made before the bundle. */
function moduleEntry(cli: string): string {
  const modules = path.join(path.dirname(cli), 'cli-modules.js');
  return existsSync(modules) ? modules : cli;
}

/** MESHCA_BENCH_BASELINE_CLI: one PATH (named "baseline"), or NAME=PATH,NAME=PATH. */
function baselineBuilds(value: string): { name: string; cli: string }[] {
  const items = value.split(',').map((item) => item.trim()).filter(Boolean);
  return items.map((item) => {
    const at = item.indexOf('=');
    const build = at < 0 ? { name: 'baseline', cli: path.resolve(item) } : { name: item.slice(0, at), cli: path.resolve(item.slice(at + 1)) };
    if (!existsSync(build.cli)) throw new Error(`MESHCA_BENCH_BASELINE_CLI: ${build.cli} does not exist (build that tree first)`);
    if (items.length > 1 && at < 0) throw new Error('MESHCA_BENCH_BASELINE_CLI: name each of several builds, as NAME=PATH,NAME=PATH');
    return build;
  });
}

export async function runStagesBench(options: StagesOptions): Promise<StagesResult> {
  // "1,2": each build with each --workers count (labelled by it), interleaved like the builds.
  const workerCounts = (process.env.MESHCA_BENCH_STAGES_WORKERS ?? '1').split(',').map((w) => Number(w.trim()));
  if (!workerCounts.every((w) => Number.isInteger(w) && w >= 1)) throw new Error('MESHCA_BENCH_STAGES_WORKERS: give process counts such as 1 or 1,2');
  const rounds = Math.max(1, Number(process.env.MESHCA_BENCH_STAGES_ROUNDS ?? 1));
  const caKind = process.env.MESHCA_BENCH_STAGES_CA ?? 'ec';
  if (caKind !== 'ec' && caKind !== 'rsa') throw new Error('MESHCA_BENCH_STAGES_CA: give ec (a P-256 root, the default) or rsa (an RSA-2048 root)');
  const profiling = process.env.MESHCA_BENCH_STAGES_PROFILE === '0' ? [false] : [false, true];
  const baselines = baselineBuilds(process.env.MESHCA_BENCH_BASELINE_CLI ?? '');
  const baselineCli = baselines.length === 0 ? null : baselines.map((b) => (baselines.length === 1 ? b.cli : `${b.name}=${b.cli}`)).join(', ');
  const trees = [...baselines, { name: 'this tree', cli: CLI }];
  const builds = trees.flatMap((tree) =>
    workerCounts.map((workers) => ({ name: workerCounts.length > 1 ? `${tree.name}, --workers ${workers}` : tree.name, cli: tree.cli, workers })),
  );
  const jwt = await makeJwtWorkloads(options.dir, options.workloads);
  const runs: StageRun[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const profiled of profiling) {
      for (const build of builds) runs.push(await measureOnce(options, build, profiled, jwt, build.workers, caKind));
    }
  }
  return { caKind, concurrency: options.concurrency, workloads: options.workloads, workers: workerCounts, profileIntervalUs: PROFILE_INTERVAL_US, baselineCli, runs };
}
