/**
 * The SDS side of part 5: a separate process playing many Envoys at once. Each connection to the agent's Unix
 * socket sends its own workload token in `istio_sds_credentials_header-bin` on each of its streams (one stream per
 * connection by default; with more, `default` and `ROOTCA` as an Envoy sidecar multiplexes them), and behaves like
 * Envoy (ACKs, validates key against certificate, follows pushes) through meshca's own SDS client.
 *
 * Driven over IPC: `open` starts every stream at once and answers when all hold a secret; `probe` opens a small
 * batch of new streams and answers with their time to first secret; `rotation` answers when every `default` stream
 * of the burst has received a second, pushed secret, after opening a batch of new streams at the first such push
 * (their time to first secret while the agent renews every identity).
 */
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { SecretWatch, workloadTokenMetadata } from '../src/agent/sds-client.js';
import { SdsClient } from '../src/wire/protos.js';

export type SdsLoadCommand =
  | { type: 'open'; socketPath: string; tokens: string[]; streamsPerConnection: number; timeoutSeconds: number }
  /** Opens `tokens` as new connections (streamsPerConnection each) and answers with their time to first secret. */
  | { type: 'probe'; socketPath: string; tokens: string[]; streamsPerConnection: number; timeoutSeconds: number }
  /** Waits for the rotation of all; opens `lateTokens` as new connections when the first rotated secret arrives. */
  | { type: 'rotation'; socketPath: string; lateTokens: string[]; streamsPerConnection: number; timeoutSeconds: number }
  | { type: 'exit' };

/** Time to first secret of a batch of new streams: opened at once, each measured from its opening, ms. */
export interface FirstSecretLatency {
  streams: number;
  served: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/**
 * The resources the streams of one connection ask for, in order: what an Envoy sidecar subscribes to (its
 * certificate and the roots), each on its own gRPC stream; beyond two, the same names again.
 */
const SIDECAR_RESOURCES = ['default', 'ROOTCA'];

export type SdsLoadMessage =
  | { type: 'ready' }
  | { type: 'opened'; streams: number; served: number; allServedSeconds: number; errors: number; errorSamples: string[]; streamRetries: number }
  | { type: 'probed'; latency: FirstSecretLatency }
  | { type: 'rotated'; streams: number; rotated: number; firstPushSeconds: number; windowSeconds: number; duringRotation: FirstSecretLatency | null }
  | { type: 'error'; message: string };

interface StreamState {
  watch: SecretWatch;
  /** performance.now() when the stream was opened; `updates` are performance.now() of each secret received. */
  openedAt: number;
  /** The SDS resource the stream watches; only `default` changes when an identity rotates. */
  resource: string;
  updates: number[];
  /** A NACK: final for this stream. */
  error: string | null;
  lastStreamError?: string;
}

/** Streams that failed and were opened again (Envoy's backoff), e.g. a connection refused by a full listen queue. */
let streamRetries = 0;
/** The streams of the first burst (`open`), which the rotation follows. */
const streams: StreamState[] = [];
/** Every stream opened, to close them all on exit. */
const everyStream: StreamState[] = [];
let waiter: (() => void) | null = null;

const send = (message: SdsLoadMessage): void => {
  process.send?.(message);
};

function waitFor(condition: () => boolean, timeoutSeconds: number): Promise<boolean> {
  if (condition()) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      waiter = null;
      resolve(false);
    }, timeoutSeconds * 1000);
    waiter = () => {
      if (!condition()) return;
      clearTimeout(timer);
      waiter = null;
      resolve(true);
    };
  });
}

function openStream(client: SdsClient, token: string, resource: string): StreamState {
  const state: StreamState = { watch: undefined as unknown as SecretWatch, openedAt: performance.now(), resource, updates: [], error: null };
  state.watch = new SecretWatch(
    client,
    // Reconnecting as Envoy does: thousands of streams connecting at once overflow the agent's listen backlog
    // (EAGAIN), and Envoy retries such a connection with backoff.
    { name: resource, metadata: () => workloadTokenMetadata(token), reconnect: true },
    {
      onUpdate: () => {
        state.updates.push(performance.now());
        waiter?.();
      },
      onNack: (message) => {
        state.error ??= `NACK: ${message}`;
      },
      onStreamError: (error) => {
        // Not final: the stream reconnects; the message is kept for the report if it never gets a secret.
        state.lastStreamError = error.message;
        streamRetries++;
      },
    },
  );
  everyStream.push(state);
  return state;
}

