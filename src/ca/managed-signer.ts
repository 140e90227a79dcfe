/**
 * A LocalSigner that owns background work (directory watchers, rotation timers, Kubernetes watches):
 * closing the signer stops all of it, so the CA command only has to call `close()`.
 */
import { LocalSigner } from './local-signer.js';

export type Cleanup = () => void | Promise<void>;

export class ManagedLocalSigner extends LocalSigner {
  private readonly cleanups: Cleanup[] = [];
  private closed = false;

  /** Registers work to stop on close; runs in reverse order of registration. */
  addCleanup(cleanup: Cleanup): void {
    if (this.closed) {
      void Promise.resolve().then(cleanup);
      return;
    }
    this.cleanups.push(cleanup);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const cleanup of this.cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // Shutdown continues: one failing cleanup must not keep the others (or the process) alive.
      }
    }
    await super.close();
  }
}
