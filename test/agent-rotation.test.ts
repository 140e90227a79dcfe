/**
 * Renewal behaviour with an in-process CA and short certificate lifetimes: pushes to every watching stream,
 * serving the old secret while the CA is down (also past expiry) and recovering by itself, root rotation,
 * a NACKed secret replaced by the next renewal, and revoked tokens. Plus the rotation and backoff arithmetic.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { backoffDelayMs, BACKOFF_MAX_MS } from '../src/agent/backoff.js';
import { drawGraceRatio, renewalSchedule } from '../src/agent/rotation.js';
import { opensslVerify } from './support/openssl.js';
import { decodeSecret, eventually, metricsText, metricValue, namesIn, RawSotwStream, startTestAgent } from './agent-helpers.js';

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

describe('renewal', () => {
  it('pushes the renewed secret to every stream watching the identity, and only its own to others', async () => {
    const t = await startTestAgent({ flags: { secretTtl: '6s' } });
    try {
      t.ca.addWorkload('tok-a', 'shop', 'a');
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
      const pushes = await Promise.all(streams.map((s) => s.next(15_000)));
      const renewed = pushes.map((p) => decodeSecret(p.resources[0]!));
      assert.equal(renewed[0]!.leaf!.serialHex, renewed[1]!.leaf!.serialHex, 'one renewal shared by both streams of identity a');
      assert.notEqual(renewed[0]!.leaf!.serialHex, firsts[0]!.leaf!.serialHex);
      assert.notEqual(renewed[0]!.keyPem, firsts[0]!.keyPem, 'renewal brings a new key');
      assert.equal(renewed[2]!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/b');
      assert.equal(renewed[0]!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/a');
      for (const s of streams) s.close();
    } finally {
      await t.close();
    }
  });

  it('keeps serving while the CA is down, also past expiry, and recovers by itself', async () => {
    const t = await startTestAgent({ flags: { secretTtl: '3s' } });
    try {
      t.ca.addWorkload('tok', 'shop', 'resilient');
      const stream = new RawSotwStream(t.client, 'tok');
      stream.subscribe(['default']);
      const first = await stream.next();
      stream.ack(first, ['default']);
      const served = decodeSecret(first.resources[0]!);
      t.ca.down = true;
      await eventually(() => Date.now() > served.leaf!.notAfter.getTime() + 500, 'the certificate to expire', 10_000);
      const metrics = await metricsText(t.agent);
      assert.ok(metricValue(metrics, 'num_failed_outgoing_requests', { request_type: 'csr', error_code: 'UNAVAILABLE' }) >= 1);
      assert.ok(metricValue(metrics, 'num_outgoing_retries', { request_type: 'csr' }) >= 1);
      assert.equal(metricValue(metrics, 'meshca_agent_expired_certificates'), 1);
      assert.ok(metricValue(metrics, 'cert_expiry_seconds', { resource_name: 'default' }) <= 0);
      await eventually(() => t.records.some((r) => String(r.msg).startsWith('certificate expired and the CA could not renew it')), 'the expiry to be logged');
      assert.equal(stream.inbox.pending, 0, 'nothing was pushed while the CA was down');
      // A new stream of the same workload is still served the current secret.
      const late = new RawSotwStream(t.client, 'tok');
      late.subscribe(['default']);
      assert.equal(decodeSecret((await late.next()).resources[0]!).leaf!.serialHex, served.leaf!.serialHex);
      late.close();
      t.ca.down = false;
      const recovered = decodeSecret((await stream.next(40_000)).resources[0]!);
      assert.notEqual(recovered.leaf!.serialHex, served.leaf!.serialHex);
      assert.ok(recovered.leaf!.notAfter.getTime() > Date.now());
      stream.close();
    } finally {
      await t.close();
    }
  });

  it('pushes a NACKed secret again only once renewal changes it', async () => {
    const t = await startTestAgent({ flags: { secretTtl: '3s' } });
    try {
      t.ca.addWorkload('tok', 'shop', 'picky');
      const stream = new RawSotwStream(t.client, 'tok');
      stream.subscribe(['default']);
      const first = await stream.next();
      stream.send({ resource_names: ['default'], response_nonce: first.nonce, error_detail: { code: grpc.status.INTERNAL, message: 'rejected (test)' } });
      const next = await stream.next(15_000);
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
    const t = await startTestAgent({ flags: { secretTtl: '6s' } });
    try {
      const jwtPart = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
      const shortLived = `${jwtPart({ alg: 'none' })}.${jwtPart({ sub: 'system:serviceaccount:shop:brief', exp: Math.floor(Date.now() / 1000) + 2 })}.c2ln`;
      t.ca.addWorkload(shortLived, 'shop', 'brief');
      const stream = new RawSotwStream(t.client, shortLived);
      stream.subscribe(['default']);
      stream.ack(await stream.next(), ['default']);
      const callsAfterIssue = t.ca.calls;
      const error = await stream.ended();
      assert.equal(error?.code, grpc.status.UNAUTHENTICATED);
      assert.match(error!.details, /the workload token .* expired; reconnect with a fresh token/);
      assert.equal(t.ca.calls, callsAfterIssue, 'an expired token is not sent to the CA');
    } finally {
      await t.close();
    }
  });

  it('ends the streams of a token the CA stops accepting, so the client reconnects with a fresh one', async () => {
    const t = await startTestAgent({ flags: { secretTtl: '3s' } });
    try {
      t.ca.addWorkload('tok-old', 'shop', 'rotating');
      const stream = new RawSotwStream(t.client, 'tok-old');
      stream.subscribe(['default']);
      stream.ack(await stream.next(), ['default']);
      t.ca.forget('tok-old');
      const error = await stream.ended();
      assert.equal(error?.code, grpc.status.UNAUTHENTICATED);
      assert.match(error!.details, /the CA no longer accepts the workload token.*reconnect with a fresh token/);
      t.ca.addWorkload('tok-new', 'shop', 'rotating');
      const fresh = new RawSotwStream(t.client, 'tok-new');
      fresh.subscribe(['default']);
      const secret = decodeSecret((await fresh.next()).resources[0]!);
      assert.equal(secret.spiffeId, 'spiffe://cluster.local/ns/shop/sa/rotating');
      assert.ok(secret.leaf!.notAfter.getTime() > Date.now());
      fresh.close();
    } finally {
      await t.close();
    }
  });
});
