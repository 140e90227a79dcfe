/**
 * When to renew a workload certificate. With lifetime L = NotAfter - time received and a grace ratio r drawn as
 * SECRET_GRACE_PERIOD_RATIO ± uniform(0,1)·SECRET_GRACE_PERIOD_RATIO_JITTER (clamped to [0,1]), renewal is at
 * NotAfter - r·L. The jitter keeps a node full of certificates issued at the same moment from renewing in lockstep.
 * Renewal is timed from the time received (received + (1 - r)·L on the local clock), with L checked against the
 * certificate's own validity, so a node whose clock is minutes off still renews on time (estimateLifetime).
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

/**
 * How far this node's clock may be from the CA's before a fresh certificate is refused as not yet valid or
 * already expired. Within it, a certificate is checked at the moment of its validity nearest to local time.
 */
export const MAX_CLOCK_SKEW_MS = 10 * 60 * 1000;

/** Differences below this are rounding (whole-second NotAfter, transit time), not a wrong clock. */
const CLOCK_TOLERANCE_MS = 5_000;
const X509_TIME_RESOLUTION_MS = 1000;

export type ClockReading = 'in-sync' | 'behind' | 'ahead';

export interface LifetimeEstimate {
  /** Lifetime left at receipt, in milliseconds of the local clock. */
  lifetimeMs: number;
  /** What the certificate says about the local clock compared with the CA's. */
  clock: ClockReading;
}

/**
 * The lifetime left on a certificate the CA has just issued, for timing its renewal with local timers.
 *
 * NotAfter − received (Istio's L) is right when the node's clock agrees with the CA's; with a skewed clock it is
 * off by the skew, which could make a short-lived certificate look expired on arrival (renewal in a loop) or
 * longer-lived than it is (renewal after expiry). A certificate just issued for a request of `requestedMs` can
 * have at most min(NotAfter − NotBefore, requestedMs) left, and cannot already be half spent. Outside those
 * bounds the local clock is wrong, and that ceiling, which comes from the certificate alone, is used instead.
 */
export function estimateLifetime(validity: { notBefore: number; notAfter: number }, receivedAt: number, requestedMs: number): LifetimeEstimate {
  const ceiling = Math.max(0, Math.min(validity.notAfter - validity.notBefore, requestedMs));
  const local = validity.notAfter - receivedAt;
  // X.509 times have whole seconds, so NotAfter falls up to a second short of issue time + lifetime: take the middle.
  const skewed = Math.max(ceiling / 2, ceiling - X509_TIME_RESOLUTION_MS / 2);
  if (local > ceiling + CLOCK_TOLERANCE_MS) return { lifetimeMs: skewed, clock: 'behind' };
  // No tolerance here: this bound is what keeps the renewal delay from shrinking towards zero (a loop).
  if (local < ceiling / 2) return { lifetimeMs: skewed, clock: 'ahead' };
  return { lifetimeMs: Math.max(0, Math.min(local, ceiling)), clock: 'in-sync' };
}

/** The moment to check a fresh certificate's chain at: local now, moved into its validity when the clocks differ a little. */
export function verificationTime(validity: { notBefore: number; notAfter: number }, now: number): number {
  if (now < validity.notBefore && validity.notBefore - now <= MAX_CLOCK_SKEW_MS) return validity.notBefore;
  if (now > validity.notAfter && now - validity.notAfter <= MAX_CLOCK_SKEW_MS) return validity.notAfter;
  return now;
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
