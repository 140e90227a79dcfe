/**
 * Structured logging with pino, in one of two formats (--log-format): `json`, one JSON object per line with an
 * ISO-8601 `time` and the level as a word (`"level":"info"`), or `text`, one line per event for humans
 * (`2026-12-06T21:00:00.000Z INFO  msg key=value`). JSON by default, text when stdout is a terminal.
 * The logger is created once in the CLI and passed in to every component (never imported globally).
 */
import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };
export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
export const LOG_FORMATS = ['json', 'text'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Default: text when stdout is a TTY, else json. */
  format?: LogFormat;
  name?: string;
  destination?: NodeJS.WritableStream;
}

// Anything that looks like key material is cut from log records, whatever field it hides in.
const KEY_PEM = /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)/g;

function redactKeyMaterial(text: string): string {
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

const CENSOR = '[redacted]';
// Credentials by field name: these top-level fields, and the NESTED ones also one level down (what pino's `redact`
// option with paths 'privateKey', '*.privateKey', 'key', 'token', '*.token', 'authorization', '*.authorization'
// did). Censored in the same walk as key material: pino's path redaction cost ~10 us per line, a third of the
// audit line written for every certificate.
const CENSORED = new Set(['privateKey', 'key', 'token', 'authorization']);
const CENSORED_NESTED = new Set(['privateKey', 'token', 'authorization']);

function hasCensoredField(value: object): boolean {
  for (const key of CENSORED_NESTED) if (Object.hasOwn(value, key) && (value as Record<string, unknown>)[key] !== undefined) return true;
  return false;
}

/** A top-level value with its NESTED credential fields censored; errors become what pino's err serializer prints. */
function censorNested(value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || !hasCensoredField(value)) return value;
  // An error keeps its prototype, so that pino's err serializer still prints its type; message and stack are not
  // enumerable on the original and are copied explicitly.
  const copy = (
    value instanceof Error
      ? Object.assign(Object.create(Object.getPrototypeOf(value) as object) as object, value, { message: value.message, stack: value.stack })
      : { ...value }
  ) as Record<string, unknown>;
  for (const key of CENSORED_NESTED) if (copy[key] !== undefined) copy[key] = CENSOR;
  return copy;
}

/**
 * A log record (or a child logger's bindings) as it may be printed: credential fields censored by name and key
 * material cut from every string (`redactValue`), copying only what changes.
 */
function redactRecord(record: Record<string, unknown>): Record<string, unknown> {
  let copy: Record<string, unknown> | undefined;
  for (const [key, value] of Object.entries(record)) {
    const redacted = CENSORED.has(key) && value !== undefined ? CENSOR : censorNested(redactValue(value, 1));
    if (redacted !== value) (copy ??= { ...record })[key] = redacted;
  }
  return copy ?? record;
}

/** The default format: text for a human at a terminal, JSON for a log collector. */
export function defaultLogFormat(): LogFormat {
  return process.stdout.isTTY ? 'text' : 'json';
}

/** Fields of a JSON record that the text line shows in its own place (or not at all). */
const TEXT_OMITTED = new Set(['time', 'level', 'msg', 'pid', 'hostname']);

/** A value in a `key=value` pair: bare when it is a plain word, else JSON (quoted, escaped: never a line break). */
function textValue(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  if (typeof value === 'string') return /^[\w.:/@+-]+$/.test(value) ? value : JSON.stringify(value);
  if (typeof value === 'object' && typeof (value as { message?: unknown }).message === 'string') {
    // An error as pino's serializer wrote it: its type and message; the stack would take many lines.
    const error = value as { type?: unknown; message: string };
    return JSON.stringify(typeof error.type === 'string' ? `${error.type}: ${error.message}` : error.message);
  }
  return JSON.stringify(value) ?? 'undefined';
}

/** One JSON record (a line pino wrote) as one line of text: time, LEVEL, message, then every other field. */
export function textLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`;
  }
  const level = typeof record.level === 'string' ? record.level.toUpperCase() : String(record.level);
  const parts = [String(record.time), level.padEnd(5)];
  if (typeof record.msg === 'string') parts.push(record.msg.replace(/[\r\n]+/g, ' '));
  for (const [key, value] of Object.entries(record)) if (!TEXT_OMITTED.has(key) && value !== undefined) parts.push(`${key}=${textValue(value)}`);
  return `${parts.join(' ')}\n`;
}

/** A pino destination that turns each JSON line into a text line before writing it to `out`. */
function textDestination(out: { write(chunk: string): unknown }): DestinationStream {
  return { write: (line: string) => void out.write(textLine(line)) };
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? defaultLogFormat();
  const base = {
    level: options.level ?? 'info',
    ...(options.name ? { name: options.name } : {}),
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }), log: redactRecord, bindings: redactRecord },
  };
  let logger: Logger;
  if (format === 'text') {
    // Written synchronously, in the process's own thread (no transport worker): a line is never lost at exit.
    logger = pino(base, textDestination(options.destination ?? pino.destination({ dest: 1, sync: true })));
  } else {
    // Without a destination pino writes to stdout through an asynchronous sonic-boom (sync: false) that it flushes
    // synchronously on process exit: a line is never lost on a graceful exit or a fatal start-up error.
    logger = options.destination ? pino(base, options.destination) : pino(base);
  }
  // pino applies the bindings formatter to the root logger only; children (and theirs, which inherit this
  // property) get their bindings redacted here.
  const child = logger.child;
  Object.defineProperty(logger, 'child', {
    value: function (this: Logger, bindings: Record<string, unknown>, ...rest: unknown[]) {
      return (child as unknown as (...args: unknown[]) => Logger).call(this, redactRecord(bindings), ...rest);
    },
  });
  return logger;
}
