/** The long-run budget of `npm run fuzz`: MESHCA_FUZZ_SECONDS per property (default 20), until the time is up. */
import type { FuzzBudget } from './properties.js';

const seconds = Number(process.env.MESHCA_FUZZ_SECONDS ?? '20');
if (!(seconds > 0)) throw new Error(`MESHCA_FUZZ_SECONDS must be a positive number of seconds, got "${process.env.MESHCA_FUZZ_SECONDS}"`);

export const FUZZ_SECONDS = seconds;

export const longBudget: FuzzBudget = {
  numRuns: Number.MAX_SAFE_INTEGER,
  timeLimitMs: seconds * 1000,
  // Generous: the time limit stops a property between runs; only a run that never returns trips this.
  testTimeoutMs: seconds * 1000 * 3 + 60_000,
};
