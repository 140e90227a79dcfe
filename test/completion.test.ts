/**
 * `meshca completion`: the bash script it prints is valid bash and, sourced into a real bash with COMP_WORDS set
 * the way bash's programmable completion sets them, completes commands, subcommands and each command's options.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { Command, Option } from 'commander';
import { completionScript } from '../src/commands/completion.js';
import { makeTempDir, runMeshca } from './support/process.js';

describe('meshca completion', () => {
  const temp = makeTempDir('meshca-completion-');
  after(() => temp.cleanup());

  test('the bash script is valid and completes commands, subcommands and options in a real bash', async () => {
    const generated = await runMeshca(['completion', 'bash']);
    assert.equal(generated.code, 0, generated.stderr);
    const script = path.join(temp.dir, 'meshca.bash');
    writeFileSync(script, generated.stdout);
    const syntax = spawnSync('bash', ['-n', script], { encoding: 'utf8' });
    assert.equal(syntax.status, 0, `bash -n: ${syntax.stderr}`);

    // Each line: the words typed so far (the last one is being completed), then what bash offers.
    const cases: [string[], string][] = [
      [['meshca', 'ag'], 'agent'],
      [['meshca', 'agent', '--ca-'], '--ca-addr --ca-root-cert --ca-header'],
      [['meshca', 'cacerts', 'in'], 'intermediate'],
      [['meshca', 'cacerts', 'root', '--o'], '--out --org'],
      // An option's value is not taken for a command: `ca` here is the socket path, and agent's options follow.
      [['meshca', 'agent', '--sds-socket', 'ca', '--mo'], '--mode'],
      // The value of an option is left to the shell's default (file names): nothing from meshca.
      [['meshca', 'fetch', '--out', ''], ''],
      [['meshca', 'comp'], 'completion'],
    ];
    const program = [
      `source ${JSON.stringify(script)}`,
      ...cases.map(([words]) => {
        const quoted = words.map((word) => `'${word}'`).join(' ');
        return `COMP_WORDS=(${quoted}); COMP_CWORD=${words.length - 1}; _meshca; echo "\${COMPREPLY[*]}"`;
      }),
      // It is registered for the meshca command.
      'complete -p meshca',
    ].join('\n');
    const run = spawnSync('bash', ['--norc', '--noprofile', '-c', program], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stderr, '');
    const lines = run.stdout.split('\n');
    cases.forEach(([words, expected], index) => assert.equal(lines[index], expected, `completing: ${words.join(' ')}`));
    assert.equal(lines[cases.length], 'complete -o default -F _meshca meshca');
  });

  test('zsh and fish scripts, from the same commands (in process: a small program loads no meshca command)', () => {
    const program = new Command('meshca').option('-v, --verbose', 'say more');
    program.command('serve').description("the server's part").option('--addr <host:port>', 'where to listen').addOption(new Option('--mode <m>', 'how').choices(['a', 'b']));
    const nested = program.command('keys').description('key tools');
    nested.command('make').description('make a key').option('--out <dir>', 'where');
    const zsh = completionScript('zsh', program);
    assert.match(zsh, /^#compdef meshca\n/);
    assert.match(zsh, /bashcompinit/);
    assert.match(zsh, /^ {4}"keys"\) echo "make" ;;$/m);
    assert.match(zsh, /^ {4}"serve\|--mode"\) echo "a b" ;;$/m);
    assert.match(zsh, /^complete -o default -F _meshca meshca$/m);
    assert.deepEqual(completionScript('fish', program).split('\n').slice(2, 13), [
      'complete -c meshca -f',
      "complete -c meshca -n '__fish_use_subcommand' -a serve -d 'the server\\'s part'",
      "complete -c meshca -n '__fish_use_subcommand' -a keys -d 'key tools'",
      "complete -c meshca -n '__fish_use_subcommand' -l verbose -s v -d 'say more'",
      "complete -c meshca -n '__fish_use_subcommand' -l help -s h -d 'display help for command'",
      "complete -c meshca -n '__fish_seen_subcommand_from serve' -l addr -r -F -d 'where to listen'",
      "complete -c meshca -n '__fish_seen_subcommand_from serve' -l mode -x -a 'a b' -d 'how'",
      "complete -c meshca -n '__fish_seen_subcommand_from serve' -l help -s h -d 'display help for command'",
      "complete -c meshca -n '__fish_seen_subcommand_from keys; and not __fish_seen_subcommand_from make' -a make -d 'make a key'",
      "complete -c meshca -n '__fish_seen_subcommand_from keys; and not __fish_seen_subcommand_from make' -l help -s h -d 'display help for command'",
      "complete -c meshca -n '__fish_seen_subcommand_from make' -l out -r -F -d 'where'",
    ]);
  });

  test('another shell is a usage error', async () => {
    const other = await runMeshca(['completion', 'tcsh']);
    assert.equal(other.code, 2);
    assert.match(other.stderr, /^error: command-argument value 'tcsh' is invalid for argument 'shell'\. Allowed choices are bash, zsh, fish\./);
  });
});
