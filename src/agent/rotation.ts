/**
 * When to renew a workload certificate, and the few clock facts around it. One function, renewalSchedule, decides
 * it for production and tests alike; it takes the moment of receipt, so tests drive it with any clock they like.
 *
 * The grace ratio r is drawn as SECRET_GRACE_PERIOD_RATIO ± uniform(0,1)·SECRET_GRACE_PERIOD_RATIO_JITTER (clamped
 * to [0,1]); the jitter keeps a node full of certificates issued at the same moment from renewing in lockstep.
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

/**
 * How far this node's clock may be from the CA's before a fresh certificate is refused as not yet valid or
 * already expired. Within it, a certificate is checked at the moment of its validity nearest to local time.
 */
export const MAX_CLOCK_SKEW_MS = 10 * 60 * 1000;

/** Differences below this are rounding (whole-second NotAfter, transit time), not a wrong clock. */
export const CLOCK_TOLERANCE_MS = 5_000;
const X509_TIME_RESOLUTION_MS = 1000;
/** Renewal starts at least this long (or a tenth of the lifetime, if less) before expiry, whatever the grace ratio. */
export const RENEWAL_MARGIN_MS = 60_000;

export type ClockReading = 'in-sync' | 'behind' | 'ahead';

export interface RenewalSchedule {
  /** Lifetime left at receipt, in milliseconds of the local clock. */
  lifetimeMs: number;
  /** When to renew, by the local clock: receivedAt + (1 − r)·lifetime, but never later than expiresAt − margin (whole ms). */
  renewAt: number;
  /** When the certificate expires, by the local clock (NotAfter, unless this node's clock is off). */
  expiresAt: number;
  /** What the certificate proves about the local clock compared with the CA's; only 'in-sync' warrants no warning. */
  clock: ClockReading;
}

/**
 * The renewal of a certificate the CA has just issued, received at `receivedAt` (local clock) for a request of
 * `requestedMs`, at grace ratio `graceRatio`.
 *
 * The usable lifetime is NotAfter − max(NotBefore, received), at most what was requested. NotBefore is not the
 * issue time: CAs backdate it (ours and Istio's by 2 minutes, Vault by 30 s) for slow clocks, so NotAfter −
 * NotBefore overstates the lifetime of every leaf, and grossly that of a leaf cut short by an issuer about to
 * expire. Only what the certificate proves is taken as clock skew:
 *  - behind: NotBefore lies in the future, or more is left than was asked for. Time is counted from receipt and
 *    the lifetime is at most min(NotAfter − NotBefore, requested);
 *  - ahead: the certificate looks expired on arrival. Its lifetime cannot be read off the local clock, so it is
 *    taken as min(NotAfter − NotBefore, requested), from receipt.
 * A clock ahead by less than the lifetime left only makes renewal early, never late, and is not reported (it
 * cannot be told from an issuer that grants less). A clock behind by less than the CA's backdating cannot be seen.
 */
export function renewalSchedule(
  validity: { notBefore: number; notAfter: number },
  receivedAt: number,
  requestedMs: number,
  graceRatio: number,
): RenewalSchedule {
  const { notBefore, notAfter } = validity;
  // X.509 times have whole seconds, so NotAfter falls up to a second short of issue time + requested: take the middle.
  const requestedCap = requestedMs - Math.min(X509_TIME_RESOLUTION_MS / 2, requestedMs / 2);
  const left = notAfter - receivedAt;
  let clock: ClockReading = 'in-sync';
  if (notBefore - receivedAt > CLOCK_TOLERANCE_MS || left > requestedMs + CLOCK_TOLERANCE_MS) clock = 'behind';
  else if (left <= 0) clock = 'ahead';
  const lifetimeMs =
    clock === 'ahead'
      ? Math.max(0, Math.min(notAfter - notBefore, requestedCap))
      : Math.max(0, Math.min(notAfter - Math.max(notBefore, receivedAt), clock === 'behind' ? requestedCap : requestedMs));
  const expiresAt = receivedAt + lifetimeMs;
  const margin = Math.min(RENEWAL_MARGIN_MS, lifetimeMs / 10);
  const ratio = Math.min(1, Math.max(0, graceRatio));
  // Whole milliseconds, rounded down: timers have no finer grain, and earlier is the safe side.
  const renewAt = Math.max(receivedAt, Math.floor(Math.min(receivedAt + (1 - ratio) * lifetimeMs, expiresAt - margin)));
  return { lifetimeMs, renewAt, expiresAt, clock };
}

/** The moment to check a fresh certificate's chain at: local now, moved into its validity when the clocks differ a little. */
export function verificationTime(validity: { notBefore: number; notAfter: number }, now: number): number {
  if (now < validity.notBefore && validity.notBefore - now <= MAX_CLOCK_SKEW_MS) return validity.notBefore;
  if (now > validity.notAfter && now - validity.notAfter <= MAX_CLOCK_SKEW_MS) return validity.notAfter;
  return now;
}
