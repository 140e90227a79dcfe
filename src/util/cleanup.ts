/** Undoing start-up in reverse: one helper for every component that opens things it must close. */

export type CleanupStep = () => Promise<void> | void;

/**
 * Steps registered as things start; `run` undoes them in reverse order, one at a time. A failing step is handed to
 * `onError` and the rest still run: one broken close must not keep the others (or the process) alive. `run` never
 * throws, and a second `run` finds nothing left to do.
 */
export class CleanupStack {
  private readonly steps: CleanupStep[] = [];

  constructor(private readonly onError: (error: unknown) => void = () => undefined) {}

  push(step: CleanupStep): void {
    this.steps.push(step);
  }

  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch (error) {
        this.onError(error);
      }
    }
  }
}
