/**
 * Files served as `file-cert:` / `file-root:` resources, watched so that a change is pushed to the streams.
 * Each file is watched once however many streams use it. The parent directory is watched (Kubernetes swaps
 * mounted Secrets by renaming a `..data` symlink, which a watch on the file itself would miss) and a slow stat
 * poll backs it up on filesystems without inotify.
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants, watch, watchFile, unwatchFile, promises as fs, type FSWatcher, type Stats } from 'node:fs';
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

/** Certificates, keys and bundles are kilobytes; a bigger file is a mistake or an attack (/dev/zero, a log file). */
export const MAX_FILE_RESOURCE_BYTES = 1024 * 1024;

/**
 * Which files may be read, and how much of them. `allowedDirs: null` means any path: only for files the operator
 * names in the agent's own configuration (the CA root), never for paths a client names in an SDS request.
 */
export interface FileReadPolicy {
  allowedDirs: readonly string[] | null;
  maxBytes?: number;
}

const DEBOUNCE_MS = 50;
const POLL_INTERVAL_MS = 2000;
/** Never wait on a FIFO or a device: O_NONBLOCK makes open() return at once; fstat then refuses them. */
const OPEN_FLAGS = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;

interface WatchedFile {
  content: FileContent;
  listeners: Set<(content: FileContent) => void>;
  users: number;
  watcher: FSWatcher | null;
  debounce?: NodeJS.Timeout;
}

function cannotRead(file: string, error: unknown): SdsError {
  const code = (error as NodeJS.ErrnoException).code;
  return new SdsError(code === 'ENOENT' ? GrpcStatus.NOT_FOUND : GrpcStatus.FAILED_PRECONDITION, `cannot read ${file}: ${code ?? (error as Error).message}`);
}

