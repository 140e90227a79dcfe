/** The benchmark's results: one JSON document, rendered as Markdown tables for the terminal and the README. */
import { cpus, totalmem } from 'node:os';
import type { AgentResult } from './agent.js';
import type { CoreKindResult } from './core.js';
import type { PartContention } from './contention.js';
import type { ApiServerResult, E2eKindResult } from './e2e.js';
import type { LimitResult } from './limit.js';
import type { KubernetesBenchResult } from './kubernetes.js';
import type { Pkcs11Result } from './pkcs11.js';
import { STAGES, STAGE_LABELS } from './cpu-profile.js';
import { CA_KINDS, TRANSPORT_FLOOR_MODES } from './fixtures.js';
import type { StageRun, StagesResult } from './stages.js';

const FLOOR_LABELS: Readonly<Record<string, string>> = {
  [TRANSPORT_FLOOR_MODES['grpc-js']]: 'transport floor (no CA work)',
  [TRANSPORT_FLOOR_MODES.http2]: 'transport floor without grpc-js (node:http2, no CA work)',
};

function floorLabel(serverMode: string): string | undefined {
  return FLOOR_LABELS[serverMode];
}

function isFloor(kind: E2eKindResult): boolean {
  return floorLabel(kind.serverMode) !== undefined;
}

export const PART_NAMES = ['limit', 'core', 'e2e', 'apiserver', 'agent', 'pkcs11', 'kubernetes', 'stages'] as const;
export type PartName = (typeof PART_NAMES)[number];

/** A part whose command is not in this build: reported, but not a failure of the benchmark. */
export class PartUnavailable extends Error {}

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  platform: string;
  node: string;
}

export interface CoreKindReport extends CoreKindResult {
  /** One thread against OpenSSL's rate per process (the -multi rate divided by the processes). */
  singleRatio: number;
  /** All worker threads against OpenSSL's rate per process times the threads (the -multi rate when they match). */
  allRatio: number;
}

export interface TargetResult {
  description: string;
  target: string;
  /** What was measured, human-readable; null when the part did not run. */
  measured: string | null;
  /** null: not measured in this run. */
  met: boolean | null;
}

export interface PartProblem {
  part: PartName;
  message: string;
}

export interface BenchResults {
  version: 1;
  date: string;
  mode: 'full' | 'quick' | 'smoke';
  command: string;
  parts: PartName[];
  machine: MachineInfo;
  limit?: LimitResult;
  core?: CoreKindReport[];
  e2e?: E2eKindResult[];
  apiserver?: ApiServerResult;
  agent?: AgentResult;
  pkcs11?: Pkcs11Result;
  kubernetes?: KubernetesBenchResult;
  stages?: StagesResult;
  targets: TargetResult[];
  /** Parts that could not run, and why. */
  problems: PartProblem[];
  /** How much CPU other programs took during each part. */
  contention: PartContention[];
  durationSeconds: number;
}

function latencyCell(latency: { streams: number; served: number; p50Ms: number; p99Ms: number } | null | undefined): string {
  if (!latency) return 'n/a';
  return `${fixed(latency.p50Ms, 0)} / ${fixed(latency.p99Ms, 0)}${latency.served < latency.streams ? ` (only ${latency.served} of ${latency.streams} served)` : ''}`;
}

/** "10000", or "10000 = 5000 × 2" when each connection (sidecar) carries several streams. */
function streamsCell(run: { streams: number; streamsPerConnection?: number }): string {
  const perConnection = run.streamsPerConnection ?? 1;
  return perConnection === 1 ? String(run.streams) : `${run.streams} = ${run.streams / perConnection} × ${perConnection}`;
}

export function machineInfo(): MachineInfo {
  const list = cpus();
  return {
    cpus: list.length,
    cpuModel: list[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    platform: `${process.platform} ${process.arch}`,
    node: process.version,
  };
}

const int = (n: number): string => Math.round(n).toLocaleString('en-US');
const fixed = (n: number, digits = 2): string => n.toFixed(digits);
const ratio = (n: number): string => `${n.toFixed(2)}x`;
const ms = (n: number): string => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));

