/**
 * Runs the real `meshca` binary (dist/cli.js, built by `npm run build`) as a child process for end-to-end tests.
 * Logs are JSON lines (stdout is not a TTY), collected for assertions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The nearest directory above this file with a package.json: the tests run from test/ or compiled from .test-build/test/. */
function findRepoRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

export const REPO_ROOT = findRepoRoot(path.dirname(fileURLToPath(import.meta.url)));
export const CLI = path.join(REPO_ROOT, 'dist/cli.js');

export interface LogRecord {
  /** The level as a word (info, warn, ...): --log-format json writes it so. */
  level?: string;
  msg?: string;
  [key: string]: unknown;
}

export interface MeshcaProcess {
  child: ChildProcess;
  /** Every stdout/stderr line so far. */
  lines: string[];
  /** Parsed JSON log records so far. */
  records: LogRecord[];
  /** Resolves with the first record whose msg matches (already seen or future); rejects on exit or timeout. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<LogRecord>;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** SIGTERM (or the given signal), then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number | null>;
}

export function makeTempDir(prefix = 'meshca-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function startMeshca(args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): MeshcaProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? REPO_ROOT,
    // Records are parsed as JSON lines, whatever MESHCA_LOG_FORMAT the developer's shell has.
    env: { ...process.env, MESHCA_LOG_FORMAT: 'json', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const records: LogRecord[] = [];
  const waiters: { pattern: RegExp; resolve: (r: LogRecord) => void }[] = [];
  const onLine = (line: string): void => {
    lines.push(line);
    if (process.env.MESHCA_TEST_VERBOSE === '1') process.stderr.write(`[meshca ${child.pid}] ${line}\n`);
    let record: LogRecord;
    try {
      record = JSON.parse(line) as LogRecord;
    } catch {
      return;
    }
    records.push(record);
    for (const waiter of [...waiters]) {
      if (typeof record.msg === 'string' && waiter.pattern.test(record.msg)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(record);
      }
    }
  };
  for (const stream of [child.stdout!, child.stderr!]) {
    let buffer = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffer += chunk;
      let index: number;
      while ((index = buffer.indexOf('\n')) >= 0) {
        onLine(buffer.slice(0, index));
        buffer = buffer.slice(index + 1);
      }
    });
    stream.on('end', () => {
      if (buffer) onLine(buffer);
      buffer = '';
    });
  }
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const waitForLog = (pattern: RegExp, timeoutMs = 20_000): Promise<LogRecord> => {
    const seen = records.find((r) => typeof r.msg === 'string' && pattern.test(r.msg));
    if (seen) return Promise.resolve(seen);
    return new Promise<LogRecord>((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (r: LogRecord) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(new Error(`timed out waiting for log ${pattern}; output so far:\n${lines.slice(-30).join('\n')}`));
      }, timeoutMs);
      waiters.push(waiter);
      void exited.then((code) => {
        if (waiters.includes(waiter)) {
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error(`meshca exited (${code}) before log ${pattern}; output:\n${lines.slice(-30).join('\n')}`));
        }
      });
    });
  };
  const stop = async (signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  return { child, lines, records, waitForLog, exited, stop };
}

/** Runs meshca to completion (for one-shot commands like `inspect`, `token`, `cacerts`). */
export async function runMeshca(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? REPO_ROOT,
    env: { ...process.env, ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.end(options.input ?? '');
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  return { code, stdout, stderr };
}

/** A local port nothing listens on (bound and released just now), for "connection refused" cases. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
