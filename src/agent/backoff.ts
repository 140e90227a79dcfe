/** Exponential backoff with jitter for CA retries: 100 ms doubling up to 30 s, as istio-agent does. */
export const BACKOFF_INITIAL_MS = 100;
export const BACKOFF_MAX_MS = 30_000;

/**
 * Delay before retry number `attempt` (0 for the first retry). "Equal jitter": half the exponential step is
 * fixed, half random, so retries from many agents spread out but never collapse to zero.
 */
export function backoffDelayMs(attempt: number, random: () => number = Math.random): number {
  const step = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** Math.min(attempt, 20));
  return Math.round(step / 2 + random() * (step / 2));
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
