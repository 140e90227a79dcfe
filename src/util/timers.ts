/** Timer limits shared by every component that schedules far ahead (renewals, rotations, expiry checks). */

/**
 * The longest delay setTimeout honours (2^31 − 1 ms, about 24.8 days); a longer one fires at once. Callers clamp to
 * it and re-arm when it fires early.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Replaces `previous` (if any) with a timer that runs `run` after `delayMs`, clamped to [0, MAX_TIMER_MS]. The timer
 * is unref'd: a pending renewal or check never keeps the process alive.
 */
export function rearmTimer(previous: NodeJS.Timeout | undefined, delayMs: number, run: () => void): NodeJS.Timeout {
  if (previous) clearTimeout(previous);
  const timer = setTimeout(run, Math.max(0, Math.min(delayMs, MAX_TIMER_MS)));
  timer.unref();
  return timer;
}
