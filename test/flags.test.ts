/**
 * README's configuration tables against the options the commands really register: each documented flag exists
 * on the command its table names, `--help` shows next to it the environment variables the table gives, a variable
 * documented without a flag is named in the command's `--help`, and no flag shows a variable the table omits.
 * The commands are built the way the CLI builds them (their register functions), so a flag counts wherever it is
 * defined (the key sources define their own).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { Command, type Option } from 'commander';
import { registerAgentCommand } from '../src/commands/agent.js';
import { registerCaCommand } from '../src/commands/ca.js';
import { registerCacertsCommand } from '../src/commands/cacerts.js';
import { registerCompletionCommand } from '../src/commands/completion.js';
import { registerDevCommand } from '../src/commands/dev.js';
import { registerFetchCommand } from '../src/commands/fetch.js';
import { registerInspectCommand } from '../src/commands/inspect.js';
import { registerRequestCommand } from '../src/commands/request.js';
import { registerTokenCommand } from '../src/commands/token.js';
import { registerVersionCommand } from '../src/commands/version.js';
import { registerDecisionsCommand } from '../src/commands/decisions.js';
import { registerStatusCommand } from '../src/commands/status.js';
import { envOfOption } from '../src/config/flags.js';
import { REPO_ROOT } from './support/process.js';

interface Row {
  /** README line number, for messages. */
  line: number;
  commands: string[];
  flags: string[];
  env: string[];
}

/** Splits a Markdown table row on `|` that is not escaped as `\|`. */
function cells(line: string): string[] {
  return line
    .trim()
    .replace(/^\||\|$/g, '')
    .split(/(?<!\\)\|/)
    .map((c) => c.trim());
}

function backticked(cell: string): string[] {
  return [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
}

export function flagsOf(cell: string): string[] {
  const flags: string[] = [];
  for (const code of backticked(cell)) {
    for (const match of code.matchAll(/--(\[no-\])?([a-z0-9][a-z0-9-]*)/g)) {
      if (match[1]) flags.push(`--${match[2]}`, `--no-${match[2]}`);
      else flags.push(`--${match[2]}`);
    }
  }
  return flags;
}

export function envOf(cell: string): string[] {
  return backticked(cell).flatMap((code) => {
    const match = /^[A-Z][A-Z0-9_]*(<NAME>)?/.exec(code);
    return match ? [match[0]] : [];
  });
}

/** Every row of the tables under "## Configuration" whose header is `flag | env | ... | default`. */
function readmeRows(): Row[] {
  const lines = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8').split('\n');
  const start = lines.findIndex((l) => l.trim() === '## Configuration');
  assert.ok(start >= 0, 'README has a "## Configuration" section');
  const rows: Row[] = [];
  let commands: string[] = [];
  let inTable = false;
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^## /.test(line)) break;
    if (/^### /.test(line)) {
      commands = [...line.matchAll(/`meshca ([a-z]+)`/g)].map((m) => m[1]!);
      inTable = false;
      continue;
    }
    if (!line.startsWith('|')) {
      inTable = false;
      continue;
    }
    const row = cells(line);
    if (row[0] === 'flag' && row[1] === 'env') {
      inTable = true;
      continue;
    }
    if (!inTable || /^-+$/.test(row[0] ?? '')) continue;
    rows.push({ line: i + 1, commands, flags: flagsOf(row[0] ?? ''), env: envOf(row[1] ?? '') });
  }
  return rows;
}

/** The commands as the CLI registers them. */
function built(): Map<string, Command> {
  const program = new Command();
  for (const register of [registerCaCommand, registerAgentCommand, registerDevCommand, registerTokenCommand, registerRequestCommand, registerFetchCommand]) {
    register(program);
  }
  for (const register of [registerInspectCommand, registerCacertsCommand, registerCompletionCommand, registerVersionCommand, registerStatusCommand, registerDecisionsCommand]) {
    register(program);
  }
  return new Map(program.commands.map((c) => [c.name(), c]));
}

function fullHelp(command: Command): string {
  let text = '';
  command.configureOutput({ writeOut: (s) => (text += s), writeErr: (s) => (text += s) });
  command.outputHelp();
  return text;
}

function optionNamed(command: Command, flag: string): Option | undefined {
  return command.options.find((o) => o.long === flag);
}

const mentions = (text: string, name: string): boolean => new RegExp(`(^|[^A-Z0-9_])${name.replace(/[<>]/g, '\\$&')}($|[^A-Z0-9_])`).test(text);

/**
 * Options that show an env variable in `--help` but have no row in README's table for their command yet. The test
 * fails when one of these gets its row (remove it here then) and when a new one appears.
 */
