/**
 * Where a server's CPU goes, per stage of a certificate request, from a V8 CPU profile (`node --cpu-prof`).
 *
 * A `.cpuprofile` is a call tree (`nodes`, each with a `callFrame` {functionName, url} and its `children`) and a
 * list of samples: the node that was on top of the stack at each tick (`samples`) and the time since the previous
 * tick (`timeDeltas`, µs). A sample's duration is the gap to the next one, as DevTools counts it.
 *
 * Each sample is given to the stage of its own frame or, when that frame names no stage (Node's crypto, streams,
 * events, a shared DER helper of src/pki), of its nearest ancestor that does: `crypto.verify` called from
 * src/pki/csr.ts is CSR work, the same call from src/ca/issued-check.ts is the final check, and http2 writes made
 * by grpc-js are HTTP/2. Pure: the bench part (bench/stages.ts) reads the files, this only does the counting.
 */

export interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export const STAGES = [
  'tls',
  'grpc',
  'handler',
  'auth',
  'csr',
  'sign',
  'check',
  'metrics',
  'audit',
  'gc',
  'native',
  'other',
] as const;
export type Stage = (typeof STAGES)[number];

export const STAGE_LABELS: Record<Stage, string> = {
  tls: 'TLS + HTTP/2 (node:tls, http2, net, stream I/O)',
  grpc: 'gRPC framing + metadata (@grpc/grpc-js, protobufjs)',
  handler: 'request handling (src/server, src/ca/authority, src/wire)',
  auth: 'authentication (src/authn, jose)',
  csr: 'CSR parse + key import + PoP verify (src/pki/csr.ts)',
  sign: 'TBS build + sign (src/pki/issue.ts, the signer)',
  check: 'final check (src/ca/issued-check.ts)',
  metrics: 'metrics (prom-client, src/server/metrics.ts)',
  audit: 'audit line (pino, src/log.ts)',
  gc: 'GC (main thread)',
  native: 'native, no JS on the stack (libuv, socket reads)',
  other: 'other',
};

/** `'skip'`: the frame names no stage; its caller decides. */
type Verdict = Stage | 'skip' | 'idle';

const NODE_MODULE_STAGES: [RegExp, Stage][] = [
  [/\/node_modules\/(@grpc\/|protobufjs\/|@protobufjs\/)/, 'grpc'],
  [/\/node_modules\/jose\//, 'auth'],
  [/\/node_modules\/prom-client\//, 'metrics'],
  [/\/node_modules\/(pino[^/]*|sonic-boom|fast-redact|thread-stream|quick-format-unescaped|atomic-sleep|on-exit-leak-free|fast-safe-stringify)\//, 'audit'],
];

/** Node's own transport modules; everything else of Node (crypto, events, streams, timers) passes to its caller. */
const TRANSPORT = /^node:(internal\/tls\/|_tls_|tls$|internal\/http2\/|http2$|net$|internal\/net$|internal\/stream_base_commons$|internal\/js_stream_socket$)/;

/** meshca's own modules by path under src/ (or dist/): the first match wins. Unlisted files (util, shared pki helpers) pass. */
const MESHCA_STAGES: [RegExp, Stage][] = [
  [/^authn\//, 'auth'],
  [/^pki\/csr$/, 'csr'],
  [/^(pki\/issue|ca\/(local-signer|snapshot-signer|managed-signer|signer))$/, 'sign'],
  [/^ca\/issued-check$/, 'check'],
  [/^server\/metrics$/, 'metrics'],
  [/^log$/, 'audit'],
  [/^(server\/|wire\/|ca\/authority$)/, 'handler'],
];

const MESHCA_FILE = /\/(?:src|dist)\/(.+)\.[cm]?[jt]s$/;

export function classifyFrame(frame: { functionName: string; url: string }): Verdict {
  const { functionName, url } = frame;
  if (url === '') {
    if (functionName === '(garbage collector)') return 'gc';
    if (functionName === '(program)') return 'native';
    if (functionName === '(idle)') return 'idle';
    return 'skip';
  }
  for (const [pattern, stage] of NODE_MODULE_STAGES) if (pattern.test(url)) return stage;
  if (url.includes('/node_modules/')) return 'skip';
  if (TRANSPORT.test(url)) return 'tls';
  if (url.startsWith('node:')) return 'skip';
  const own = MESHCA_FILE.exec(url.startsWith('file://') ? url.slice('file://'.length) : url);
  if (own) {
    for (const [pattern, stage] of MESHCA_STAGES) if (pattern.test(own[1]!)) return stage;
  }
  return 'skip';
}

export interface StageBreakdown {
  /** µs of samples per stage inside the window. */
  stageUs: Record<Stage, number>;
  /** µs the thread was idle inside the window. */
  idleUs: number;
  /** Non-idle µs inside the window: the sum of `stageUs`. */
  busyUs: number;
  samples: number;
}

export function emptyBreakdown(): StageBreakdown {
  return { stageUs: Object.fromEntries(STAGES.map((s) => [s, 0])) as Record<Stage, number>, idleUs: 0, busyUs: 0, samples: 0 };
}

/**
 * Adds the samples of `profile` taken in [fromUs, toUs) (the profile's own clock: on Linux, CLOCK_MONOTONIC in µs,
 * the clock of `process.hrtime`) to `into`. Without a window every sample counts.
 */
export function attributeProfile(profile: CpuProfile, window: { fromUs: number; toUs: number } | undefined, into: StageBreakdown = emptyBreakdown()): StageBreakdown {
  const byId = new Map<number, CpuProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const verdictOf = new Map<number, Stage | 'idle'>();
  const resolve = (id: number): Stage | 'idle' => {
    const known = verdictOf.get(id);
    if (known) return known;
    const node = byId.get(id);
    let verdict: Verdict = node ? classifyFrame(node.callFrame) : 'skip';
    if (verdict === 'skip') {
      const up = parent.get(id);
      verdict = up === undefined ? 'other' : resolve(up);
    }
    verdictOf.set(id, verdict);
    return verdict;
  };
  let t = profile.startTime;
  const times: number[] = new Array<number>(profile.samples.length);
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i] ?? 0;
    times[i] = t;
  }
  for (let i = 0; i < profile.samples.length; i++) {
    const at = times[i]!;
    if (window && (at < window.fromUs || at >= window.toUs)) continue;
    const duration = Math.max(0, (i + 1 < times.length ? times[i + 1]! : profile.endTime) - at);
    const verdict = resolve(profile.samples[i]!);
    into.samples++;
    if (verdict === 'idle') {
      into.idleUs += duration;
      continue;
    }
    into.stageUs[verdict] += duration;
    into.busyUs += duration;
  }
  return into;
}
