/**
 * Configuration as a user meets it through the built CLI, with commands that stop at once: a duration without a
 * unit is refused in one line naming the flag and its variable, and an Istio variable meshca does not implement
 * gets one warning at start-up, in `--log-format text` one line per event. (The CA's warning and JSON logs are
 * checked on a CA the suite starts anyway, in test/ca-ops.test.ts.)
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { makeTempDir, runMeshca } from './support/process.js';

describe('configuration through the CLI', () => {
  const temp = makeTempDir('meshca-config-cli-');
  after(() => temp.cleanup());

  test('a duration without a unit is refused, naming the flag and the variable and suggesting units', async () => {
    const { code, stdout, stderr } = await runMeshca(['agent'], { cwd: temp.dir, env: { SECRET_TTL: '24' } });
    assert.notEqual(code, 0);
    assert.equal(stdout, '');
    assert.equal(stderr, 'meshca: invalid --secret-ttl (env SECRET_TTL)="24": expected a duration with a unit (ms, s, m, h, d), e.g. "24h" or "24s"\n');
  });

  test('a bad --trust-domain-aliases entry stops meshca ca with exit status 2 and one line naming it', async () => {
    const { code, stdout, stderr } = await runMeshca(['ca', '--trust-domain-aliases', 'old.td,bad..td'], { cwd: temp.dir });
    assert.equal(code, 2);
    assert.equal(stdout, '');
    assert.equal(
      stderr,
      'meshca: invalid --trust-domain-aliases (env MESHCA_TRUST_DOMAIN_ALIASES)="bad..td": expected former SPIFFE trust domains, comma-separated; "bad..td" has an empty label: two dots in a row, or a dot at either end\n',
    );
  });

  test('an Istio agent variable meshca does not implement gets one warning; --log-format text writes one line per event', async () => {
    const { code, stdout, stderr } = await runMeshca(['agent', '--log-format', 'text', '--ca-root-cert', path.join(temp.dir, 'missing.pem')], {
      cwd: temp.dir,
      env: { JWT_POLICY: 'first-party-jwt', PROV_CERT: '/etc/certs', MESHCA_LOG_FORMAT: 'json' },
    });
    assert.notEqual(code, 0, 'it stops at the missing root certificate');
    assert.match(stderr, /missing\.pem/);
    const lines = stdout.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 2, stdout);
    for (const [line, name] of [[lines[0]!, 'JWT_POLICY'], [lines[1]!, 'PROV_CERT']] as const) {
      assert.match(line, new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z WARN  ${name} is set but meshca does not implement it and ignores it: .+ name=agent variable=${name}$`));
    }
    assert.match(lines[0]!, /--token-file/, 'it says what to do instead');
  });
});
