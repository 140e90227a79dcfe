/** Process lifecycle for long-running commands: wait for SIGTERM/SIGINT, then exit once shutdown is done. */
import type { Logger } from '../log.js';

/** Resolves with the first SIGTERM or SIGINT. A second signal during shutdown exits at once (status 1). */
export function waitForShutdownSignal(logger: Logger): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      const again = (second: NodeJS.Signals): void => {
        logger.warn({ signal: second }, 'second signal during shutdown: exiting now');
        process.exit(1);
      };
      process.once('SIGTERM', again);
      process.once('SIGINT', again);
      resolve(signal);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

/**
 * Ends the process with `code` once the event loop drains, or after `maxWaitMs` if a library keeps a handle open
 * (e.g. a pooled HTTP connection), so a finished shutdown never hangs.
 */
export function exitWhenIdle(code: number, maxWaitMs = 1000): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), maxWaitMs).unref();
}

/** Shutdown steps registered as things start; `run` undoes them in reverse order, each failure logged, never thrown. */
export class CleanupStack {
  private readonly steps: (() => Promise<void> | void)[] = [];

  constructor(private readonly logger: Logger) {}

  push(step: () => Promise<void> | void): void {
    this.steps.push(step);
  }

  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch (error) {
        this.logger.warn({ err: (error as Error).message }, 'error while stopping the CA server');
      }
    }
  }
}
