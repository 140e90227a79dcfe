/**
 * When to renew a workload certificate. With lifetime L = NotAfter - time received and a grace ratio r drawn as
 * SECRET_GRACE_PERIOD_RATIO ± uniform(0,1)·SECRET_GRACE_PERIOD_RATIO_JITTER (clamped to [0,1]), renewal is at
 * NotAfter - r·L. The jitter keeps a node full of certificates issued at the same moment from renewing in lockstep.
 */
export interface GracePeriod {
  ratio: number;
  jitter: number;
}

export function drawGraceRatio(grace: GracePeriod, random: () => number = Math.random): number {
  const offset = random() * grace.jitter;
  const ratio = random() < 0.5 ? grace.ratio + offset : grace.ratio - offset;
  return Math.min(1, Math.max(0, ratio));
}

/** Epoch milliseconds at which to renew a certificate received at `receivedAt` that expires at `notAfter`. */
export function renewalTime(notAfter: number, receivedAt: number, graceRatio: number): number {
  const lifetime = Math.max(0, notAfter - receivedAt);
  return notAfter - graceRatio * lifetime;
}

/** setTimeout holds at most 2^31-1 ms (~24.8 days); longer waits are chained. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A cancellable timer for an absolute time, robust to delays longer than setTimeout allows. */
export function timerAt(when: number, callback: () => void, now: () => number = Date.now): () => void {
  let timer: NodeJS.Timeout | undefined;
  let cancelled = false;
  const arm = (): void => {
    const wait = when - now();
    if (wait <= 0) {
      timer = setTimeout(callback, 0);
      return;
    }
    timer = setTimeout(() => {
      if (!cancelled) {
        if (wait > MAX_TIMER_MS) arm();
        else callback();
      }
    }, Math.min(wait, MAX_TIMER_MS));
  };
  arm();
  return () => {
    cancelled = true;
    if (timer) clearTimeout(timer);
  };
}
