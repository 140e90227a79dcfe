/** CoalescingRunner: one pass at a time per key, a burst of requests during a pass costs exactly one more pass. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CoalescingRunner } from '../src/util/coalescing-runner.js';

test('requests during a pass coalesce into one more pass; keys run independently; a stop ends the repeats', async () => {
  const passes: string[] = [];
  let release: (() => void) | undefined;
  let stopped = false;
  let active = 0;
  const runner = new CoalescingRunner<string>(async (key) => {
    active++;
    assert.equal(active <= 2, true, 'at most one pass per key (two keys here)');
    passes.push(key);
    if (key === 'a' && passes.length === 1) await new Promise<void>((resolve) => (release = resolve));
    active--;
  }, () => stopped);
  const first = runner.run('a');
  const during = [runner.run('a'), runner.run('a'), runner.run('a')];
  await runner.run('b');
  assert.deepEqual(passes, ['a', 'b'], 'b does not wait for a');
  release!();
  await Promise.all([first, ...during]);
  assert.deepEqual(passes, ['a', 'b', 'a'], 'three requests during the pass gave one more pass');
  await runner.run('a');
  assert.deepEqual(passes, ['a', 'b', 'a', 'a'], 'a request after the passes gives a new one');

  stopped = true;
  passes.length = 0;
  let gate: (() => void) | undefined;
  const slow = new CoalescingRunner<string>(async (key) => {
    passes.push(key);
    if (passes.length === 1) await new Promise<void>((resolve) => (gate = resolve));
  }, () => stopped);
  const running = slow.run('x');
  void slow.run('x');
  gate!();
  await running;
  await slow.idle();
  assert.deepEqual(passes, ['x'], 'once stopped, the repeat does not run');
});
