/**
 * When the agent renews a workload certificate (SECURITY.md: a certificate is renewed before it expires). The one
 * function production uses, renewalSchedule, on a clock the test sets: exact times for leaves of 30 s, 90 s, 1 h and
 * 24 h; a leaf cut short by an issuer about to expire (NotBefore backdated 2 minutes, NotAfter under 2 minutes
 * away), which used to be scheduled after its expiry with a false clock-skew warning; real clock skew (NotBefore
 * minutes in the future, or a leaf that looks expired on arrival); the margin before expiry; a property over any
 * in-sync issuance. Then the agent (in process, on virtual time, real SDS over a Unix socket) with an issuer about
 * to expire: the renewal reaches the stream at half of the cut-short lifetime. Nothing here waits real seconds.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { CaCallError, type CaClient, type CertificateRequest } from '../src/agent/index.js';
import { RENEWAL_MARGIN_MS, renewalSchedule, type RenewalSchedule } from '../src/agent/rotation.js';
import { certificateToPem, createCaCertificate, LeafIssuer, parseCertificate, parseCsr, verifyCsr, CLOCK_SKEW_GRACE_MS, generateKeyPairFor } from '../src/pki/index.js';
import { decodeSecret, RawSotwStream, ReadyKeys, startTestAgent, tokenLabel } from './agent-helpers.js';
import { ManualClock, wholeSecondNow } from './support/manual-clock.js';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** The CA's clock when it signs; whole seconds, as X.509 keeps them. */
const ISSUED = Date.UTC(2026, 11, 6, 2, 7, 0);
/** Ours and Istio's CA backdate NotBefore by 2 minutes. */
const BACKDATE = 2 * MINUTE;

/** A leaf as our CA issues it at `ISSUED`: NotBefore backdated, NotAfter = issue + lifetime (or the issuer's end). */
function leaf(lifetimeMs: number): { notBefore: number; notAfter: number } {
  return { notBefore: ISSUED - BACKDATE, notAfter: ISSUED + lifetimeMs };
}

function at(iso: string): number {
  return Date.parse(iso);
}

