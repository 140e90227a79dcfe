/**
 * Renewal behaviour with an in-process CA, on virtual time (the agent's injected clock; SDS stays real gRPC over a
 * Unix socket): pushes to every watching stream, serving the old secret while the CA is down (also past expiry)
 * and recovering by itself on the backoff schedule, root rotation, a NACKed secret replaced by the next renewal,
 * and revoked tokens. Plus the rotation and backoff arithmetic. No test here waits real seconds.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { backoffDelayMs, BACKOFF_INITIAL_MS, BACKOFF_MAX_MS } from '../src/agent/backoff.js';
import type { CachedIdentity } from '../src/agent/cache/identity-cache.js';
import { drawGraceRatio, renewalSchedule } from '../src/agent/rotation.js';
import { opensslVerify } from './support/openssl.js';
import { decodeSecret, eventually, metricsText, metricValue, namesIn, RawSotwStream, ReadyKeys, startTestAgent, type TestAgent } from './agent-helpers.js';
import { ManualClock, wholeSecondNow } from './support/manual-clock.js';

describe('rotation arithmetic', () => {
  it('draws the grace ratio within ratio ± jitter, clamped to [0, 1]', () => {
    for (let i = 0; i < 1000; i++) {
      const r = drawGraceRatio({ ratio: 0.5, jitter: 0.01 });
      assert.ok(r >= 0.49 && r <= 0.51, `ratio ${r}`);
    }
    const sequence = (...values: number[]) => () => values.shift()!;
    // First draw: the offset (0.99 of the jitter); second: the side (below 0.5 adds).
    assert.equal(drawGraceRatio({ ratio: 0.995, jitter: 0.01 }, sequence(0.99, 0.1)), 1);
    assert.equal(drawGraceRatio({ ratio: 0.005, jitter: 0.01 }, sequence(0.99, 0.9)), 0);
    assert.equal(drawGraceRatio({ ratio: 0.5, jitter: 0.01 }, sequence(0.5, 0.1)), 0.505);
    assert.equal(drawGraceRatio({ ratio: 1, jitter: 0.5 }, () => 0.1), 1);
    assert.equal(drawGraceRatio({ ratio: 0, jitter: 0.5 }, () => 0.9), 0);
  });

  it('renews at NotAfter − r·(NotAfter − received) when the clocks agree (more in test/renewal-schedule.test.ts)', () => {
    const day = 86_400_000;
    assert.equal(renewalSchedule({ notBefore: -120_000, notAfter: 20_000 }, 0, day, 0.5).renewAt, 10_000);
    assert.equal(renewalSchedule({ notBefore: 280_000, notAfter: 1_000_000 }, 400_000, day, 0.25).renewAt, 850_000);
  });

  it('backs off exponentially from 100 ms to 30 s with jitter', () => {
    assert.ok(backoffDelayMs(0, () => 0) >= 50 && backoffDelayMs(0, () => 1) <= 100);
    assert.ok(backoffDelayMs(3, () => 0) >= 400 && backoffDelayMs(3, () => 1) <= 800);
    assert.equal(backoffDelayMs(50, () => 1), BACKOFF_MAX_MS);
    assert.ok(backoffDelayMs(50, () => 0) >= BACKOFF_MAX_MS / 2);
  });
});

/**
 * Renewal on virtual time: the agent runs in this process on a real Unix socket and the streams are real gRPC,
 * but its cache, token checks and expiry metrics read a ManualClock that the test advances, and the CA signs on
 * the same clock. SECRET_GRACE_PERIOD_RATIO_JITTER=0 makes every schedule exact: a certificate issued at `start`
 * for SECRET_TTL renews at start + TTL/2, not a millisecond earlier. Nothing here waits for a real certificate.
 */
async function virtualAgent(secretTtl: string): Promise<{ t: TestAgent; clock: ManualClock; start: number; keys: ReadyKeys }> {
  const start = wholeSecondNow();
  const clock = new ManualClock(start);
  const keys = new ReadyKeys();
  const t = await startTestAgent({ clock, keys, flags: { secretTtl }, env: { SECRET_GRACE_PERIOD_RATIO_JITTER: '0' } });
  return { t, clock, start, keys };
}