const NOT_YET_IN_README: readonly string[] = [];

describe('README configuration tables match the registered options', () => {
  const rows = readmeRows();
  const commands = built();

  it('reads the tables (the parser is not blind)', () => {
    assert.ok(rows.length >= 40, `only ${rows.length} rows read`);
    assert.deepEqual(flagsOf('`--[no-]distribute-root-configmap`'), ['--distribute-root-configmap', '--no-distribute-root-configmap']);
    assert.deepEqual(flagsOf('`--ca-source self-signed\\|cacerts\\|vault`'), ['--ca-source']);
    assert.deepEqual(envOf('`ECC_SIGNATURE_ALGORITHM=ECDSA`, `ECC_CURVE=P256\\|P384`'), ['ECC_SIGNATURE_ALGORITHM', 'ECC_CURVE']);
    assert.deepEqual(envOf('`ISTIOD_CUSTOM_HOST` (adds names)'), ['ISTIOD_CUSTOM_HOST']);
    assert.deepEqual(cells('| `--a` | `X` | same | `1\\|2` |'), ['`--a`', '`X`', 'same', '`1\\|2`']);
    for (const name of ['ca', 'agent', 'dev']) assert.ok(rows.some((r) => r.commands.includes(name)), `a table names meshca ${name}`);
  });

  it('every documented flag is an option of its command', () => {
    const missing: string[] = [];
    for (const row of rows) {
      for (const name of row.commands) {
        const command = commands.get(name);
        assert.ok(command, `README.md:${row.line} names meshca ${name}`);
        for (const flag of row.flags) if (!optionNamed(command, flag)) missing.push(`README.md:${row.line}: meshca ${name} has no ${flag}`);
      }
    }
    assert.deepEqual(missing, []);
  });

  it("each flag's --help line shows the environment variables its row gives, and no others", () => {
    const wrong: string[] = [];
    for (const row of rows) {
      for (const name of row.commands) {
        const command = commands.get(name)!;
        const help = command.createHelp();
        for (const flag of row.flags) {
          const option = optionNamed(command, flag);
          if (!option) continue;
          const line = help.optionDescription(option);
          for (const env of row.env) if (!mentions(line, env)) wrong.push(`README.md:${row.line}: meshca ${name} ${flag} --help does not show ${env}: "${line}"`);
          const declared = envOfOption(option);
          // Options defined with a FlagSpec declare their variables: they must be exactly the row's.
          if (declared && [...declared].sort().join() !== [...row.env].sort().join()) {
            wrong.push(`README.md:${row.line}: meshca ${name} ${flag} declares env [${declared.join(', ')}], README says [${row.env.join(', ')}]`);
          }
        }
      }
    }
    assert.deepEqual(wrong, []);
  });

  it('every variable documented without a flag is named in the command --help', () => {
    const unnamed: string[] = [];
    for (const row of rows.filter((r) => r.flags.length === 0)) {
      assert.ok(row.env.length > 0, `README.md:${row.line} has neither a flag nor a variable`);
      for (const name of row.commands) {
        const text = fullHelp(commands.get(name)!);
        for (const env of row.env) if (!mentions(text, env)) unnamed.push(`README.md:${row.line}: meshca ${name} --help does not name ${env}`);
      }
    }
    assert.deepEqual(unnamed, []);
  });

  it('every option that shows an environment variable has its row in README', () => {
    const undocumented: string[] = [];
    // The CA's, the agent's and the operator tools' tables document the whole command; dev only shares the key-source table.
    for (const name of ['ca', 'agent', 'status', 'decisions']) {
      const command = commands.get(name)!;
      for (const option of command.options) {
        const env = envOfOption(option);
        if (!env || env.length === 0 || !option.long) continue;
        if (!rows.some((r) => r.commands.includes(name) && r.flags.includes(option.long!))) undocumented.push(`${name} ${option.long}`);
      }
    }
    assert.deepEqual(undocumented.sort(), [...NOT_YET_IN_README].sort());
  });
});

/** Every .ts file under src/, as [path relative to src/, text]. */
function sources(): [string, string][] {
  const root = path.join(REPO_ROOT, 'src');
  const files = readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  return files.map((f) => [f.split(path.sep).join('/'), readFileSync(path.join(root, f), 'utf8')]);
}

/**
 * The environment variables src/ reads by name: the `env` of a FlagSpec or a Source (`env: 'X'`, `env: ['X', ...]`)
 * and direct reads (`env.X`, `env['X']`). Reads by a computed name are returned separately, as `file: expression`.
 */