describe('renewal schedule (renewalSchedule, on an injected clock)', () => {
  it('renews leaves of 30 s, 90 s, 1 h and 24 h at half their lifetime as received, when the clocks agree', () => {
    const received = ISSUED + 200; // 200 ms of CSR signing and transit
    const cases: [string, number, RenewalSchedule][] = [
      ['30 s', 30 * SECOND, { lifetimeMs: 29_800, renewAt: ISSUED + 15_100, expiresAt: ISSUED + 30 * SECOND, clock: 'in-sync' }],
      ['90 s', 90 * SECOND, { lifetimeMs: 89_800, renewAt: ISSUED + 45_100, expiresAt: ISSUED + 90 * SECOND, clock: 'in-sync' }],
      ['1 h', HOUR, { lifetimeMs: HOUR - 200, renewAt: ISSUED + 1_800_100, expiresAt: ISSUED + HOUR, clock: 'in-sync' }],
      ['24 h', DAY, { lifetimeMs: DAY - 200, renewAt: ISSUED + 43_200_100, expiresAt: ISSUED + DAY, clock: 'in-sync' }],
    ];
    for (const [name, lifetime, expected] of cases) {
      assert.deepEqual(renewalSchedule(leaf(lifetime), received, lifetime, 0.5), expected, name);
    }
  });

  it('renews a leaf cut short by an issuer about to expire before it expires, with no clock-skew reading (the reported case)', () => {
    // Requested 24 h; the issuer ends at 02:08:51, so the leaf does too; NotBefore is 02:05:00, 2 minutes back.
    const validity = { notBefore: at('2026-12-06T02:05:00.000Z'), notAfter: at('2026-12-06T02:08:51.000Z') };
    const received = at('2026-12-06T02:07:00.200Z');
    const schedule = renewalSchedule(validity, received, DAY, 0.5);
    // 110.8 s were left on arrival: renew after half of them. (It was 02:08:55.450, after expiry, reading "ahead".)
    assert.deepEqual(schedule, { lifetimeMs: 110_800, renewAt: at('2026-12-06T02:07:55.600Z'), expiresAt: validity.notAfter, clock: 'in-sync' });
    assert.ok(schedule.renewAt < validity.notAfter);

    // 30 s left of a 1 h request, and just 2 s left: still before NotAfter, never in the past.
    assert.deepEqual(renewalSchedule(leaf(30 * SECOND), ISSUED, HOUR, 0.5), {
      lifetimeMs: 30_000,
      renewAt: ISSUED + 15_000,
      expiresAt: ISSUED + 30_000,
      clock: 'in-sync',
    });
    assert.deepEqual(renewalSchedule(leaf(2 * SECOND), ISSUED, HOUR, 0.5), { lifetimeMs: 2000, renewAt: ISSUED + 1000, expiresAt: ISSUED + 2000, clock: 'in-sync' });
  });

  it('reads a clock minutes behind from NotBefore in the future, and times renewal from receipt with the requested lifetime', () => {
    // The node is 5 minutes slow: NotBefore (issue − 2 min) is 3 minutes ahead of local time.
    const received = ISSUED - 5 * MINUTE + 200;
    // Lifetime: the requested one less half of X.509's one-second resolution (NotAfter may fall that much short).
    assert.deepEqual(renewalSchedule(leaf(30 * SECOND), received, 30 * SECOND, 0.5), {
      lifetimeMs: 29_500,
      renewAt: received + 14_750,
      expiresAt: received + 29_500,
      clock: 'behind',
    });
    assert.deepEqual(renewalSchedule(leaf(HOUR), received, HOUR, 0.5), {
      lifetimeMs: HOUR - 500,
      renewAt: received + 1_799_750,
      expiresAt: received + HOUR - 500,
      clock: 'behind',
    });
    // 1 minute slow (less than the backdate): NotBefore is in the past, but more is left than was asked for.
    assert.equal(renewalSchedule(leaf(90 * SECOND), ISSUED - MINUTE, 90 * SECOND, 0.5).clock, 'behind');
    assert.equal(renewalSchedule(leaf(90 * SECOND), ISSUED - MINUTE, 90 * SECOND, 0.5).renewAt, ISSUED - MINUTE + 44_750);
  });

  it('reads a clock minutes ahead from a leaf that looks expired on arrival; a lesser lead only makes renewal early', () => {
    const received = ISSUED + 5 * MINUTE;
    assert.deepEqual(renewalSchedule(leaf(30 * SECOND), received, 30 * SECOND, 0.5), {
      lifetimeMs: 29_500,
      renewAt: received + 14_750,
      expiresAt: received + 29_500,
      clock: 'ahead',
    });
    // 5 minutes fast with 24 h: indistinguishable from a CA granting less, so no warning; renewal 2.5 minutes early.
    assert.deepEqual(renewalSchedule(leaf(DAY), received, DAY, 0.5), {
      lifetimeMs: DAY - 5 * MINUTE,
      renewAt: received + (DAY - 5 * MINUTE) / 2,
      expiresAt: ISSUED + DAY,
      clock: 'in-sync',
    });
  });

  it('keeps a margin before expiry whatever the grace ratio: a minute, or a tenth of a short lifetime', () => {
    assert.equal(RENEWAL_MARGIN_MS, MINUTE);
    // SECRET_GRACE_PERIOD_RATIO 0.01 would renew 36 s before a 1 h leaf expires: a minute before instead.
    assert.equal(renewalSchedule(leaf(HOUR), ISSUED, HOUR, 0.01).renewAt, ISSUED + HOUR - MINUTE);
    // Ratio 0 on a 30 s leaf: 3 s before expiry, not at it.
    assert.equal(renewalSchedule(leaf(30 * SECOND), ISSUED, 30 * SECOND, 0).renewAt, ISSUED + 27_000);
    // Ratio 1: renew on arrival.
    assert.equal(renewalSchedule(leaf(90 * SECOND), ISSUED, 90 * SECOND, 1).renewAt, ISSUED);
  });

  it('with clocks in sync, for any backdating, lifetime, issuer end and ratio: no skew reading, received ≤ renewal < NotAfter', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 10 * MINUTE }), // backdate
        fc.integer({ min: SECOND, max: 30 * DAY }), // requested
        fc.integer({ min: SECOND, max: 30 * DAY }), // issuer's end, after issue
        fc.integer({ min: 0, max: 2 * SECOND }), // transit
        fc.double({ min: 0, max: 1, noNaN: true }), // ratio
        (backdate, requested, issuerLeft, transit, ratio) => {
          const issuedAt = ISSUED;
          const validity = { notBefore: issuedAt - backdate, notAfter: issuedAt + Math.min(requested, issuerLeft) };
          fc.pre(validity.notAfter - (issuedAt + transit) > 0);
          const received = issuedAt + transit;
          const s = renewalSchedule(validity, received, requested, ratio);
          assert.equal(s.clock, 'in-sync');
          assert.ok(s.renewAt >= received, 'not in the past');
          assert.ok(s.renewAt < validity.notAfter, `renewAt ${s.renewAt - received} ms after receipt, NotAfter ${validity.notAfter - received}`);
          assert.ok(validity.notAfter - s.renewAt >= Math.min(RENEWAL_MARGIN_MS, (validity.notAfter - received) / 10), 'the margin');
        },
      ),
      { numRuns: 500 },
    );
  });
});

