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
  return text.replace(KEY_PEM, '[redacted private key]');
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const usePretty = options.pretty ?? Boolean(process.stdout.isTTY);
  const base = {
    level: options.level ?? 'info',
    ...(options.name ? { name: options.name } : {}),
    redact: { paths: ['privateKey', '*.privateKey', 'key', 'token', '*.token', 'authorization', '*.authorization'], censor: '[redacted]' },
    formatters: { log: (record: Record<string, unknown>) => JSON.parse(redactKeyMaterial(JSON.stringify(record))) as Record<string, unknown> },
  };
  if (usePretty) {
    return pino(base, pretty({ colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', destination: 1, sync: true }));
  }
  return options.destination ? pino(base, options.destination) : pino(base);
}
