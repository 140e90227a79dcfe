/**
 * One definition of each flag: its commander syntax, what it does, the environment variables that set it and the
 * default as shown to humans. The same definition registers the option (so `--help` shows `env: NAME` next to it)
 * and gives the readers their `Source` (so error messages name the same flag and variable).
 *
 * Commander's own `Option.env()` is not used on purpose: it would copy the variable into the flag before our
 * readers see it, which changes what they do (KUBECONFIG is a list of files, ISTIOD_CUSTOM_HOST adds names rather
 * than replacing them, an empty variable counts as unset, and an error must name the variable, not the flag).
 */
import { Option, type Command } from 'commander';
import { createLogger, defaultLogFormat, LOG_FORMATS, LOG_LEVELS, type LogFormat, type Logger } from '../log.js';
import { readEnum, readString, type Env, type Source } from './env.js';

export interface FlagSpec {
  /** Commander syntax, e.g. `--ca-addr <host:port>`. */
  readonly flags: string;
  readonly description: string;
  /**
   * The variables the code reads for this setting. The first is the one the reader falls back to when the flag
   * is absent (see `sourceOf`); the others change the setting in their own way and are named in `--help` only.
   */
  readonly env?: readonly string[];
  /** The default as `--help` shows it; the reader applies it (commander's default would hide an env value). */
  readonly defaultText?: string;
}

/** An environment variable read without a flag, shown in `--help` after the options. */
export interface EnvOnlySpec {
  readonly env: string;
  readonly description: string;
}

/** The `--long-name` of a spec. */
export function longFlag(spec: FlagSpec): string {
  const match = /--[a-z0-9-]+/.exec(spec.flags);
  if (!match) throw new Error(`flag spec "${spec.flags}" has no --long name`);
  return match[0];
}

/** The `Source` a reader passes along: the long flag and, when it has one, the variable it falls back to. */
export function sourceOf(spec: FlagSpec): Source {
  const env = spec.env?.[0];
  return env === undefined ? { flag: longFlag(spec) } : { flag: longFlag(spec), env };
}

/** The variables `--help` shows for an option made by `flagOption`; undefined for options made otherwise. */
const documentedEnv = new WeakMap<Option, readonly string[]>();

export function envOfOption(option: Option): readonly string[] | undefined {
  return documentedEnv.get(option);
}

/** A commander Option whose help line ends with `(env: NAME; default: X)`. */
export function flagOption(spec: FlagSpec): Option {
  const notes: string[] = [];
  if (spec.env && spec.env.length > 0) notes.push(`env: ${spec.env.join(', ')}`);
  if (spec.defaultText !== undefined) notes.push(`default: ${spec.defaultText}`);
  const option = new Option(spec.flags, notes.length > 0 ? `${spec.description} (${notes.join('; ')})` : spec.description);
  documentedEnv.set(option, spec.env ?? []);
  return option;
}

/** Registers `spec` on `command`, with an optional argument parser (e.g. to collect a repeatable flag). */
export function addFlag(command: Command, spec: FlagSpec, parse?: (value: string, previous: string[] | undefined) => string[]): Command {
  const option = flagOption(spec);
  if (parse) option.argParser(parse);
  return command.addOption(option);
}

/** Collects a repeatable flag's values in order. */
export const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

/** Adds a section listing the variables read without a flag to the command's `--help`. */
export function addEnvOnlyHelp(command: Command, title: string, specs: readonly EnvOnlySpec[]): Command {
  const width = Math.max(...specs.map((s) => s.env.length));
  const lines = specs.map((s) => `  ${s.env.padEnd(width)}  ${s.description}`);
  return command.addHelpText('after', `\n${title}:\n${lines.join('\n')}`);
}

export const DEFAULT_STATE_DIR = './.meshca';

/** The state directory: the CA's self-signed root and the dev issuer (`meshca ca`, `dev` and `token` share it). */
export const STATE_DIR_FLAG: FlagSpec = { flags: '--state-dir <dir>', description: 'directory for the self-signed root and other state', env: ['MESHCA_STATE_DIR'], defaultText: DEFAULT_STATE_DIR };

export function readStateDir(flagValue: string | undefined, env: Env): string {
  return readString(flagValue, env, sourceOf(STATE_DIR_FLAG), DEFAULT_STATE_DIR);
}

const LOG_LEVEL_FLAG: FlagSpec = { flags: '--log-level <level>', description: `log level: ${LOG_LEVELS.join(' | ')}`, env: ['MESHCA_LOG_LEVEL'], defaultText: 'info' };
const LOG_FORMAT_FLAG: FlagSpec = {
  flags: '--log-format <format>',
  description: 'json: one JSON object per line (ISO time, level as a word); text: one line per event for humans',
  env: ['MESHCA_LOG_FORMAT'],
  defaultText: 'text when stdout is a terminal, else json',
};

function hasOption(command: Command, long: string): boolean {
  return command.options.some((o) => o.long === long);
}

/** Adds `--log-level` and `--log-format` unless the command has them already. */
export function addLogOptions(command: Command): Command {
  for (const spec of [LOG_LEVEL_FLAG, LOG_FORMAT_FLAG]) if (!hasOption(command, longFlag(spec))) addFlag(command, spec);
  return command;
}

export function readLogLevel(flag: string | undefined, env: Env): (typeof LOG_LEVELS)[number] {
  return readEnum(flag, env, sourceOf(LOG_LEVEL_FLAG), LOG_LEVELS, 'info');
}

export function readLogFormat(flag: string | undefined, env: Env): LogFormat {
  return readEnum(flag, env, sourceOf(LOG_FORMAT_FLAG), LOG_FORMATS, defaultLogFormat());
}

/** The logger of a long-running command, from its --log-level and --log-format (or their variables). */
export function commandLogger(flags: { logLevel?: string; logFormat?: string }, env: Env, name: string): Logger {
  return createLogger({ level: readLogLevel(flags.logLevel, env), format: readLogFormat(flags.logFormat, env), name });
}
