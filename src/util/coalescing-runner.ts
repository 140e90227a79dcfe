/**
 * One pass at a time per key (a namespace, an object's name): a request while a pass runs causes exactly one more
 * pass after it, however many requests came meanwhile. Controllers use it so that a burst of watch events for one
 * object costs at most two reconciles, never overlapping ones.
 */
export class CoalescingRunner<K> {
  private readonly running = new Map<K, Promise<void>>();
  private readonly again = new Set<K>();

  constructor(
    private readonly pass: (key: K) => Promise<void>,
    /** Checked between passes: once true, no further pass starts. */
    private readonly stopped: () => boolean,
  ) {}

  /** Runs a pass for `key` now, or once more after the running one; resolves when the key's passes are done. */
  run(key: K): Promise<void> {
    const running = this.running.get(key);
    if (running) {
      this.again.add(key);
      return running;
    }
    const run = (async () => {
      do {
        this.again.delete(key);
        await this.pass(key);
      } while (this.again.has(key) && !this.stopped());
    })().finally(() => this.running.delete(key));
    this.running.set(key, run);
    return run;
  }

  /** Resolves when every pass running now has ended (failed or not). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.running.values()]);
  }
}
