/** Flag/env parsing: Istio-named variables, precedence, and errors that name the variable and the bad value. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { readCaServerConfig, usableCpus } from '../src/config/ca.js';
import { ConfigError, parseDurationSeconds, readAddress, readBoolean, readDuration, readEnum, readInteger, readList } from '../src/config/env.js';

describe('config readers', () => {
  it('parses Go-style durations and days; like Go, a number needs a unit except 0', () => {
    assert.equal(parseDurationSeconds('24h'), 86400);
    assert.equal(parseDurationSeconds('1h30m'), 5400);
    assert.equal(parseDurationSeconds('90d'), 90 * 86400);
    assert.equal(parseDurationSeconds('2160h'), 90 * 86400);
    assert.equal(parseDurationSeconds('500ms'), 0.5);
    assert.equal(parseDurationSeconds('3600'), null);
    assert.equal(parseDurationSeconds('1.5'), null);
    assert.equal(parseDurationSeconds('0'), 0);
    assert.equal(parseDurationSeconds('1x'), null);
    assert.equal(parseDurationSeconds('h'), null);
  });

  it('prefers the flag over the environment over the default', () => {
    const source = { flag: '--ttl', env: 'SECRET_TTL' };
    assert.equal(readDuration('1h', { SECRET_TTL: '2h' }, source, 86400), 3600);
    assert.equal(readDuration(undefined, { SECRET_TTL: '2h' }, source, 86400), 7200);
    assert.equal(readDuration(undefined, { SECRET_TTL: '' }, source, 86400), 86400);
  });

  it('names the variable and the bad value', () => {
    assert.throws(() => readDuration(undefined, { SECRET_TTL: 'soon' }, { env: 'SECRET_TTL' }, 1), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.message, 'invalid SECRET_TTL="soon": expected a duration such as 30s, 15m, 24h or 90d');
      return true;
    });
    assert.throws(() => readDuration('24', {}, { flag: '--secret-ttl', env: 'SECRET_TTL' }, 1), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.message, 'invalid --secret-ttl (env SECRET_TTL)="24": expected a duration with a unit (ms, s, m, h, d), e.g. "24h" or "24s"');
      return true;
    });
    assert.throws(() => readInteger(undefined, { WORKLOAD_RSA_KEY_SIZE: '1024' }, { env: 'WORKLOAD_RSA_KEY_SIZE' }, 2048, { min: 2048 }), /invalid WORKLOAD_RSA_KEY_SIZE="1024": expected a whole number >= 2048/);
    assert.throws(() => readBoolean(undefined, { PKCS8_KEY: 'maybe' }, { env: 'PKCS8_KEY' }, false), /invalid PKCS8_KEY="maybe": expected true or false/);
    assert.throws(() => readEnum('x', {}, { flag: '--ca-source', env: 'MESHCA_CA_SOURCE' }, ['self-signed', 'cacerts'] as const, 'self-signed'), /invalid --ca-source \(env MESHCA_CA_SOURCE\)="x": expected one of self-signed, cacerts/);
    assert.throws(() => readAddress('localhost', {}, { flag: '--grpc-addr' }, '0.0.0.0:15012'), /invalid --grpc-addr="localhost": expected host:port/);
  });

  it('reads lists and addresses', () => {
    assert.deepEqual(readList(undefined, { TOKEN_AUDIENCES: 'istio-ca, other,' }, { env: 'TOKEN_AUDIENCES' }, ['x']), ['istio-ca', 'other']);
    assert.deepEqual(readAddress(undefined, {}, { flag: '--grpc-addr' }, '0.0.0.0:15012'), { host: '0.0.0.0', port: 15012, text: '0.0.0.0:15012' });
    assert.deepEqual(readAddress('[::1]:80', {}, { flag: '--a' }, ''), { host: '::1', port: 80, text: '[::1]:80' });
  });
});

describe('meshca ca --workers', () => {
  const read = (workers: string | undefined, env: Record<string, string> = {}): number => readCaServerConfig(workers === undefined ? {} : { workers }, env).workers;

  it('defaults to one process, takes a count from the flag or MESHCA_CA_WORKERS, and refuses nonsense by name', () => {
    assert.equal(read(undefined), 1);
    assert.equal(read('3'), 3);
    assert.equal(read(undefined, { MESHCA_CA_WORKERS: '2' }), 2);
    assert.equal(read('4', { MESHCA_CA_WORKERS: '2' }), 4, 'the flag wins over the variable');
    assert.throws(() => read('0'), (e: Error) => e instanceof ConfigError && /invalid --workers \(env MESHCA_CA_WORKERS\)="0": expected a number of processes from 1 to 64, or auto/.test(e.message));
    assert.throws(() => read(undefined, { MESHCA_CA_WORKERS: 'lots' }), (e: Error) => e instanceof ConfigError && /MESHCA_CA_WORKERS\)="lots": expected a number of processes from 1 to 64, or auto/.test(e.message));
    assert.equal(read('auto'), usableCpus(), 'auto = the CPUs this process may use');
  });

  it('auto follows a cgroup v2 CPU limit, rounded up, and never exceeds the CPUs there are', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'meshca-cpu-max-'));
    try {
      const file = path.join(dir, 'cpu.max');
      writeFileSync(file, '150000 100000\n');
      assert.equal(usableCpus(file), Math.min(2, availableParallelism()), 'a limit of 1.5 CPUs gives 2 workers');
      writeFileSync(file, '50000 100000\n');
      assert.equal(usableCpus(file), 1, 'half a CPU still gives one');
      writeFileSync(file, 'max 100000\n');
      assert.equal(usableCpus(file), availableParallelism(), 'no limit: every CPU');
      writeFileSync(file, `${1000 * 100000} 100000\n`);
      assert.equal(usableCpus(file), availableParallelism(), 'a limit above the machine: every CPU');
      assert.equal(usableCpus(path.join(dir, 'missing')), availableParallelism(), 'no cgroup file: every CPU');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('meshca ca --trust-domain-aliases', () => {
  const read = (flags: { trustDomainAliases?: string; trustDomain?: string }, env: Record<string, string> = {}): readonly string[] =>
    readCaServerConfig(flags, env).trustDomainAliases;
  const refuses = (pattern: RegExp) => (e: Error) => e instanceof ConfigError && pattern.test(e.message) && !e.message.includes('\n');

  it('reads a comma list from the flag or MESHCA_TRUST_DOMAIN_ALIASES (none by default), without repeats', () => {
    assert.deepEqual(read({}), []);
    assert.deepEqual(read({ trustDomainAliases: 'old.td, older.td,old.td' }), ['old.td', 'older.td']);
    assert.deepEqual(read({}, { MESHCA_TRUST_DOMAIN_ALIASES: 'old.td' }), ['old.td']);
    assert.deepEqual(read({ trustDomainAliases: 'a.td' }, { MESHCA_TRUST_DOMAIN_ALIASES: 'old.td' }), ['a.td'], 'the flag wins over the variable');
    assert.deepEqual(read({ trustDomain: 'new.td', trustDomainAliases: 'cluster.local' }), ['cluster.local'], 'the default trust domain can be an alias of a new one');
  });

  it('refuses an invalid trust domain, one with an empty label and the current trust domain, in one line naming the alias', () => {
    assert.throws(
      () => read({ trustDomainAliases: 'old.td,Old.TD' }),
      refuses(/^invalid --trust-domain-aliases \(env MESHCA_TRUST_DOMAIN_ALIASES\)="Old\.TD": expected former SPIFFE trust domains, comma-separated; SPIFFE trust domain "Old\.TD" may contain only lowercase/),
    );
    assert.throws(() => read({}, { MESHCA_TRUST_DOMAIN_ALIASES: 'bad..td' }), refuses(/="bad\.\.td": .*"bad\.\.td" has an empty label: two dots in a row, or a dot at either end$/));
    assert.throws(() => read({ trustDomainAliases: 'spiffe://old.td' }), refuses(/="spiffe:\/\/old\.td": .*may contain only lowercase letters/));
    assert.throws(() => read({ trustDomain: 'new.td', trustDomainAliases: 'new.td' }), refuses(/="new\.td": .*"new\.td" is the current trust domain, not a former one: remove it from the list$/));
  });

  it('an alias is this CA\'s own: --federate-with may not name it', () => {
    assert.throws(
      () => readCaServerConfig({ trustDomainAliases: 'old.td', federateWith: ['old.td=https://old.example/bundle'] }, {}),
      refuses(/^invalid --federate-with="old\.td=https:\/\/old\.example\/bundle": "old\.td" is this CA's own trust domain \(an alias\); federate only with other trust domains$/),
    );
  });
});
