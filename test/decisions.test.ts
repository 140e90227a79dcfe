/**
 * The CA's decision record (src/server/decisions.ts) in process on a manual clock: bounded to its size however many
 * calls come, strings cut to length, newest first, filtered by identity; /debug/decisions' query parsing; and
 * `meshca decisions` against no CA (one actionable line). The decisions and `meshca status` of a real CA are tested
 * end to end in kube-store.test.ts (which already runs one with the Kubernetes stand-in).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DecisionRecord, MAX_DECISION_FIELD_CHARS, MAX_DECISION_REASON_CHARS, mergeDecisions, parseDecisionQuery } from '../src/server/decisions.js';
import { ManualClock } from './support/manual-clock.js';
import { closedPort, runMeshca } from './support/process.js';


const ID = (n: number): string => `spiffe://cluster.local/ns/default/sa/app-${n}`;

describe('decision record', () => {
  test('holds at most its size, newest first, with times from the injected clock', () => {
    const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'));
    const record = new DecisionRecord({ capacity: 3, now: () => clock.now() });
    for (let i = 0; i < 10; i++) {
      record.add({ outcome: i % 2 === 0 ? 'issued' : 'refused', code: i % 2 === 0 ? 'OK' : 'UNAUTHENTICATED', identity: ID(i % 2), clientAddress: `ipv4:10.0.0.${i}:1234` });
      clock.advance(1000);
    }
    assert.equal(record.size, 3);
    const all = record.query({ limit: 100 });
    assert.deepEqual(
      all.decisions.map((d) => [d.time, d.clientAddress]),
      [
        ['2030-01-01T00:00:09.000Z', 'ipv4:10.0.0.9:1234'],
        ['2030-01-01T00:00:08.000Z', 'ipv4:10.0.0.8:1234'],
        ['2030-01-01T00:00:07.000Z', 'ipv4:10.0.0.7:1234'],
      ],
    );
    assert.equal(all.capacity, 3);
    assert.equal(all.held, 3);
    assert.deepEqual(record.query({ identity: ID(1), limit: 100 }).decisions.map((d) => d.code), ['UNAUTHENTICATED', 'UNAUTHENTICATED']);
    assert.equal(record.query({ limit: 1 }).decisions.length, 1);
  });

  test('cuts huge identities, callers and reasons, and keeps nothing with size 0', () => {
    const record = new DecisionRecord({ capacity: 2 });
    const huge = `spiffe://${'x'.repeat(100_000)}`;
    record.add({ outcome: 'refused', code: 'UNAUTHENTICATED', identity: huge, caller: huge, reason: 'r'.repeat(50_000), clientAddress: 'a'.repeat(10_000) });
    const [decision] = record.query({ limit: 1 }).decisions;
    assert.equal(decision!.identity!.length, MAX_DECISION_FIELD_CHARS);
    assert.ok(decision!.identity!.endsWith('...'));
    assert.equal(decision!.caller!.length, MAX_DECISION_FIELD_CHARS);
    assert.equal(decision!.reason!.length, MAX_DECISION_REASON_CHARS);
    assert.equal(decision!.clientAddress.length, MAX_DECISION_FIELD_CHARS);
    assert.equal(JSON.stringify(record.query({ limit: 10 })).length < 2 * (MAX_DECISION_REASON_CHARS + 4 * MAX_DECISION_FIELD_CHARS + 400), true);

    const none = new DecisionRecord({ capacity: 0 });
    none.add({ outcome: 'issued', code: 'OK', clientAddress: 'x' });
    assert.deepEqual(none.query({ limit: 10 }), { capacity: 0, held: 0, decisions: [] });
    assert.throws(() => new DecisionRecord({ capacity: -1 }), /decision record size must be an integer from 0 to 100000/);
  });

  test('the workers answers merge newest first; /debug/decisions refuses a bad limit in one line', () => {
    const clock = new ManualClock(0);
    const a = new DecisionRecord({ capacity: 5, now: () => clock.now() });
    const b = new DecisionRecord({ capacity: 5, now: () => clock.now() });
    for (const [i, r] of [a, b, a].entries()) {
      r.add({ outcome: 'issued', code: 'OK', identity: ID(i), clientAddress: 'x' });
      clock.advance(10);
    }
    const merged = mergeDecisions([a.query({ limit: 5 }), b.query({ limit: 5 })], 2);
    assert.deepEqual(merged.decisions.map((d) => d.identity), [ID(2), ID(1)]);
    assert.equal(merged.capacity, 10);
    assert.equal(merged.held, 3);

    assert.deepEqual(parseDecisionQuery({}), { limit: 100 });
    assert.deepEqual(parseDecisionQuery({ identity: ID(1), limit: '5' }), { identity: ID(1), limit: 5 });
    assert.deepEqual(parseDecisionQuery({ limit: 'all' }), { error: 'limit must be a whole number from 1 to 999999, not "all"' });
    assert.deepEqual(parseDecisionQuery({ identity: [ID(1), ID(2)] }), { error: 'give identity once, e.g. ?identity=spiffe://cluster.local/ns/default/sa/httpbin' });
  });
});

describe('meshca decisions without a CA', () => {
  test('meshca decisions with no CA listening says how to reach one', async () => {
    const port = await closedPort();
    const result = await runMeshca(['decisions', ID(1), '--monitoring-addr', `127.0.0.1:${port}`]);
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr,
      `meshca: cannot reach the CA monitoring server at http://127.0.0.1:${port} (ECONNREFUSED): is meshca ca running there? Point --monitoring-addr (env MESHCA_CA_MONITORING_ADDR) at its --monitoring-addr, e.g. after \`kubectl -n istio-system port-forward deploy/meshca 15014\`\n`,
    );
  });
});
