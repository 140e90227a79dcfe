/**
 * Structured logging with pino: JSON lines by default, human-readable when stdout is a terminal.
 * The logger is created once in the CLI and passed in to every component (never imported globally).
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };
export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Default: pretty when stdout is a TTY. */
  pretty?: boolean;
  name?: string;
  destination?: NodeJS.WritableStream;
}

// Anything that looks like key material is cut from log records, whatever field it hides in.
const KEY_PEM = /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)/g;

export function redactKeyMaterial(text: string): string {
  return text.includes('PRIVATE KEY-----') ? text.replace(KEY_PEM, '[redacted private key]') : text;
}

/**
 * Returns `value` with key material cut from every string in it, copying only what changes. Walking the record is
 * far cheaper than a JSON round trip, and this runs for every log line (one audit line per certificate).
 */
export function redactValue(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactKeyMaterial(value);
  if (value === null || typeof value !== 'object' || depth > 8) return value;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    value.forEach((item, index) => {
      const redacted = redactValue(item, depth + 1);
      if (redacted !== item) (copy ??= [...value])[index] = redacted;
    });
    return copy ?? value;
  }
  if (value instanceof Error) {
    const message = redactKeyMaterial(value.message);
    const stack = value.stack === undefined ? undefined : redactKeyMaterial(value.stack);
    if (message === value.message && stack === value.stack) return value;
    return { type: value.name, message, ...(stack !== undefined ? { stack } : {}) };
  }
  let copy: Record<string, unknown> | undefined;
  for (const [key, item] of Object.entries(value)) {
    const redacted = redactValue(item, depth + 1);
    if (redacted !== item) (copy ??= { ...(value as Record<string, unknown>) })[key] = redacted;
  }
  return copy ?? value;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const usePretty = options.pretty ?? Boolean(process.stdout.isTTY);
  const base = {
    level: options.level ?? 'info',
    ...(options.name ? { name: options.name } : {}),
    redact: { paths: ['privateKey', '*.privateKey', 'key', 'token', '*.token', 'authorization', '*.authorization'], censor: '[redacted]' },
    formatters: { log: (record: Record<string, unknown>) => redactValue(record) as Record<string, unknown> },
  };
  if (usePretty) {
    return pino(base, pretty({ colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', destination: 1, sync: true }));
  }
  return options.destination ? pino(base, options.destination) : pino(base);
}
