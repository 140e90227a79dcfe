/**
 * Files served as `file-cert:` / `file-root:` resources, watched so that a change is pushed to the streams.
 * Each file is watched once however many streams use it. The parent directory is watched (Kubernetes swaps
 * mounted Secrets by renaming a `..data` symlink, which a watch on the file itself would miss) and a slow stat
 * poll backs it up on filesystems without inotify.
 */
import { createHash } from 'node:crypto';
import { watch, watchFile, unwatchFile, promises as fs, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { SdsError } from './errors.js';

export interface FileContent {
  path: string;
  data: Buffer;
  /** Content hash: equal versions are equal bytes. */
  version: string;
}

export interface FileWatch {
  current(): FileContent;
  onChange(listener: (content: FileContent) => void): () => void;
  close(): void;
}

const DEBOUNCE_MS = 50;
const POLL_INTERVAL_MS = 2000;

interface WatchedFile {
  content: FileContent;
  listeners: Set<(content: FileContent) => void>;
  users: number;
  watcher: FSWatcher | null;
  debounce?: NodeJS.Timeout;
}

async function readContent(file: string): Promise<FileContent> {
  let data: Buffer;
  try {
    data = await fs.readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new SdsError(
      code === 'ENOENT' ? GrpcStatus.NOT_FOUND : GrpcStatus.FAILED_PRECONDITION,
      `cannot read ${file}: ${code ?? (error as Error).message}`,
    );
  }
  return { path: file, data, version: createHash('sha256').update(data).digest('hex').slice(0, 16) };
}

export class FileWatcher {
  private readonly files = new Map<string, WatchedFile>();
  private readonly opening = new Map<string, Promise<WatchedFile>>();

  constructor(private readonly log: Logger) {}

  /** Reads `file` and watches it. Rejects with an SdsError when the file cannot be read. */
  async open(file: string): Promise<FileWatch> {
    const resolved = path.resolve(file);
    let entry = this.files.get(resolved);
    if (!entry) {
      let pending = this.opening.get(resolved);
      if (!pending) {
        pending = this.start(resolved);
        this.opening.set(resolved, pending);
        const clear = (): void => void this.opening.delete(resolved);
        pending.then(clear, clear);
      }
      entry = await pending;
    }
    const watched = entry;
    watched.users++;
    const own = new Set<(content: FileContent) => void>();
    let closed = false;
    return {
      current: () => watched.content,
      onChange: (listener) => {
        own.add(listener);
        watched.listeners.add(listener);
        return () => {
          own.delete(listener);
          watched.listeners.delete(listener);
        };
      },
      close: () => {
        if (closed) return;
        closed = true;
        for (const listener of own) watched.listeners.delete(listener);
        if (--watched.users === 0) this.stop(resolved, watched);
      },
    };
  }

  close(): void {
    for (const [file, entry] of this.files) this.stop(file, entry);
  }

  private async start(file: string): Promise<WatchedFile> {
    const content = await readContent(file);
    const existing = this.files.get(file);
    if (existing) return existing;
    const entry: WatchedFile = { content, listeners: new Set(), users: 0, watcher: null };
    const schedule = (): void => {
      clearTimeout(entry.debounce);
      entry.debounce = setTimeout(() => void this.reload(file, entry), DEBOUNCE_MS);
    };
    try {
      entry.watcher = watch(path.dirname(file), { persistent: false }, schedule);
      entry.watcher.on('error', () => undefined);
    } catch {
      entry.watcher = null; // The poll below still notices changes.
    }
    watchFile(file, { persistent: false, interval: POLL_INTERVAL_MS }, schedule);
    this.files.set(file, entry);
    return entry;
  }

  private async reload(file: string, entry: WatchedFile): Promise<void> {
    if (this.files.get(file) !== entry) return;
    let content: FileContent;
    try {
      content = await readContent(file);
    } catch (error) {
      // Mid-update or removed: keep serving the last good content.
      this.log.debug({ file, err: (error as Error).message }, 'watched file not readable; keeping the last content');
      return;
    }
    if (content.version === entry.content.version || this.files.get(file) !== entry) return;
    entry.content = content;
    this.log.info({ file, version: content.version }, 'watched file changed');
    for (const listener of [...entry.listeners]) listener(content);
  }

  private stop(file: string, entry: WatchedFile): void {
    clearTimeout(entry.debounce);
    entry.watcher?.close();
    unwatchFile(file);
    entry.listeners.clear();
    if (this.files.get(file) === entry) this.files.delete(file);
  }
}
