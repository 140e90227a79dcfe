/**
 * OUTPUT_CERTS (sidecar mode): the workload's key.pem (0600), cert-chain.pem and root-cert.pem, written
 * atomically (temp file, fsync, rename) on every change, for applications that read files instead of SDS.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from '../log.js';
import { writeFileAtomic } from '../util/fs.js';
import type { IdentitySecret } from './workload-secrets.js';

export const OUTPUT_FILES = { key: 'key.pem', chain: 'cert-chain.pem', roots: 'root-cert.pem' } as const;

export class OutputCertsWriter {
  private queue: Promise<void> = Promise.resolve();

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
  ) {}

  /** Writes are serialised so that an older secret never lands after a newer one. */
  write(secret: IdentitySecret): Promise<void> {
    this.queue = this.queue.then(() => this.writeNow(secret)).catch((error: unknown) => {
      this.log.error({ dir: this.dir, err: (error as Error).message }, 'could not write OUTPUT_CERTS files');
    });
    return this.queue;
  }

  private async writeNow(secret: IdentitySecret): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o755 });
    // Key first: a reader that sees the new chain finds its key already in place.
    await writeFileAtomic(path.join(this.dir, OUTPUT_FILES.key), secret.keyPem, 0o600);
    await writeFileAtomic(path.join(this.dir, OUTPUT_FILES.chain), secret.chainPem, 0o644);
    await writeFileAtomic(path.join(this.dir, OUTPUT_FILES.roots), secret.rootsPem, 0o644);
    this.log.info({ dir: this.dir, serial: secret.leaf.serialHex }, 'wrote OUTPUT_CERTS files');
  }
}
