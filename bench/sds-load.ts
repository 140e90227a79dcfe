/**
 * The SDS side of part 5: a separate process playing many Envoys at once. Each stream is its own connection to
 * the agent's Unix socket, sends its own workload token in `istio_sds_credentials_header-bin`, and behaves like
 * Envoy (ACKs, validates key against certificate, follows pushes) through meshca's own SDS client.
 *
 * Driven over IPC: `open` starts every stream at once and answers when all hold a secret; `rotation` answers
 * when every stream has received a second, pushed secret.
 */
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { SecretWatch, workloadTokenMetadata } from '../src/agent/sds-client.js';
import { SdsClient } from '../src/wire/protos.js';

export type SdsLoadCommand = { type: 'open'; socketPath: string; tokens: string[]; timeoutSeconds: number } | { type: 'rotation'; timeoutSeconds: number } | { type: 'exit' };

export type SdsLoadMessage =
  | { type: 'ready' }
  | { type: 'opened'; streams: number; served: number; allServedSeconds: number; errors: number; errorSamples: string[] }
  | { type: 'rotated'; streams: number; rotated: number; firstPushSeconds: number; windowSeconds: number }
  | { type: 'error'; message: string };

interface StreamState {
  watch: SecretWatch;
  updates: number[];
  /** A NACK: final for this stream. */
  error: string | null;
  lastStreamError?: string;
}

const streams: StreamState[] = [];
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

async function open(command: Extract<SdsLoadCommand, { type: 'open' }>): Promise<void> {
  const start = performance.now();
  for (const token of command.tokens) {
    const state: StreamState = { watch: undefined as unknown as SecretWatch, updates: [], error: null };
    // A local subchannel pool gives every stream its own connection, as separate Envoys have.
    const client = new SdsClient(`unix:${path.resolve(command.socketPath)}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    state.watch = new SecretWatch(
      client,
      // Reconnecting as Envoy does: thousands of streams connecting at once overflow the agent's listen backlog
      // (EAGAIN), and Envoy retries such a connection with backoff.
      { name: 'default', metadata: () => workloadTokenMetadata(token), reconnect: true },
      {
        onUpdate: () => {
          state.updates.push(performance.now() - start);
          waiter?.();
        },
        onNack: (message) => {
          state.error ??= `NACK: ${message}`;
        },
        onStreamError: (error) => {
          // Not final: the stream reconnects; the message is kept for the report if it never gets a secret.
          state.lastStreamError = error.message;
        },
      },
    );
    streams.push(state);
  }
  await waitFor(() => streams.every((s) => s.updates.length > 0 || s.error !== null), command.timeoutSeconds);
  const served = streams.filter((s) => s.updates.length > 0);
  const errors = streams.filter((s) => s.updates.length === 0);
  const samples = [...new Set(errors.map((s) => s.error ?? `no secret before the timeout${s.lastStreamError ? ` (last stream error: ${s.lastStreamError})` : ''}`))].slice(0, 5);
  send({
    type: 'opened',
    streams: streams.length,
    served: served.length,
    allServedSeconds: Math.max(0, ...served.map((s) => s.updates[0]!)) / 1000,
    errors: errors.length,
    errorSamples: samples,
  });
}

async function rotation(command: Extract<SdsLoadCommand, { type: 'rotation' }>): Promise<void> {
  const live = streams.filter((s) => s.updates.length > 0);
  await waitFor(() => live.every((s) => s.updates.length > 1), command.timeoutSeconds);
  const pushes = live.filter((s) => s.updates.length > 1).map((s) => s.updates[1]!);
  const first = Math.min(...pushes);
  send({
    type: 'rotated',
    streams: live.length,
    rotated: pushes.length,
    firstPushSeconds: pushes.length > 0 ? first / 1000 : 0,
    windowSeconds: pushes.length > 0 ? (Math.max(...pushes) - first) / 1000 : 0,
  });
}

process.on('message', (command: SdsLoadCommand) => {
  if (command.type === 'exit') {
    for (const s of streams) s.watch.close();
    process.exit(0);
  }
  const work = command.type === 'open' ? open(command) : rotation(command);
  work.catch((error: unknown) => send({ type: 'error', message: (error as Error).message }));
});
// Never outlive the benchmark that drives this process.
process.on('disconnect', () => process.exit(0));
send({ type: 'ready' });