export function envReads(files: readonly [string, string][]): { names: Map<string, string>; computed: string[] } {
  const names = new Map<string, string>();
  const computed: string[] = [];
  const add = (name: string, file: string): void => void (names.has(name) || names.set(name, file));
  for (const [file, text] of files) {
    for (const m of text.matchAll(/\benv: '([A-Z][A-Z0-9_]*(?:<NAME>)?)'/g)) add(m[1]!, file);
    for (const m of text.matchAll(/\benv: \[([^\]]*)\]/g)) for (const q of m[1]!.matchAll(/'([A-Z][A-Z0-9_]*(?:<NAME>)?)'/g)) add(q[1]!, file);
    for (const m of text.matchAll(/\benv\.([A-Z][A-Z0-9_]*)\b/g)) add(m[1]!, file);
    for (const m of text.matchAll(/\benv\[\s*'([A-Z][A-Z0-9_]*)'\s*\]/g)) add(m[1]!, file);
    for (const m of text.matchAll(/\benv\[\s*([^\]'\s][^\]]*)\]/g)) computed.push(`${file}: env[${m[1]!}]`);
    for (const m of text.matchAll(/Object\.(?:entries|keys)\((?:process\.)?env\)/g)) computed.push(`${file}: ${m[0]}`);
  }
  return { names, computed };
}

/** Variables read by name that no command's --help names, each with the reason. */
const READ_WITHOUT_HELP: Readonly<Record<string, string>> = {
  MESHCA_DEBUG: 'named in `meshca --help` (the program, not a command; test/cli.test.ts checks it)',
  KUBERNETES_SERVICE_PORT: 'set by Kubernetes in every pod, read with KUBERNETES_SERVICE_HOST to tell in-cluster credentials',
};

/** Reads by a computed name, each with the reason it is not a setting of its own. */
const COMPUTED_READS: Readonly<Record<string, string>> = {
  'config/env.ts: env[source.env]': 'the generic reader; its names come from FlagSpecs and Sources, found above',
  'config/istio-unsupported.ts: env[variable.env]': "the Istio variables meshca ignores, named in ca's and agent's --help",
  'config/agent.ts: Object.entries(env)': 'CA_HEADER_<NAME>, the env of --ca-header',
  'commands/ca.ts: env[WORKER_SLOT_ENV]': 'set by the CA primary for the worker processes it forks, not by users',
  'ca/sources/pkcs11/pkcs11-key.ts: env[variable]': 'the PKCS#11 PIN, from the variable the admin names (the setting is its name)',
};

describe('every variable the code reads is in --help', () => {
  const commands = built();
  const helps = [...commands.values()].map(fullHelp).join('\n');
  const { names, computed } = envReads(sources());

  it('finds the reads (the scanner is not blind)', () => {
    const sample: [string, string][] = [
      ['a.ts', "read(x, env, { flag: '--a', env: 'A_ONE' }); const s = { env: ['B_TWO', 'C_THREE'] }; env.D_FOUR; env['E_FIVE']; env[name]; Object.entries(env)"],
    ];
    const found = envReads(sample);
    assert.deepEqual([...found.names.keys()].sort(), ['A_ONE', 'B_TWO', 'C_THREE', 'D_FOUR', 'E_FIVE']);
    assert.deepEqual(found.computed, ['a.ts: env[name]', 'a.ts: Object.entries(env)']);
    for (const name of ['SECRET_TTL', 'CA_ROOT_CA', 'VAULT_TOKEN', 'KUBECONFIG', 'MESHCA_LOG_FORMAT', 'JWT_POLICY']) assert.ok(names.has(name), `found ${name}`);
    assert.ok(names.size >= 60, `only ${names.size} variables found`);
  });

  it('names each one in the --help of a command', () => {
    const unnamed = [...names].filter(([name]) => !READ_WITHOUT_HELP[name] && !mentions(helps, name)).map(([name, file]) => `${name} (src/${file})`);
    assert.deepEqual(unnamed, []);
  });

  it('reads by a computed name are the known ones', () => {
    assert.deepEqual([...new Set(computed)].sort(), Object.keys(COMPUTED_READS).sort());
  });

  it('every option of meshca ca and meshca agent has an environment variable', () => {
    const missing: string[] = [];
    for (const name of ['ca', 'agent']) {
      for (const option of commands.get(name)!.options) {
        if (option.negate || option.long === '--help') continue;
        if ((envOfOption(option) ?? []).length === 0) missing.push(`meshca ${name} ${option.long}`);
      }
    }
    assert.deepEqual(missing, []);
  });
});