function table(header: string[], rows: string[][]): string {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/** The Markdown report: what the README's Performance section shows. */
export function renderMarkdown(results: BenchResults): string {
  const m = results.machine;
  const out: string[] = [];
  out.push(`Measured ${results.date.slice(0, 10)} on ${m.cpus} x ${m.cpuModel}, ${m.memoryGiB} GiB, ${m.platform}, Node ${m.node}` +
    (results.limit ? `, ${results.limit.opensslVersion}` : '') + '.');
  out.push(`Command: \`${results.command}\` (${results.mode} run, ${Math.round(results.durationSeconds)} s).`);
  if (results.contention.length > 0) {
    const pct = (share: number): string => `${Math.round(share * 100)}%`;
    const busiest = Math.max(...results.contention.map((c) => c.otherCpuShare));
    out.push(`CPU taken by other programs during each part: ${results.contention.map((c) => `${c.part} ${pct(c.otherCpuShare)}`).join(', ')}.` +
      (busiest > 0.1 ? ` **The machine was shared (up to ${pct(busiest)} of its CPU went elsewhere): these figures understate meshca; rerun on an idle machine.**` : ''));
  }
  if (results.limit) {
    const l = results.limit;
    out.push('', `**1. Limit** — \`${l.command}\``, '');
    out.push(table(['algorithm', 'sign/s', 'verify/s'], [
      ['rsa2048', int(l.rsa2048.signPerSecond), int(l.rsa2048.verifyPerSecond)],
      ['ecdsap256', int(l.ecdsap256.signPerSecond), int(l.ecdsap256.verifyPerSecond)],
    ]));
  }
  if (results.core) {
    out.push('', '**2. Signing core** — in-process `CertificateAuthority.issue` (CSR PEM in, verified, signed, PEM chain out)', '');
    out.push(table(['CA key', '1 thread certs/s', 'vs OpenSSL 1 process', 'worker threads', 'all threads certs/s', 'vs OpenSSL -multi'],
      results.core.map((c) => [c.label, int(c.single.certsPerSecond), ratio(c.singleRatio), String(c.all.threads), int(c.all.certsPerSecond), ratio(c.allRatio)])));
    out.push('', 'Where the time goes, one thread (microseconds per certificate):', '');
    out.push(table(['CA key', 'parse CSR', 'verify CSR', 'build + sign', '(sign alone)', 'PEM', 'whole issue'],
      results.core.map((c) => [c.label, fixed(c.steps.parseCsr, 1), fixed(c.steps.verifyCsr, 1), fixed(c.steps.buildAndSign, 1), fixed(c.steps.signOnly, 1), fixed(c.steps.pemChain, 1), fixed(c.steps.issue, 1)])));
  }
  if (results.e2e) {
    const main = results.e2e.find((k) => k.serverMode === 'meshca ca');
    out.push('', `**3. End to end** — \`meshca ca${main ? ` --workers ${main.workers}` : ''}\` over gRPC/TLS (rows without a note; \`--workers 1\` rows: one process), separate load-generator process, TokenReview stand-in at 1 ms`, '');
    const rows: string[][] = [];
    for (const kind of results.e2e) {
      for (const level of kind.levels) {
        const label = kind.serverMode === 'meshca ca' ? kind.label : floorLabel(kind.serverMode) ?? `${kind.label} (${kind.serverMode})`;
        rows.push([label, String(level.concurrency), int(level.certsPerSecond), isFloor(kind) ? '—' : ratio(level.ratio), ms(level.p50Ms), ms(level.p99Ms),
          fixed(level.serverCpuSecondsPer1000, 2), fixed(level.loadgenCpuSecondsPer1000, 2), level.errors === 0 ? '0' : int(level.errors)]);
      }
    }
    out.push(table(['CA key', 'concurrency', 'certs/s', 'vs OpenSSL -multi', 'p50 ms', 'p99 ms', 'server CPU s / 1000 certs', 'load generator CPU s / 1000', 'errors'], rows));
    const cas = results.e2e.filter((k) => !isFloor(k));
    out.push('', ((cas.length > 0 ? `Server peak RSS (VmHWM, all its processes): ${cas.map((k) => `${k.label}${k.serverMode === 'meshca ca' ? '' : ` (${k.serverMode})`} ${int(k.serverPeakRssMiB)} MiB`).join(', ')}.` : '') +
      (cas.some((k) => k.prototypeThreads !== null) ? ' Prototype rows: the same server with leaves signed on worker threads (bench/proto-ca.ts, see bench/NOTES.md); not what `meshca ca` does today.' : '') +
      (results.e2e.some((k) => k.serverMode === TRANSPORT_FLOOR_MODES['grpc-js'])
        ? ' Transport floor: the same API, TLS, message sizes and load generator against a server that answers at once (bench/echo-ca.ts): what gRPC alone costs here.'
        : '') +
      (results.e2e.some((k) => k.serverMode === TRANSPORT_FLOOR_MODES.http2)
        ? ' Without grpc-js: the same echo served by node:http2 with the gRPC framing written out and the same protobuf code; the gap between the two floors is what another server transport could at most save per call.'
        : '')).trimStart());
  }
  if (results.apiserver) {
    const a = results.apiserver;
    out.push('', `**4. API-server load** — ${int(a.requests)} CSRs from ${a.workloads} workloads (fresh CA, cold cache): ` +
      `${int(a.tokenReviews)} TokenReview calls = **${fixed(a.tokenReviewsPer1000, 1)} per 1000 CSRs**.`);
  }
  if (results.agent) {
    out.push('', '**5. Agent** — one `meshca agent` (node mode, SDS over a Unix socket) per row, all connecting at once; every stream its own connection and token, ' +
      'unless the streams column says "sidecars × streams": Envoy sidecars, each one connection and one token carrying its `default` and `ROOTCA` streams', '');
    out.push(table(['workload keys', 'streams', 'identities', 'all served in s', 'agent / CA / load client CPU s', 'agent RSS growth per stream KiB (peak)', 'agent RSS before → after MiB', 'SECRET_TTL s', 'rotation of all pushed within s', 'new pods: first secret p50 / p99 ms, quiet', '… during the rotation', 'errors (streams retried)'],
      results.agent.runs.map((r) => [r.keyType, streamsCell(r), String(r.identities), fixed(r.allServedSeconds, 2), `${fixed(r.agentCpuSeconds, 1)} / ${fixed(r.caCpuSeconds, 1)} / ${r.clientCpuSeconds === undefined ? '—' : fixed(r.clientCpuSeconds, 1)}`,
        `${fixed(r.rssPerStreamKiB, 1)} (${fixed(r.peakRssPerStreamKiB, 1)})`,
        `${fixed(r.agentRssBeforeMiB, 0)} → ${fixed(r.agentRssAfterMiB, 0)}`,
        String(r.secretTtlSeconds),
        r.rotationSeconds === null ? 'n/a' : `${fixed(r.rotationSeconds, 2)}${r.rotatedStreams !== null && r.rotatedStreams < (r.rotatingStreams ?? r.streams) ? ` (only ${r.rotatedStreams} of ${r.rotatingStreams ?? r.streams} streams)` : ''}`,
        latencyCell(r.newStreamsQuiet),
        latencyCell(r.newStreamsDuringRotation),
        r.streamRetries === undefined ? String(r.errors) : `${r.errors} (${int(r.streamRetries)})`])));
    out.push('', 'Rotation: from the first rotated secret a stream receives to the last; it includes the ±1% grace-ratio jitter (±0.01 x SECRET_TTL). ' +
      'New pods: 5% of the connections (at most 100) with new tokens of the same service accounts, opened at once, each timed from its opening to its first ' +
      'secret: once everything is served and quiet, and again at the first rotated secret, while the agent renews every identity.');
  }
  const breakdowns = results.agent?.runs.filter((r) => r.memoryPerStreamAfterGcKiB) ?? [];
  if (breakdowns.length > 0) {
    out.push('', 'Agent memory per stream after a full GC (MESHCA_BENCH_AGENT_GC=1; process.memoryUsage() in the agent), KiB:', '');
    out.push(table(['workload keys', 'streams', 'identities', 'RSS', 'JS heap held (live)', 'external (of which Buffers)', 'native (RSS − heap − external)'],
      breakdowns.map((r) => {
        const m = r.memoryPerStreamAfterGcKiB!;
        return [r.keyType, streamsCell(r), String(r.identities), fixed(m.rss, 1), `${fixed(m.heapTotal, 1)} (${fixed(m.heapUsed, 1)})`, `${fixed(m.external, 1)} (${fixed(m.arrayBuffers, 1)})`, fixed(m.native, 1)];
      })));
  }
  if (results.pkcs11) {
    const p = results.pkcs11;
    out.push('', `**6. CA key in a PKCS#11 token** — SoftHSM2, P-256, \`meshca ca --workers ${p.workers}\`, concurrency ${p.concurrency}, the same load for each row; token time from \`meshca_pkcs11_sign_duration_seconds\``, '');
    out.push(table(['key source', 'certs/s', 'vs in-memory', 'p50 ms', 'p99 ms', 'server CPU ms / cert', 'token signatures', 'token wall ms / signature', 'token share of server CPU (est.)', 'errors'],
      p.rows.map((r) => {
        const memory = p.rows.find((m) => m.mode === 'in-memory')!;
        return [r.mode, int(r.certsPerSecond), ratio(r.certsPerSecond / memory.certsPerSecond), ms(r.p50Ms), ms(r.p99Ms), fixed(r.serverCpuMsPerCert, 3),
          r.tokenSignatures === null ? '—' : int(r.tokenSignatures), r.tokenMsPerSignature === null ? '—' : fixed(r.tokenMsPerSignature, 3),
          r.tokenShareOfServerCpu === null ? '—' : `${Math.round(r.tokenShareOfServerCpu * 100)}%`, r.errors === 0 ? '0' : int(r.errors)];
      })));
    out.push('', 'Intermediate mode: the token signs one intermediate when the CA starts (and at each renewal), so its row should match in-memory signing. Direct mode: every certificate is signed in the token, and with `--workers` every request is forwarded to the primary process that holds the token session. SoftHSM2 signs on the server\'s own thread pool, so its CPU is inside the server\'s: its share is estimated as direct mode\'s CPU per certificate beyond intermediate mode\'s, over direct mode\'s. Token wall time includes waiting for one of its 4 sessions. A network HSM adds a round trip per signature instead.');
  }
  if (results.kubernetes) {
    const k = results.kubernetes;
    out.push('', `**7. Pod certificates** — ${int(k.requests)} PodCertificateRequests filed at once for ${int(k.requests)} pods; the signer (in process, P-256 root) against the Kubernetes stand-in over HTTPS`, '');
    out.push(table(['requests', 'Issued', 'not Issued', 'all answered in s', 'of which filing s', 'requests/s', 'API calls', 'API calls per request', 'status writes refused'],
      [[int(k.requests), int(k.issued), int(k.notIssued), fixed(k.seconds, 2), fixed(k.filingSeconds, 2), int(k.requestsPerSecond), int(k.apiCalls), fixed(k.apiCallsPerRequest, 2), int(k.rejectedStatusWrites)]]));
    out.push('', `API calls by kind: ${Object.entries(k.apiCallsByKind).sort((a, b) => b[1] - a[1]).map(([kind, n]) => `${kind} ${int(n)}`).join(', ')}.`);
  }
  if (results.stages) out.push('', ...renderStages(results.stages));
  out.push('', '**Targets**', '');
  out.push(table(['target', 'goal', 'measured', 'met'], results.targets.map((t) => [t.description, t.target, t.measured ?? 'not run',
    t.met === null ? 'not measured' : t.met ? 'met' : '**not met**'])));
  const lowLatency = results.e2e?.filter((k) => k.serverMode === 'meshca ca') ?? [];
  for (const kind of lowLatency) {
    const c1 = kind.levels.find((l) => l.concurrency === 1);
    const c256 = kind.levels.find((l) => l.concurrency === 256);
    if (!c1 || !c256 || !results.limit) continue;
    // Little's law: 256 callers that each wait for their answer see latency >= 256 / throughput.
    const needed = 256 / ((10 * c1.p50Ms) / 1000);
    const limit = kind.kind === 'rsa' ? results.limit.rsa2048.signPerSecond : results.limit.ecdsap256.signPerSecond;
    out.push('', `${kind.label}: p99 at concurrency 256 under 10x the p50 at concurrency 1 needs, by Little's law, at least ` +
      `256 / (10 x ${c1.p50Ms.toFixed(2)} ms) = ${int(needed)} certs/s at concurrency 256 (OpenSSL alone signs ${int(limit)}/s here; measured ${int(c256.certsPerSecond)}/s).`);
  }
  if (results.problems.length > 0) {
    out.push('', 'Parts that did not run:', '');
    for (const p of results.problems) out.push(`- ${p.part}: ${p.message}`);
  }
  return out.join('\n') + '\n';
}

function mean(values: number[]): number {
  return values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length;
}

/** Part "stages": the plain runs (rates), then µs per certificate per stage of each build's profiled runs (mean). */
export function renderStages(s: StagesResult): string[] {
  const out: string[] = [];
  const workers = s.workers.length > 1 ? '`--workers` as each build says' : s.workers[0] === 1 ? 'one process' : `\`--workers ${s.workers[0]}\``;
  out.push(`**8. CPU budget per stage** — \`meshca ca\` (${workers}), ${CA_KINDS[s.caKind].label} root, JWT_RULE (JWKS file, ES256 tokens), ${int(s.workloads)} workloads, concurrency ${s.concurrency}; ` +
    `stages from \`--cpu-prof\` (${s.profileIntervalUs} µs sampling) over the measured window${s.baselineCli ? `; baseline: ${s.baselineCli}, runs interleaved` : ''}`, '');
  out.push(table(['build', 'run', 'certs/s', 'server CPU µs / cert', 'of which main thread', 'p50 ms', 'p99 ms', 'errors'],
    s.runs.map((r) => [r.build, r.profiled ? 'profiled' : 'plain', int(r.certsPerSecond), int(r.serverCpuUsPerCert), r.mainThreadCpuUsPerCert === undefined ? '—' : int(r.mainThreadCpuUsPerCert), ms(r.p50Ms), ms(r.p99Ms), int(r.errors)])));
  const builds = [...new Set(s.runs.map((r) => r.build))];
  const profiled = (build: string): StageRun[] => s.runs.filter((r) => r.build === build && r.profiled && r.stageUsPerCert);
  const plain = (build: string): StageRun[] => s.runs.filter((r) => r.build === build && !r.profiled);
  // The profile's samples are wall time on the main thread: on shared cores they include time the thread waited
  // for a core. Their shares are what the table keeps; µs are those shares of the plain run's CPU per certificate.
  const share = (build: string, stage: (typeof STAGES)[number]): number =>
    mean(profiled(build).map((r) => (r.busyUsPerCert ? r.stageUsPerCert![stage] / r.busyUsPerCert : 0)));
  const cpu = (build: string): number => mean(plain(build).map((r) => r.serverCpuUsPerCert));
  // The profile is the main thread's: its shares apply to the main thread's CPU (results without that figure: the
  // process's). What other threads spent (libuv's pool: off-thread signatures; V8's GC helpers) is its own row.
  const mainCpu = (build: string): number => mean(plain(build).map((r) => r.mainThreadCpuUsPerCert ?? r.serverCpuUsPerCert));
  const rows: string[][] = STAGES.map((stage) => [
    STAGE_LABELS[stage],
    ...builds.flatMap((b) => [fixed(share(b, stage) * mainCpu(b), 1), `${fixed((share(b, stage) * mainCpu(b) * 100) / cpu(b), 1)}%`]),
  ]);
  rows.push([
    'other threads: libuv\'s pool (costly signatures, src/pki/off-thread.ts), V8\'s GC helpers',
    ...builds.flatMap((b) => [fixed(cpu(b) - mainCpu(b), 1), `${fixed(((cpu(b) - mainCpu(b)) * 100) / cpu(b), 1)}%`]),
  ]);
  rows.push(['**server CPU per certificate (/proc, plain run)**', ...builds.flatMap((b) => [`**${fixed(cpu(b), 1)}**`, '100%'])]);
  rows.push(['certs/s (plain run)', ...builds.flatMap((b) => [int(mean(plain(b).map((r) => r.certsPerSecond))), ''])]);
  rows.push(['main thread wall µs per certificate in the profile (busy; idle share)', ...builds.flatMap((b) => [fixed(mean(profiled(b).map((r) => r.busyUsPerCert ?? 0)), 1), `${Math.round(mean(profiled(b).map((r) => r.idleShare ?? 0)) * 100)}% idle`])]);
  out.push('', 'Server CPU µs per certificate by stage: each profile sample goes to its own frame or its nearest caller that names a stage; the shares of the main thread\'s busy samples are applied to the plain run\'s main-thread CPU per certificate, and the other threads\' CPU is a row of its own:', '');
  out.push(table(['stage', ...builds.flatMap((b) => [`${b} µs`, `${b} share`])], rows));
  out.push('', 'Profile samples are wall time of the main thread (on shared cores, also time spent waiting for a core), hence shares. The load generator shares the cores.');
  return out;
}