function kindOf(stats: Stats): string {
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  if (stats.isDirectory()) return 'a directory';
  if (stats.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

/** The directory with its symlinks resolved as far as it exists (/var/run -> /run), so prefixes compare. */
async function resolveDir(dir: string): Promise<string> {
  const absolute = path.resolve(dir);
  try {
    return await fs.realpath(absolute);
  } catch {
    const parent = path.dirname(absolute);
    return parent === absolute ? absolute : path.join(await resolveDir(parent), path.basename(absolute));
  }
}

function isWithin(file: string, dir: string): boolean {
  return file === dir || file.startsWith(dir.endsWith(path.sep) ? dir : dir + path.sep);
}

/** Where the kernel says an open descriptor leads (Linux); null where /proc does not tell. */
async function openedPath(fd: number): Promise<string | null> {
  try {
    return await fs.readlink(`/proc/self/fd/${fd}`);
  } catch {
    return null;
  }
}

/**
 * Reads a file for a `file-cert:`/`file-root:` resource, once and safely. Symlinks in the path are followed
 * (Kubernetes mounts a Secret as `cert.pem -> ..data/cert.pem`, `..data -> ..2024_01_01_…/`), but only to a place
 * inside an allowed directory: the allowed-directory check is made on the resolved path and again, on Linux, on the
 * path of the descriptor actually opened, so a swap between the check and the open cannot escape. The resolved
 * path is opened with O_NOFOLLOW (its last component must not have become a symlink since) and O_NONBLOCK; the
 * descriptor must be a regular file of at most `maxBytes`, and the bytes are read from it, never from the path again.
 */
export async function readFileResource(file: string, policy: FileReadPolicy): Promise<Buffer> {
  const maxBytes = policy.maxBytes ?? MAX_FILE_RESOURCE_BYTES;
  // Each directory as configured and with its symlinks resolved (/var/run/x is /run/x on most systems).
  const namedDirs = policy.allowedDirs?.map((dir) => path.resolve(dir)) ?? null;
  const resolvedDirs = policy.allowedDirs === null ? null : await Promise.all(policy.allowedDirs.map(resolveDir));
  const checkWithin = (location: string, dirs: readonly string[] | null): void => {
    if (dirs === null || dirs.some((dir) => isWithin(location, dir))) return;
    const target = location === file ? '' : ` (it leads to ${location})`;
    throw new SdsError(
      GrpcStatus.PERMISSION_DENIED,
      `${file} is outside the directories allowed by --file-resource-dirs${target}; allowed: ${namedDirs!.length > 0 ? namedDirs!.join(', ') : 'none'}`,
    );
  };
  const checkRegular = (stats: Stats): void => {
    if (!stats.isFile()) {
      throw new SdsError(GrpcStatus.FAILED_PRECONDITION, `${file} is ${kindOf(stats)}, not a regular file; file-cert:/file-root: serve regular files only`);
    }
    if (stats.size > maxBytes) throw tooBig(file, stats.size, maxBytes);
  };

  // First the path as named, before touching the filesystem: a refused client learns nothing of what exists there.
  checkWithin(path.resolve(file), namedDirs && resolvedDirs && [...namedDirs, ...resolvedDirs]);
  let resolved: string;
  try {
    resolved = await fs.realpath(file);
  } catch (error) {
    throw cannotRead(file, error);
  }
  // Then where it leads, against the resolved directories.
  checkWithin(resolved, resolvedDirs);
  // Refused by type before any open: opening a device can have effects of its own (a tape rewinds, a tty attaches).
  try {
    checkRegular(await fs.lstat(resolved));
  } catch (error) {
    throw error instanceof SdsError ? error : cannotRead(file, error);
  }
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(resolved, OPEN_FLAGS);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') {
      throw new SdsError(GrpcStatus.FAILED_PRECONDITION, `${file}: ${resolved} became a symbolic link while being opened; not following it (try again)`);
    }
    throw cannotRead(file, error);
  }
  try {
    const opened = await openedPath(handle.fd);
    if (opened !== null) checkWithin(opened, resolvedDirs);
    const stats = await handle.stat();
    checkRegular(stats);
    // One byte more than fstat gave, to notice a file that grows while it is read.
    const buffer = Buffer.allocUnsafe(stats.size + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length === buffer.length) {
        if (length > maxBytes) throw tooBig(file, length, maxBytes, true);
        throw new SdsError(GrpcStatus.UNAVAILABLE, `${file} grew while being read; it is being written, try again`);
      }
    }
    return Buffer.from(buffer.subarray(0, length));
  } catch (error) {
    throw error instanceof SdsError ? error : cannotRead(file, error);
  } finally {
    await handle.close().catch(() => undefined);
  }
}

function tooBig(file: string, size: number, maxBytes: number, atLeast = false): SdsError {
  return new SdsError(
    GrpcStatus.FAILED_PRECONDITION,
    `${file} is ${atLeast ? 'at least ' : ''}${size} bytes, more than the ${maxBytes}-byte (${formatBytes(maxBytes)}) limit for file-cert:/file-root: files; point the resource at the certificate, key or bundle itself`,
  );
}

function formatBytes(bytes: number): string {
  return bytes % (1024 * 1024) === 0 ? `${bytes / (1024 * 1024)} MiB` : bytes % 1024 === 0 ? `${bytes / 1024} KiB` : `${bytes} bytes`;
}

async function readContent(file: string, policy: FileReadPolicy): Promise<FileContent> {
  const data = await readFileResource(file, policy);
  return { path: file, data, version: createHash('sha256').update(data).digest('hex').slice(0, 16) };
}

export class FileWatcher {
  private readonly files = new Map<string, WatchedFile>();
  private readonly opening = new Map<string, Promise<WatchedFile>>();

  constructor(
    private readonly log: Logger,
    private readonly policy: FileReadPolicy,
    /** Counted as istio_agent_num_file_watcher_failures_total and istio_agent_num_file_secret_failures_total. */
    private readonly failures?: { watcher(): void; read(): void },
  ) {}

  /** Reads `file` (readFileResource) and watches it. Rejects with an SdsError when the file is refused or unreadable. */
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
    let content: FileContent;
    try {
      content = await readContent(file, this.policy);
    } catch (error) {
      this.failures?.read();
      throw error;
    }
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
      this.failures?.watcher();
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
      content = await readContent(file, this.policy);
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
