/** Timer limits shared by every component that schedules far ahead (renewals, rotations, expiry checks). */

/**
 * The longest delay setTimeout honours (2^31 − 1 ms, about 24.8 days); a longer one fires at once. Callers clamp to
 * it and re-arm when it fires early.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
