/** Process lifecycle for long-running commands: wait for SIGTERM/SIGINT, then exit once shutdown is done. */
import type { Logger } from '../log.js';
import { CleanupStack as GenericCleanupStack } from '../util/cleanup.js';

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

/** The CA server's shutdown steps (see util/cleanup.ts), each failure logged as a warning, never thrown. */
export class CleanupStack extends GenericCleanupStack {
  constructor(logger: Logger) {
    super((error) => logger.warn({ err: (error as Error).message }, 'error while stopping the CA server'));
  }
}
