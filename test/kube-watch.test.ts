/**
 * The Kubernetes watch loop (src/kube/config.ts) on virtual time: when a watch ends or fails it is opened again
 * after 500 ms doubling to 30 s, reset by an event or by a watch that lived over 5 s, resumed from the last
 * resourceVersion, and never again once stopped. The watches here are scripted: the loop's contract with the client
 * library is only `Watch.watch(path, query, onEvent, done)`; the real client against the API-server stand-in is
 * exercised by kube-store, pod-certificate, CSR-signer and ClusterTrustBundle tests.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { followResumable, watchWithBackoff, WATCH_BACKOFF_INITIAL_MS, WATCH_BACKOFF_MAX_MS, type WatchClient } from '../src/kube/config.js';
import { ManualClock } from './support/manual-clock.js';

interface OpenWatch {
  path: string;
  query: Record<string, string>;
  event(type: string, obj: unknown): void;
  end(error?: Error): void;
  aborted: boolean;
}

/** A WatchClient whose watches the test drives; `failNext` makes the next watch fail to start. */
class ScriptedWatch implements WatchClient {
  readonly opened: OpenWatch[] = [];
  failNext = false;

  watch(path: string, query: Record<string, string>, onEvent: (type: string, obj: unknown) => void, done: (err: unknown) => void): Promise<AbortController> {
    if (this.failNext) {
      this.failNext = false;
      return Promise.reject(new Error('No currently active cluster'));
    }
    const controller = new AbortController();
    const open: OpenWatch = {
      path,
      query: { ...query },
      event: onEvent,
      end: (error) => done(error ?? null),
      get aborted() {
        return controller.signal.aborted;
      },
    };
    this.opened.push(open);
    return Promise.resolve(controller);
  }
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('watchWithBackoff on an injected clock', () => {
  test('reopens after 500 ms doubling to 30 s; an event or a healthy watch resets the backoff; stopping ends it', async () => {
    const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'));
    const watch = new ScriptedWatch();
    const events: string[] = [];
    const stop = watchWithBackoff(watch, '/api/v1/secrets', () => ({ fieldSelector: 'metadata.name=cacerts' }), (type) => events.push(type), clock);
    await settle();
    assert.equal(watch.opened.length, 1);
    assert.deepEqual(watch.opened[0]!.query, { fieldSelector: 'metadata.name=cacerts' });

    // Ends at once, again and again: 500, 1000, 2000, ... capped at 30 s.
    const waits: number[] = [];
    for (let i = 0; i < 8; i++) {
      const at = clock.now();
      watch.opened.at(-1)!.end(new Error('connection reset'));
      const next = clock.nextTimerAt();
      assert.ok(next !== undefined, 'a retry is armed');
      waits.push(next - at);
      await clock.advanceTo(next - 1);
      assert.equal(watch.opened.length, i + 1, 'not before the backoff');
      await clock.advanceTo(next);
      await settle();
      assert.equal(watch.opened.length, i + 2);
    }
    assert.deepEqual(waits, [500, 1000, 2000, 4000, 8000, 16_000, WATCH_BACKOFF_MAX_MS, WATCH_BACKOFF_MAX_MS]);

    // An event resets it.
    watch.opened.at(-1)!.event('MODIFIED', {});
    assert.deepEqual(events, ['MODIFIED']);
    let at = clock.now();
    watch.opened.at(-1)!.end();
    assert.equal(clock.nextTimerAt()! - at, WATCH_BACKOFF_INITIAL_MS);
    await clock.advanceTo(clock.nextTimerAt()!);
    await settle();

    // A watch that fails to start counts as an end, once.
    watch.opened.at(-1)!.end();
    await clock.advanceTo(clock.nextTimerAt()!);
    await settle();
    const before = watch.opened.length;
    watch.failNext = true;
    watch.opened.at(-1)!.end();
    await clock.advanceTo(clock.nextTimerAt()!);
    await settle();
    assert.equal(watch.opened.length, before, 'the failed start opened nothing');
    at = clock.now();
    const retry = clock.nextTimerAt();
    assert.equal(retry! - at, 4000, 'a failed start backs off like an end (500, 1000, 2000, then 4000)');
    await clock.advanceTo(retry!);
    await settle();
    assert.equal(watch.opened.length, before + 1);

    // A watch that lived over 5 s was healthy: the next wait starts from 500 ms again.
    await clock.advanceTo(clock.now() + 5001);
    at = clock.now();
    watch.opened.at(-1)!.end();
    assert.equal(clock.nextTimerAt()! - at, WATCH_BACKOFF_INITIAL_MS);

    // Stopped while a retry is pending: the retry is cancelled and nothing opens again.
    stop();
    assert.equal(clock.nextTimerAt(), undefined, 'the pending retry is cancelled');
    await clock.advanceTo(clock.now() + 3600_000);
    assert.equal(watch.opened.length, before + 1);
  });

  test('stopping aborts the open watch, and followResumable resumes from the last resourceVersion', async () => {
    const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'));
    const watch = new ScriptedWatch();
    let expired = 0;
    const stop = followResumable(watch, '/api/v1/configmaps', { labelSelector: 'a=b' }, () => undefined, () => expired++, clock);
    await settle();
    assert.deepEqual(watch.opened[0]!.query, { labelSelector: 'a=b' });
    watch.opened[0]!.event('ADDED', { metadata: { resourceVersion: '41' } });
    watch.opened[0]!.event('MODIFIED', { metadata: { resourceVersion: '42' } });
    watch.opened[0]!.end();
    await clock.advanceTo(clock.nextTimerAt()!);
    await settle();
    assert.deepEqual(watch.opened[1]!.query, { labelSelector: 'a=b', resourceVersion: '42' }, 'resumed where it left off');
    // 410 Expired: start over from now, and the owner relists.
    watch.opened[1]!.event('ERROR', { code: 410 });
    assert.equal(expired, 1);
    watch.opened[1]!.end();
    await clock.advanceTo(clock.nextTimerAt()!);
    await settle();
    assert.deepEqual(watch.opened[2]!.query, { labelSelector: 'a=b' });
    assert.ok(!watch.opened[2]!.aborted);
    stop();
    assert.ok(watch.opened[2]!.aborted, 'the open watch is aborted');
  });
});