/** One connection per token, each carrying `perConnection` streams with that token. */
function openConnections(socketPath: string, tokens: string[], perConnection: number): StreamState[] {
  const opened: StreamState[] = [];
  for (const token of tokens) {
    // A local subchannel pool gives every client its own connection, as separate Envoys have; the streams of one
    // client share it, as one Envoy's SDS subscriptions do.
    const client = new SdsClient(`unix:${path.resolve(socketPath)}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, 'grpc.enable_channelz': 0 });
    for (let j = 0; j < perConnection; j++) opened.push(openStream(client, token, SIDECAR_RESOURCES[j % SIDECAR_RESOURCES.length]!));
  }
  return opened;
}

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function firstSecretLatency(batch: StreamState[]): FirstSecretLatency {
  const times = batch.filter((s) => s.updates.length > 0).map((s) => s.updates[0]! - s.openedAt).sort((a, b) => a - b);
  return { streams: batch.length, served: times.length, p50Ms: percentile(times, 50), p99Ms: percentile(times, 99), maxMs: times.at(-1) ?? 0 };
}

async function probe(command: Extract<SdsLoadCommand, { type: 'probe' }>): Promise<void> {
  const batch = openConnections(command.socketPath, command.tokens, command.streamsPerConnection);
  await waitFor(() => batch.every((s) => s.updates.length > 0 || s.error !== null), command.timeoutSeconds);
  send({ type: 'probed', latency: firstSecretLatency(batch) });
}

async function open(command: Extract<SdsLoadCommand, { type: 'open' }>): Promise<void> {
  const start = performance.now();
  streams.push(...openConnections(command.socketPath, command.tokens, command.streamsPerConnection));
  await waitFor(() => streams.every((s) => s.updates.length > 0 || s.error !== null), command.timeoutSeconds);
  const served = streams.filter((s) => s.updates.length > 0);
  const errors = streams.filter((s) => s.updates.length === 0);
  const samples = [...new Set(errors.map((s) => s.error ?? `no secret before the timeout${s.lastStreamError ? ` (last stream error: ${s.lastStreamError})` : ''}`))].slice(0, 5);
  send({
    type: 'opened',
    streams: streams.length,
    served: served.length,
    allServedSeconds: Math.max(0, ...served.map((s) => s.updates[0]! - start)) / 1000,
    errors: errors.length,
    errorSamples: samples,
    streamRetries,
  });
}

async function rotation(command: Extract<SdsLoadCommand, { type: 'rotation' }>): Promise<void> {
  // Only certificates rotate: the roots (ROOTCA) stay the same.
  const live = streams.filter((s) => s.updates.length > 0 && s.resource === 'default');
  const started = performance.now();
  // New pods arriving while the agent renews every identity: opened at the first rotated secret.
  let late: StreamState[] | null = null;
  const deadline = started + command.timeoutSeconds * 1000;
  if (command.lateTokens.length > 0 && (await waitFor(() => live.some((s) => s.updates.length > 1), command.timeoutSeconds))) {
    late = openConnections(command.socketPath, command.lateTokens, command.streamsPerConnection);
  }
  const lateDone = (): boolean => late === null || late.every((s) => s.updates.length > 0 || s.error !== null);
  await waitFor(() => live.every((s) => s.updates.length > 1) && lateDone(), Math.max(0, (deadline - performance.now()) / 1000));
  const pushes = live.filter((s) => s.updates.length > 1).map((s) => s.updates[1]!);
  const first = Math.min(...pushes);
  send({
    type: 'rotated',
    streams: live.length,
    rotated: pushes.length,
    firstPushSeconds: pushes.length > 0 ? (first - started) / 1000 : 0,
    windowSeconds: pushes.length > 0 ? (Math.max(...pushes) - first) / 1000 : 0,
    duringRotation: late && firstSecretLatency(late),
  });
}

process.on('message', (command: SdsLoadCommand) => {
  if (command.type === 'exit') {
    for (const s of everyStream) s.watch.close();
    process.exit(0);
  }
  const work = command.type === 'open' ? open(command) : command.type === 'probe' ? probe(command) : rotation(command);
  work.catch((error: unknown) => send({ type: 'error', message: (error as Error).message }));
});
// Never outlive the benchmark that drives this process.
process.on('disconnect', () => process.exit(0));
send({ type: 'ready' });
