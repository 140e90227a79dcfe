/**
 * The command line loads only the command it runs: `meshca --help` lists every command, `meshca <cmd> --help` and
 * `meshca help <cmd>` show that command's own options, and a node agent never loads the CA's code (a copy of the
 * build without the CA's modules still runs the agent, and only the agent).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { Command } from 'commander';
import { registerAgentCommand } from '../src/commands/agent.js';
import { registerCaCommand } from '../src/commands/ca.js';
import { COMMAND_DESCRIPTIONS } from '../src/commands/descriptions.js';
import { envOfOption } from '../src/config/flags.js';
import { UNSUPPORTED_AGENT_VARIABLES, UNSUPPORTED_CA_VARIABLES, type UnsupportedIstioVariable } from '../src/config/istio-unsupported.js';
import { REPO_ROOT, runMeshca } from './support/process.js';

/** The help printed by the CLI names every variable the command's options declare and the Istio ones it ignores. */
function assertNamesEveryVariable(help: string, register: (program: Command) => void, ignored: readonly UnsupportedIstioVariable[]): void {
  const program = new Command();
  register(program);
  const declared = program.commands[0]!.options.flatMap((o) => envOfOption(o) ?? []);
  assert.ok(declared.length >= 20, `only ${declared.length} variables declared`);
  const missing = [...declared, ...ignored.map((v) => v.env)].filter((name) => !help.includes(name));
  assert.deepEqual(missing, [], 'variables missing from --help');
}

describe('meshca command line', () => {
  const temp = mkdtempSync(path.join(tmpdir(), 'meshca-cli-'));
  after(() => rmSync(temp, { recursive: true, force: true }));

  test('meshca --help names every command with its description', async () => {
    const { code, stdout } = await runMeshca(['--help']);
    assert.equal(code, 0);
    const flat = stdout.replace(/\s+/g, ' ');
    for (const [name, description] of Object.entries(COMMAND_DESCRIPTIONS)) {
      assert.match(stdout, new RegExp(`^  ${name}\\b`, 'm'), `${name} is listed`);
      assert.ok(flat.includes(description.replace(/\s+/g, ' ')), `${name}'s description is shown`);
    }
    assert.match(stdout, /MESHCA_DEBUG=1/, 'the one variable of the program itself');
  });

  test("a command's own help shows its options, however it is asked for", async () => {
    for (const args of [['agent', '--help'], ['help', 'agent']]) {
      const { code, stdout } = await runMeshca(args);
      assert.equal(code, 0, `meshca ${args.join(' ')}`);
      assert.match(stdout, /--sds-socket/, `meshca ${args.join(' ')} lists the agent's options`);
      assertNamesEveryVariable(stdout, registerAgentCommand, UNSUPPORTED_AGENT_VARIABLES);
    }
    const ca = await runMeshca(['ca', '--help']);
    assert.match(ca.stdout, /--workers <n\|auto>/, "meshca ca --help lists the CA's options");
    assertNamesEveryVariable(ca.stdout, registerCaCommand, UNSUPPORTED_CA_VARIABLES);
    const unknown = await runMeshca(['bogus']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command 'bogus'/);
  });

  test('exit status: 2 for a usage error (bad option, argument or setting), 1 for a failure, 0 for help and version', async () => {
    const cases: { args: string[]; code: 0 | 1 | 2; stderr: RegExp }[] = [
      { args: ['agent', '--no-such-flag'], code: 2, stderr: /^error: unknown option '--no-such-flag'/ },
      { args: ['fetch', '--sds-socket'], code: 2, stderr: /^error: option '--sds-socket <path>' argument missing/ },
      { args: ['inspect'], code: 2, stderr: /^error: missing required argument 'file'/ },
      { args: ['token', '--service-account', 'cart'], code: 2, stderr: /^error: required option '--namespace <ns>' not specified/ },
      { args: ['cacerts'], code: 2, stderr: /^Usage: meshca cacerts/ },
      { args: ['agent', '--mode', 'gateway'], code: 2, stderr: /^meshca: invalid --mode \(env MESHCA_AGENT_MODE\)="gateway": expected one of node, sidecar$/m },
      { args: ['inspect', path.join(temp, 'missing.pem')], code: 1, stderr: /^meshca: input file .*missing\.pem does not exist: check the path/ },
      { args: ['--version'], code: 0, stderr: /^$/ },
    ];
    const results = await Promise.all(cases.map((c) => runMeshca(c.args, { env: { MESHCA_LOG_LEVEL: 'silent' } })));
    results.forEach((result, index) => {
      const c = cases[index]!;
      assert.equal(result.code, c.code, `meshca ${c.args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, c.stderr, `meshca ${c.args.join(' ')}`);
    });
  });

  test("the agent runs from a build that lacks the CA's modules; the CA does not", () => {
    // A copy of the build next to the project's dependencies, with the CA command and key sources removed.
    const copy = path.join(temp, 'build');
    cpSync(path.join(REPO_ROOT, 'dist'), path.join(copy, 'dist'), { recursive: true });
    cpSync(path.join(REPO_ROOT, 'package.json'), path.join(copy, 'package.json'));
    cpSync(path.join(REPO_ROOT, 'proto'), path.join(copy, 'proto'), { recursive: true });
    symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(copy, 'node_modules'));
    for (const gone of ['commands/ca.js', 'commands/dev.js', 'ca/sources/vault/vault.js', 'ca/kube-store.js', 'server/index.js']) rmSync(path.join(copy, 'dist', gone));
    // The module tree (tsc's layout, entry dist/cli-modules.js), then the bundle (dist/cli.js, one chunk per command).
    const modules = (args: string[]) => spawnSync(process.execPath, [path.join(copy, 'dist/cli-modules.js'), ...args], { encoding: 'utf8', timeout: 30_000 });
    const agent = modules(['agent', '--help']);
    assert.equal(agent.status, 0, `meshca agent --help without the CA's modules: ${agent.stderr}`);
    assert.match(agent.stdout, /--sds-socket/);
    assert.equal(modules(['--help']).status, 0, 'the command list needs none of them either');
    const ca = modules(['ca', '--help']);
    assert.notEqual(ca.status, 0, 'meshca ca needs its modules (so the check above means something)');

    const caChunks = readdirSync(path.join(copy, 'dist/chunks')).filter((name) => /^(ca|dev)-[A-Z0-9]+\.js$/.test(name));
    assert.equal(caChunks.length, 2, `the bundle has one chunk for meshca ca and one for meshca dev: ${caChunks.join(', ')}`);
    for (const chunk of caChunks) rmSync(path.join(copy, 'dist/chunks', chunk));
    const bundled = (args: string[]) => spawnSync(process.execPath, [path.join(copy, 'dist/cli.js'), ...args], { encoding: 'utf8', timeout: 30_000 });
    const bundledAgent = bundled(['agent', '--help']);
    assert.equal(bundledAgent.status, 0, `the bundled agent without the CA's chunks: ${bundledAgent.stderr}`);
    assert.notEqual(bundled(['ca', '--help']).status, 0, 'the bundled meshca ca needs its chunk');
  });
});
