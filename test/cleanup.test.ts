/** util/cleanup.ts: the one cleanup stack undoes start-up in reverse, survives failing steps and runs each once. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CleanupStack } from '../src/util/cleanup.js';

describe('CleanupStack', () => {
  it('runs steps in reverse order, hands failures to onError and still runs the rest, each step once', async () => {
    const ran: string[] = [];
    const errors: unknown[] = [];
    const stack = new CleanupStack((error) => errors.push(error));
    stack.push(() => void ran.push('first'));
    stack.push(() => {
      ran.push('second');
      throw new Error('broken close');
    });
    stack.push(async () => {
      await new Promise((resolve) => setImmediate(resolve));
      ran.push('third');
    });
    await stack.run();
    assert.deepEqual(ran, ['third', 'second', 'first']);
    assert.equal(errors.length, 1);
    assert.equal((errors[0] as Error).message, 'broken close');
    await stack.run();
    assert.deepEqual(ran, ['third', 'second', 'first'], 'a second run finds nothing left');
  });

  it('a rejected async step does not stop the others', async () => {
    const ran: string[] = [];
    const stack = new CleanupStack();
    stack.push(() => void ran.push('kept'));
    stack.push(() => Promise.reject(new Error('rejected')));
    await stack.run();
    assert.deepEqual(ran, ['kept']);
  });
});
