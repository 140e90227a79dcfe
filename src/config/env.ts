/**
 * Reading configuration from flags and Istio-named environment variables. A flag given on the command line wins
 * over the environment, which wins over the default. Every bad value is a ConfigError that names the variable
 * (or flag) and the value, so start-up fails with one line a human can act on.
 */

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type Env = Readonly<Record<string, string | undefined>>;

/** Where a value came from, for error messages: `--flag`, or `ENV_NAME`. */
export interface Source {
  flag?: string;
  env?: string;
}

function describe(source: Source): string {
  if (source.flag && source.env) return `${source.flag} (env ${source.env})`;
  return source.flag ?? source.env ?? 'value';
}

export function bad(source: Source, value: string, expected: string): ConfigError {
  return new ConfigError(`invalid ${describe(source)}="${value}": expected ${expected}`);
}

/** Raw value: the flag's if set, else the env var's if set and non-empty, else undefined. */
export function raw(flagValue: string | undefined, env: Env, source: Source): string | undefined {
  if (flagValue !== undefined) return flagValue;
  if (source.env) {
    const fromEnv = env[source.env];
    if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  }
  return undefined;
}

const DURATION_UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };

/**
 * Parses Go-style durations ("90s", "1h30m", "24h", "2160h") plus "d" for days. Like Go's time.ParseDuration, a
 * number needs a unit ("24" is refused: 24 seconds or 24 hours?), except "0". Returns seconds (may be fractional
 * for ms).
 */
export function parseDurationSeconds(text: string): number | null {
  const trimmed = text.trim();
  if (trimmed === '0') return 0;
  const pattern = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(trimmed)) !== null) {
    total += Number(match[1]) * DURATION_UNITS[match[2]!]!;
    consumed = pattern.lastIndex;
  }
  if (consumed === 0 || consumed !== trimmed.length) return null;
  return total;
}

export function readString(flagValue: string | undefined, env: Env, source: Source, fallback: string): string {
  return raw(flagValue, env, source) ?? fallback;
}

export function readOptionalString(flagValue: string | undefined, env: Env, source: Source): string | undefined {
  return raw(flagValue, env, source);
}

/** Bounds a number read must fall within, inclusive. */
export interface NumberLimits {
  min?: number;
  max?: number;
}

/** How one kind of number (duration, whole number, any number) is parsed and named in error messages. */
interface NumberKind {
  /** What was expected, for the error message; may depend on the text refused. */
  expected: string | ((text: string) => string);
  /** The value, or null when the text is not one of this kind. */
  parse(text: string): number | null;
  /** The expectation a value out of bounds is told, e.g. `a whole number >= 1`. */
  bounded(relation: '>=' | '<=', bound: number): string;
}

export type NumberReader = (flagValue: string | undefined, env: Env, source: Source, fallback: number, limits?: NumberLimits) => number;

/** The kinds differ only in parsing and wording; reading, the fallback and the bounds check are one function. */
function numberReader(kind: NumberKind): NumberReader {
  return (flagValue, env, source, fallback, limits = {}) => {
    const value = raw(flagValue, env, source);
    if (value === undefined) return fallback;
    const number = kind.parse(value);
    if (number === null) throw bad(source, value, typeof kind.expected === 'string' ? kind.expected : kind.expected(value));
    if (limits.min !== undefined && number < limits.min) throw bad(source, value, kind.bounded('>=', limits.min));
    if (limits.max !== undefined && number > limits.max) throw bad(source, value, kind.bounded('<=', limits.max));
    return number;
  };
}

function parseWholeNumber(text: string): number | null {
  return /^-?\d+$/.test(text.trim()) ? Number(text) : null;
}

function parseFiniteNumber(text: string): number | null {
  const number = Number(text);
  return text.trim() === '' || !Number.isFinite(number) ? null : number;
}

/** What a duration without a unit is told: which units there are, with its own number as the example. */
export function durationExpectation(text: string): string {
  const number = text.trim();
  return /^\d+(\.\d+)?$/.test(number)
    ? `a duration with a unit (ms, s, m, h, d), e.g. "${number}h" or "${number}s"`
    : 'a duration such as 30s, 15m, 24h or 90d';
}

/** Seconds (fallback and limits too). */
export const readDuration = numberReader({
  expected: durationExpectation,
  parse: parseDurationSeconds,
  bounded: (relation, bound) => `a duration of ${relation === '>=' ? 'at least' : 'at most'} ${bound}s`,
});

export const readInteger = numberReader({
  expected: 'a whole number',
  parse: parseWholeNumber,
  bounded: (relation, bound) => `a whole number ${relation} ${bound}`,
});

export const readNumber = numberReader({
  expected: 'a number',
  parse: parseFiniteNumber,
  bounded: (relation, bound) => `a number ${relation} ${bound}`,
});

export function readBoolean(flagValue: string | boolean | undefined, env: Env, source: Source, fallback: boolean): boolean {
  if (typeof flagValue === 'boolean') return flagValue;
  const value = raw(flagValue, env, source);
  if (value === undefined) return fallback;
  const normalized = value.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(normalized)) return true;
  if (['0', 'false', 'no', 'off'].includes(normalized)) return false;
  throw bad(source, value, 'true or false');
}

export function readEnum<T extends string>(
  flagValue: string | undefined,
  env: Env,
  source: Source,
  allowed: readonly T[],
  fallback: T,
): T {
  const value = raw(flagValue, env, source);
  if (value === undefined) return fallback;
  const match = allowed.find((a) => a.toLowerCase() === value.trim().toLowerCase());
  if (!match) throw bad(source, value, `one of ${allowed.join(', ')}`);
  return match;
}

/** Comma-separated list; empty entries dropped. */
export function readList(flagValue: string | undefined, env: Env, source: Source, fallback: readonly string[]): string[] {
  const value = raw(flagValue, env, source);
  if (value === undefined) return [...fallback];
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** host:port with a port in range; accepts [::1]:port and :port (all interfaces). */
export function readAddress(flagValue: string | undefined, env: Env, source: Source, fallback: string): { host: string; port: number; text: string } {
  const value = raw(flagValue, env, source) ?? fallback;
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw bad(source, value, 'host:port, e.g. 0.0.0.0:15012');
  const host = match[1] ?? (match[2] === '' ? '0.0.0.0' : match[2]!);
  return { host, port, text: value.trim() };
}