/** A CA whose signing certificate ends `issuerLeftMs` from its creation: every leaf is cut short to that end. */
class ExpiringIssuerCa implements CaClient {
  readonly address = 'expiring-issuer-ca';
  readonly rootPem: string;
  readonly issuerNotAfter: number;
  private readonly issuer: LeafIssuer;

  /** `now`: the clock the CA signs on (the agent's virtual clock here: the two agree). */
  constructor(
    issuerLeftMs: number,
    private readonly now: () => number,
  ) {
    const { privateKey }: { privateKey: KeyObject } = generateKeyPairFor('ec-p256');
    const root = parseCertificate(
      createCaCertificate({
        subject: { organization: 'meshca-test', commonName: 'issuer about to expire' },
        subjectKey: privateKey,
        notBefore: new Date(now() - DAY),
        notAfter: new Date(now() + issuerLeftMs),
      }),
    );
    this.issuerNotAfter = root.notAfter.getTime();
    this.rootPem = certificateToPem(root.der);
    this.issuer = new LeafIssuer({ certificate: root, privateKey });
  }

  async createCertificate(request: CertificateRequest): Promise<string[]> {
    if (tokenLabel(request.token ?? '') !== 'tok-short') throw new CaCallError(grpc.status.UNAUTHENTICATED, 'request authenticate failure');
    const csr = parseCsr(request.csrPem);
    verifyCsr(csr);
    const issued = this.issuer.issue({ spkiDer: csr.spkiDer, uris: ['spiffe://cluster.local/ns/short/sa/lived'], ttlSeconds: request.ttlSeconds, now: this.now() });
    return [certificateToPem(issued.der), this.rootPem];
  }

  async waitUntilReachable(): Promise<void> {}

  close(): void {}
}

describe('the agent with an issuer about to expire', () => {
  it('logs no clock skew and pushes the renewal at half of the cut-short lifetime, before the leaf expires', async () => {
    // On virtual time: the agent's cache and the CA share a ManualClock; SDS is real gRPC over a Unix socket.
    // SECRET_GRACE_PERIOD_RATIO_JITTER=0 makes the renewal time exact.
    const start = wholeSecondNow();
    const clock = new ManualClock(start);
    const ca = new ExpiringIssuerCa(8 * SECOND, () => clock.now());
    const keys = new ReadyKeys();
    // The default 24 h request: the issuer cuts it to 8 s, with NotBefore backdated by CLOCK_SKEW_GRACE_MS.
    const t = await startTestAgent({ ca, clock, keys, env: { SECRET_GRACE_PERIOD_RATIO_JITTER: '0' } });
    const { records, client } = t;
    const stream = new RawSotwStream(client, 'tok-short');
    try {
      stream.subscribe(['default']);
      const first = await stream.next();
      stream.ack(first, ['default']);
      const firstLeaf = decodeSecret(first.resources[0]!).leaf!;
      const notAfter = firstLeaf.notAfter.getTime();
      assert.equal(notAfter, ca.issuerNotAfter, 'the leaf was cut short to the issuer');
      assert.equal(notAfter, start + 8 * SECOND);
      assert.ok(notAfter - firstLeaf.notBefore.getTime() > CLOCK_SKEW_GRACE_MS, 'NotBefore is backdated');
      const issued = records.find((r) => r.msg === 'issued certificate');
      assert.ok(issued, 'the issuance is logged');
      // 8 s were left on arrival: renew after half of them (it used to be scheduled after expiry).
      assert.equal(Date.parse(String(issued.renewAt)), start + 4 * SECOND, `renewAt ${String(issued.renewAt)}, notAfter ${String(issued.notAfter)}`);
      assert.ok(!records.some((r) => String(r.msg).includes('clock seems')), 'no clock-skew warning');
      await clock.advanceTo(start + 4 * SECOND - 1);
      assert.equal(keys.taken, 1, 'no renewal a millisecond early');
      await clock.advanceTo(start + 4 * SECOND);
      assert.equal(keys.taken, 2, 'the renewal started on time');
      const renewed = await stream.next();
      assert.equal(clock.now(), start + 4 * SECOND);
      assert.ok(clock.now() < notAfter, 'renewed before the first leaf expired');
      assert.notEqual(decodeSecret(renewed.resources[0]!).leaf!.serialHex, firstLeaf.serialHex);
    } finally {
      stream.close();
      await t.close();
    }
  });
});
