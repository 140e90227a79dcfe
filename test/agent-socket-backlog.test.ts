/**
 * The SDS socket's listen backlog: when a node's sidecars all start at once, their connections must queue until the
 * agent accepts them, not be refused (EAGAIN) and sent into Envoy's reconnect backoff. Node's default backlog is 511;
 * the agent asks for more (the kernel caps it at net.core.somaxconn).
 *
 * The agent runs in this process; a child connects many times while this process is blocked in spawnSync, so the
 * agent accepts none of them until the child has its answers: what the kernel queued is exactly what the backlog
 * allowed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { decodeSecret, RawSotwStream, startTestAgent, type TestAgent } from './agent-helpers.js';

/** Node's own default backlog, which the agent must exceed. */
const NODE_DEFAULT_BACKLOG = 511;

function somaxconn(): number {
  return Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
}

/** Opens `count` connections to `socketPath` at once from a child process; how many were accepted into the queue. */
function connectAtOnce(socketPath: string, count: number): { connected: number; refused: Record<string, number> } {
  const child = `
    const net = require('node:net');
    const [socketPath, count] = [process.argv[1], Number(process.argv[2])];
    let connected = 0, done = 0;
    const refused = {};
    const sockets = [];
    const settle = () => {
      if (++done < count) return;
      process.stdout.write(JSON.stringify({ connected, refused }));
      process.exit(0);
    };
    for (let i = 0; i < count; i++) {
      const socket = net.connect({ path: socketPath });
      sockets.push(socket);
      socket.once('connect', () => { connected++; settle(); });
      socket.once('error', (error) => { refused[error.code] = (refused[error.code] ?? 0) + 1; settle(); });
    }`;
  const result = spawnSync(process.execPath, ['-e', child, socketPath, String(count)], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(result.status, 0, `the connecting child failed: ${result.stderr || result.error?.message}`);
  return JSON.parse(result.stdout) as { connected: number; refused: Record<string, number> };
}

describe('the SDS socket under a burst of connections', () => {
  let t: TestAgent;
  before(async () => {
    t = await startTestAgent();
  });
  after(async () => {
    await t?.close();
  });

  it('queues more connections than Node\'s default backlog while the agent is busy, and then serves', async () => {
    // As many as the kernel lets any listener queue, up to 900 (well under a 1,024 file-descriptor limit): on a kernel
    // whose somaxconn is above Node's default (4096 since Linux 5.4), a listener with the default backlog refuses ~390.
    const count = Math.min(900, somaxconn());
    const { connected, refused } = connectAtOnce(t.socket, count);
    assert.deepEqual(refused, {}, `connections refused while the agent was busy: ${JSON.stringify(refused)}`);
    assert.equal(connected, count);
    if (somaxconn() > NODE_DEFAULT_BACKLOG) assert.ok(count > NODE_DEFAULT_BACKLOG, 'the burst exceeds the default backlog');

    // The queued connections (their client gone) are accepted and dropped; a new one is served.
    const id = t.ca.addWorkload('tok-after-burst', 'shop', 'after-burst');
    const stream = new RawSotwStream(t.client, 'tok-after-burst');
    stream.subscribe(['default']);
    try {
      const secret = decodeSecret((await stream.next(20_000)).resources[0]!);
      assert.equal(secret.spiffeId, id);
    } finally {
      stream.close();
    }
  });
});