/** The cached certificate of `spiffeId` (renewAt and expiresAt on the agent's clock). */
function cachedOf(t: TestAgent, spiffeId: string): CachedIdentity {
  const found = t.agent.cache.identities().find((c) => c.identity === spiffeId);
  assert.ok(found, `${spiffeId} is cached`);
  return found;
}

describe('renewal', () => {
  it('pushes the renewed secret to every stream watching the identity, and only its own to others, at exactly TTL/2', async () => {
    const { t, clock, start, keys } = await virtualAgent('6s');
    try {
      const idA = t.ca.addWorkload('tok-a', 'shop', 'a');
      t.ca.addWorkload('tok-b', 'shop', 'b');
      const streams = [new RawSotwStream(t.client, 'tok-a'), new RawSotwStream(t.client, 'tok-a'), new RawSotwStream(t.client, 'tok-b')];
      const firsts = [];
      for (const s of streams) {
        s.subscribe(['default']);
        const response = await s.next();
        s.ack(response, ['default']);
        firsts.push(decodeSecret(response.resources[0]!));
      }
      assert.equal(firsts[0]!.leaf!.serialHex, firsts[1]!.leaf!.serialHex);
      assert.equal(firsts[0]!.leaf!.notAfter.getTime(), start + 6000);
      assert.equal(cachedOf(t, idA).renewAt, start + 3000, 'half of the 6 s lifetime');
      const callsAtIssue = t.ca.calls;
      const keysAtIssue = keys.taken;
      await clock.advanceTo(start + 2999);
      assert.equal(keys.taken, keysAtIssue, 'no renewal starts a millisecond early');
      assert.equal(t.ca.calls, callsAtIssue);
      await clock.advanceTo(start + 3000);
      assert.equal(t.ca.calls, callsAtIssue + 2, 'one CSR per identity at its renewal time');
      const pushes = await Promise.all(streams.map((s) => s.next()));
      const renewed = pushes.map((p) => decodeSecret(p.resources[0]!));
      assert.equal(renewed[0]!.leaf!.serialHex, renewed[1]!.leaf!.serialHex, 'one renewal shared by both streams of identity a');
      assert.notEqual(renewed[0]!.leaf!.serialHex, firsts[0]!.leaf!.serialHex);
      assert.notEqual(renewed[0]!.keyPem, firsts[0]!.keyPem, 'renewal brings a new key');
      assert.equal(renewed[0]!.leaf!.notAfter.getTime(), start + 9000, 'issued at the renewal time');
      assert.equal(renewed[2]!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/b');
      assert.equal(renewed[0]!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/a');
      assert.equal(cachedOf(t, idA).renewAt, start + 6000, 'the next renewal, half of the new lifetime later');
      for (const s of streams) s.close();
    } finally {
      await t.close();
    }
  });

  it('keeps serving while the CA is down, also past expiry, retrying on the backoff schedule, and recovers by itself', async () => {
    const { t, clock, start } = await virtualAgent('3s');
    try {
      const id = t.ca.addWorkload('tok', 'shop', 'resilient');
      const callTimes: number[] = [];
      const createCertificate = t.ca.createCertificate.bind(t.ca);
      t.ca.createCertificate = (request) => {
        callTimes.push(clock.now());
        return createCertificate(request);
      };
      const stream = new RawSotwStream(t.client, 'tok');
      stream.subscribe(['default']);
      const first = await stream.next();
      stream.ack(first, ['default']);
      const served = decodeSecret(first.resources[0]!);
      const expiresAt = served.leaf!.notAfter.getTime();
      assert.equal(expiresAt, start + 3000);
      assert.equal(cachedOf(t, id).renewAt, start + 1500);
      t.ca.down = true;
      await clock.advanceTo(start + 1499);
      assert.deepEqual(callTimes, [start], 'no renewal before its time');
      await clock.advanceTo(start + 1500);
      assert.deepEqual(callTimes, [start, start + 1500], 'the renewal is tried at exactly TTL/2');
      // Retries follow backoffDelayMs: retry n (from 0) comes between half of and the whole 100·2ⁿ ms after the last.
      for (let turns = 0; !t.records.some((r) => String(r.msg).startsWith('certificate expired and the CA could not renew it')); turns++) {
        assert.ok(turns < 20, 'the expiry is logged after a few retries');
        await clock.advanceTo(clock.nextTimerAt()!);
      }
      assert.ok(clock.now() >= expiresAt, 'logged as expired only once it expired');
      const retries = callTimes.slice(2);
      assert.ok(retries.length >= 4, `${retries.length} retries`);
      retries.forEach((at, n) => {
        const gap = at - callTimes[n + 1]!;
        const step = BACKOFF_INITIAL_MS * 2 ** n;
        assert.ok(gap >= step / 2 && gap <= step, `retry ${n} came ${gap} ms after the previous attempt, expected ${step / 2}–${step}`);
      });
      await clock.advanceTo(Math.max(clock.now(), expiresAt + 1000));
      const metrics = await metricsText(t.agent);
      assert.equal(metricValue(metrics, 'istio_agent_num_failed_outgoing_requests', { request_type: 'csr', error_code: 'UNAVAILABLE' }), callTimes.length - 1);
      assert.equal(metricValue(metrics, 'istio_agent_num_outgoing_retries', { request_type: 'csr' }), callTimes.length - 1);
      assert.equal(metricValue(metrics, 'meshca_agent_expired_certificates'), 1);
      assert.equal(metricValue(metrics, 'istio_agent_cert_expiry_seconds', { resource_name: 'default' }), Math.round((expiresAt - clock.now()) / 1000));
      assert.ok(metricValue(metrics, 'istio_agent_cert_expiry_seconds', { resource_name: 'default' }) < 0);
      assert.equal(stream.inbox.pending, 0, 'nothing was pushed while the CA was down');
      // A new stream of the same workload is still served the current secret.
      const late = new RawSotwStream(t.client, 'tok');
      late.subscribe(['default']);
      assert.equal(decodeSecret((await late.next()).resources[0]!).leaf!.serialHex, served.leaf!.serialHex);
      late.close();
      t.ca.down = false;
      const retryAt = clock.nextTimerAt()!;
      const callsBefore = callTimes.length;
      await clock.advanceTo(retryAt - 1);
      assert.equal(callTimes.length, callsBefore, 'the CA is not asked before the next retry is due');
      await clock.advanceTo(retryAt);
      assert.deepEqual(callTimes.slice(callsBefore), [retryAt], 'recovered by the scheduled retry, with no help');
      const recovered = decodeSecret((await stream.next()).resources[0]!);
      assert.notEqual(recovered.leaf!.serialHex, served.leaf!.serialHex);
      assert.equal(recovered.leaf!.notAfter.getTime(), Math.floor(retryAt / 1000) * 1000 + 3000);
      assert.ok(recovered.leaf!.notAfter.getTime() > clock.now());
      assert.equal(metricValue(await metricsText(t.agent), 'meshca_agent_expired_certificates'), 0);
      stream.close();
    } finally {
      await t.close();
    }
  });

  it('pushes a NACKed secret again only once renewal changes it', async () => {
    const { t, clock, start } = await virtualAgent('3s');
    try {
      t.ca.addWorkload('tok', 'shop', 'picky');
      const stream = new RawSotwStream(t.client, 'tok');
      stream.subscribe(['default']);
      const first = await stream.next();
      stream.send({ resource_names: ['default'], response_nonce: first.nonce, error_detail: { code: grpc.status.INTERNAL, message: 'rejected (test)' } });
      await eventually(async () => metricValue(await metricsText(t.agent), 'meshca_sds_nacks_total', { api: 'sotw', resource_type: 'default' }) === 1, 'the NACK to be processed');
      await clock.advanceTo(start + 1499);
      assert.equal(stream.inbox.pending, 0, 'the NACKed secret is not sent again as it is');
      await clock.advanceTo(start + 1500);
      const next = await stream.next();
      assert.deepEqual(namesIn(next), ['default']);
      assert.notEqual(decodeSecret(next.resources[0]!).leaf!.serialHex, decodeSecret(first.resources[0]!).leaf!.serialHex);
      stream.close();
    } finally {
      await t.close();
    }
  });

  it('pushes a new ROOTCA when the CA root rotates and re-issues the other workloads under it', async () => {
    const t = await startTestAgent();
    try {
      t.ca.addWorkload('tok-a', 'shop', 'a');
      t.ca.addWorkload('tok-b', 'shop', 'b');
      const certStream = new RawSotwStream(t.client, 'tok-a');
      const rootStream = new RawSotwStream(t.client, 'tok-a');
      certStream.subscribe(['default']);
      rootStream.subscribe(['ROOTCA']);
      const cert = await certStream.next();
      const roots = await rootStream.next();
      certStream.ack(cert, ['default']);
      rootStream.ack(roots, ['ROOTCA']);
      assert.equal((decodeSecret(roots.resources[0]!).rootsPem!.match(/BEGIN CERTIFICATE/g) ?? []).length, 1);
      t.ca.rotateRoot();
      // The agent learns the new bundle from the next CA answer: here, a new workload's first certificate.
      const other = new RawSotwStream(t.client, 'tok-b');
      other.subscribe(['default']);
      await other.next();
      const newRoots = decodeSecret((await rootStream.next()).resources[0]!).rootsPem!;
      assert.equal(newRoots, t.ca.rootsPem);
      const reissued = decodeSecret((await certStream.next()).resources[0]!);
      const newestRoot = newRoots.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
      const leaf = reissued.chainPem!.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
      assert.ok(opensslVerify(leaf, '', newestRoot).ok, 're-issued under the new root');
      for (const s of [certStream, rootStream, other]) s.close();
    } finally {
      await t.close();
    }
  });

  it('ends the streams of a token whose exp has passed by renewal time, without asking the CA', async () => {
    const { t, clock, start } = await virtualAgent('6s');
    try {
      const jwtPart = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
      const shortLived = `${jwtPart({ alg: 'none' })}.${jwtPart({ sub: 'system:serviceaccount:shop:brief', exp: start / 1000 + 2 })}.c2ln`;
      const id = t.ca.addWorkload(shortLived, 'shop', 'brief');
      const stream = new RawSotwStream(t.client, shortLived);
      stream.subscribe(['default']);
      stream.ack(await stream.next(), ['default']);
      const callsAfterIssue = t.ca.calls;
      assert.equal(cachedOf(t, id).renewAt, start + 3000);
      // Past the token's exp, but before renewal: the stream keeps its current secret.
      await clock.advanceTo(start + 2999);
      assert.ok(!t.records.some((r) => r.msg === 'workload token no longer valid; ending its streams'), 'not ended before renewal');
      await clock.advanceTo(start + 3000);
      const error = await stream.ended();
      assert.equal(error?.code, grpc.status.UNAUTHENTICATED);
      assert.match(error!.details, /the workload token .* expired; reconnect with a fresh token/);
      assert.equal(t.ca.calls, callsAfterIssue, 'an expired token is not sent to the CA');
    } finally {
      await t.close();
    }
  });

  it('ends the streams of a token the CA stops accepting, so the client reconnects with a fresh one', async () => {
    const { t, clock, start } = await virtualAgent('3s');
    try {
      t.ca.addWorkload('tok-old', 'shop', 'rotating');
      const stream = new RawSotwStream(t.client, 'tok-old');
      stream.subscribe(['default']);
      stream.ack(await stream.next(), ['default']);
      t.ca.forget('tok-old');
      const callsAfterIssue = t.ca.calls;
      await clock.advanceTo(start + 1500);
      assert.equal(t.ca.calls, callsAfterIssue + 1, 'the renewal at TTL/2 asked the CA');
      const error = await stream.ended();
      assert.equal(error?.code, grpc.status.UNAUTHENTICATED);
      assert.match(error!.details, /the CA no longer accepts the workload token.*reconnect with a fresh token/);
      t.ca.addWorkload('tok-new', 'shop', 'rotating');
      const fresh = new RawSotwStream(t.client, 'tok-new');
      fresh.subscribe(['default']);
      const secret = decodeSecret((await fresh.next()).resources[0]!);
      assert.equal(secret.spiffeId, 'spiffe://cluster.local/ns/shop/sa/rotating');
      assert.equal(secret.leaf!.notAfter.getTime(), start + 1000 + 3000, 'issued now (whole seconds), not the old one');
      fresh.close();
    } finally {
      await t.close();
    }
  });
});
