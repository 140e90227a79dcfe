/**
 * Time for what waits on certificate lifetimes: the agent cache (renewal, idle expiry, retry backoff, token exp,
 * the refusal cache) and the cacerts source (old roots leaving the bundle) read it and arm their timers on it,
 * so tests drive them on virtual time and production uses the system clock.
 */
import { MAX_TIMER_MS } from './timers.js';

export interface Clock {
  /** Epoch milliseconds. */
  now(): number;
  /** Runs `callback` once `delayMs` has passed on this clock; returns a cancel function. */
  setTimer(delayMs: number, callback: () => void): () => void;
}

/** Date.now and setTimeout, looked up at each call (so node:test's mock timers still apply to it). */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(delayMs, callback) {
    const timer = setTimeout(callback, Math.max(0, Math.min(delayMs, MAX_TIMER_MS)));
    return () => clearTimeout(timer);
  },
};

/** A clock reading `now` for time and system timers for waiting (the agent's historical `clock` option). */
export function clockFrom(now: () => number): Clock {
  return { now, setTimer: systemClock.setTimer };
}

/** A cancellable timer for an absolute time on `clock`, robust to delays longer than one timer can hold. */
export function timerAt(clock: Clock, when: number, callback: () => void): () => void {
  let cancel: (() => void) | undefined;
  let cancelled = false;
  const arm = (): void => {
    const wait = when - clock.now();
    if (wait <= 0) {
      cancel = clock.setTimer(0, () => {
        if (!cancelled) callback();
      });
      return;
    }
    cancel = clock.setTimer(Math.min(wait, MAX_TIMER_MS), () => {
      if (cancelled) return;
      if (wait > MAX_TIMER_MS) arm();
      else callback();
    });
  };
  arm();
  return () => {
    cancelled = true;
    cancel?.();
  };
}

/** Resolves after `ms` on `clock`, or rejects with the signal's reason as soon as it aborts. */
export function sleepOn(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      cancel();
      reject(signal!.reason as Error);
    };
    const cancel = clock.setTimer(ms, () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
