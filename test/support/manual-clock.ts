/**
 * Virtual time for the agent's identity cache (src/util/clock.ts): timers fire only when a test advances
 * the clock, each at its own due time, in order. The cache's work between timers runs in this process (an
 * in-process CA, keys that are ready at once), so it settles within a few turns of the event loop; what crosses
 * a socket (an SDS push) is awaited as an event by the test.
 */
import type { Clock } from '../../src/util/clock.js';

export class ManualClock implements Clock {
  private current: number;
  private sequence = 0;
  private readonly timers = new Map<number, { at: number; callback: () => void }>();

  constructor(start: number) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimer(delayMs: number, callback: () => void): () => void {
    const id = this.sequence++;
    this.timers.set(id, { at: this.current + Math.max(0, delayMs), callback });
    return () => this.timers.delete(id);
  }

  /** The earliest pending timer's due time. */
  nextTimerAt(): number | undefined {
    let next: number | undefined;
    for (const timer of this.timers.values()) if (next === undefined || timer.at < next) next = timer.at;
    return next;
  }

  /** Moves time to `when`, firing each due timer at its own due time and letting its async work settle. */
  async advanceTo(when: number): Promise<void> {
    for (;;) {
      let dueId: number | undefined;
      let due: { at: number; callback: () => void } | undefined;
      for (const [id, timer] of this.timers) {
        if (timer.at <= when && (due === undefined || timer.at < due.at)) {
          dueId = id;
          due = timer;
        }
      }
      if (due === undefined) break;
      this.timers.delete(dueId!);
      this.current = Math.max(this.current, due.at);
      due.callback();
      await settle();
    }
    this.current = Math.max(this.current, when);
    await settle();
  }

  /** Moves time on by `ms` (see advanceTo). */
  advance(ms: number): Promise<void> {
    return this.advanceTo(this.current + ms);
  }
}

/** Lets promise chains started by a timer run to their end (the fakes answer without real I/O). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A start for virtual time near the real one (so a real CA root is valid) and on a whole second (as X.509 is). */
export function wholeSecondNow(): number {
  return Math.ceil(Date.now() / 1000) * 1000;
}
