/**
 * `meshca token` and `meshca dev`: a newcomer runs `meshca dev`, copies the example it prints, and gets a
 * certificate for spiffe://cluster.local/ns/default/sa/demo that OpenSSL verifies against the dev root.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import * as jose from 'jose';
import { cleanEnv, opensslFacts } from './ca-helpers.js';
import { makeTempDir, runMeshca, startMeshca } from './support/process.js';
import { opensslVerify } from './support/openssl.js';

const temp = makeTempDir('meshca-dev-');
after(() => temp.cleanup());

test('meshca token prints a service-account-shaped JWT that verifies with the dev JWKS', async () => {
  const stateDir = path.join(temp.dir, 'token-state');
  // A directory without a dev issuer is refused: a new issuer's tokens would fail at every CA.
  const refused = await runMeshca(['token', '--namespace', 'shop', '--service-account', 'cart', '--state-dir', stateDir], { env: cleanEnv() });
  assert.equal(refused.code, 1);
  assert.equal(
    refused.stderr,
    `meshca: no dev issuer in ${stateDir} (no dev-jwt-key.pem): run \`meshca dev --state-dir ${stateDir}\` first, or pass --init to create an issuer there (a CA must then trust ${path.join(stateDir, 'dev-jwks.json')})\n`,
  );
  assert.equal(refused.stdout, '');
  const result = await runMeshca(['token', '--init', '--namespace', 'shop', '--service-account', 'cart', '--ttl', '10m', '--state-dir', stateDir], { env: cleanEnv() });
  assert.equal(result.code, 0, result.stderr);
  const token = result.stdout.trim();
  const jwks = jose.createLocalJWKSet(JSON.parse(readFileSync(path.join(stateDir, 'dev-jwks.json'), 'utf8')) as jose.JSONWebKeySet);
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, { issuer: 'https://meshca.dev.local', audience: 'istio-ca' });
  assert.equal(protectedHeader.alg, 'ES256');
  assert.equal(payload.sub, 'system:serviceaccount:shop:cart');
  assert.deepEqual((payload['kubernetes.io'] as { namespace: string }).namespace, 'shop');
  assert.equal((payload['kubernetes.io'] as { serviceaccount: { name: string } }).serviceaccount.name, 'cart');
  assert.equal(payload.exp! - payload.iat!, 600);
  assert.equal(statSync(path.join(stateDir, 'dev-jwt-key.pem')).mode & 0o777, 0o600);

  // The same key is reused: a second token verifies with the same JWKS.
  const again = await runMeshca(['token', '--namespace', 'shop', '--service-account', 'cart', '--audience', 'a,b', '--state-dir', stateDir], { env: cleanEnv() });
  const second = await jose.jwtVerify(again.stdout.trim(), jwks, { audience: 'b' });
  assert.deepEqual(second.payload.aud, ['a', 'b']);

  const bad = await runMeshca(['token', '--namespace', 'Shop_1', '--service-account', 'cart', '--state-dir', stateDir], { env: cleanEnv() });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^meshca: invalid namespace "Shop_1": use lowercase letters, digits and "-"/);
});

test('meshca dev prints where everything is and an example that gets a demo certificate', async () => {
  const workdir = path.join(temp.dir, 'dev-cwd');
  execFileSync('mkdir', ['-p', workdir]);
  const dev = startMeshca(['dev', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', '--status-addr', '127.0.0.1:0', '--ca-key-type', 'ec-p256'], {
    cwd: workdir,
    env: cleanEnv(),
  });
  try {
    const ready = await dev.waitForLog(/^meshca dev ready$/, 30_000);
    assert.ok(Array.isArray(ready.components) && ready.components.includes('ca') && ready.components.includes('agent'), JSON.stringify(ready));
    const output = dev.lines.join('\n');
    assert.match(output, /CA gRPC API \(TLS\)\s+localhost:\d+/);
    assert.match(output, /monitoring HTTP\s+http:\/\/127\.0\.0\.1:\d+/);
    const rootPath = path.join(workdir, '.meshca', 'root-cert.pem');
    assert.ok(output.includes(rootPath), 'prints the root certificate path');
    assert.match(output, /Get a certificate for spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo:/);

    // Run the example exactly as printed, in the directory meshca dev runs in.
    const example = dev.lines.filter((line) => /^ {2}node .*(token|request|inspect) /.test(line)).map((line) => line.trim());
    assert.equal(example.length, 3, output);
    const outputs = example.map((command) => execFileSync('bash', ['-c', command], { cwd: workdir, encoding: 'utf8', env: cleanEnv() }));
    assert.match(outputs[1]!, /issued spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo/);
    assert.match(outputs[2]!, /chain: verifies/);

    const certDir = path.join(workdir, '.meshca', 'demo');
    const chainPem = readFileSync(path.join(certDir, 'cert-chain.pem'), 'utf8');
    const verified = opensslVerify(chainPem, '', readFileSync(rootPath, 'utf8'));
    assert.ok(verified.ok, verified.output);
    assert.match(opensslFacts(chainPem).text, /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo/);
    assert.equal(statSync(path.join(certDir, 'key.pem')).mode & 0o777, 0o600);

    // The SDS example: the node agent serves the same identity (key, chain, trust bundle) as Envoy would get it.
    assert.match(output, /SDS socket \(agent\)\s+\.meshca\/sds\.sock/);
    const fetchLine = dev.lines.filter((line) => /^ {2}node .* fetch /.test(line)).map((line) => line.trim());
    assert.equal(fetchLine.length, 1, output);
    const fetched = execFileSync('bash', ['-c', fetchLine[0]!], { cwd: workdir, encoding: 'utf8', env: cleanEnv() });
    assert.match(fetched, /# default: spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo serial [0-9a-f]+/);
    assert.match(fetched, /# ROOTCA/);
    // The key arrived but is not printed unless asked for (--show-key).
    assert.ok(fetched.includes('[private key hidden: use --show-key to print it, or --out DIR to write it to key.pem (0600)]'), fetched);
    assert.doesNotMatch(fetched, /PRIVATE KEY-----/);

    assert.equal(await dev.stop('SIGTERM', 15_000), 0);
    await dev.waitForLog(/^meshca dev stopped$/, 1000);
  } finally {
    await dev.stop('SIGKILL');
  }
});

test('meshca dev with a plugged-in cacerts directory: the agent trusts the bundle and serves workloads', async () => {
  const workdir = path.join(temp.dir, 'dev-cacerts');
  execFileSync('mkdir', ['-p', workdir]);
  for (const args of [
    ['cacerts', 'root', '--out', 'offline-root', '--key', 'ec-p256'],
    ['cacerts', 'intermediate', '--root', 'offline-root', '--out', 'etc/cacerts', '--cluster', 'dev', '--key', 'ec-p256'],
  ]) {
    const result = await runMeshca(args, { cwd: workdir, env: cleanEnv() });
    assert.equal(result.code, 0, result.stderr);
  }
  const dev = startMeshca(['dev', '--ca-source', 'cacerts', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', '--status-addr', '127.0.0.1:0'], {
    cwd: workdir,
    env: cleanEnv(),
  });
  try {
    await dev.waitForLog(/^meshca dev ready$/, 30_000);
    const bundlePath = path.join(workdir, '.meshca', 'trust-bundle.pem');
    assert.ok(dev.lines.join('\n').includes(bundlePath), 'prints the trust bundle path');
    const token = await runMeshca(['token', '--namespace', 'default', '--service-account', 'demo'], { cwd: workdir, env: cleanEnv() });
    const out = path.join(workdir, 'fetched');
    execFileSync('bash', ['-c', `cat > .meshca/demo.jwt`], { cwd: workdir, input: token.stdout });
    const fetched = await runMeshca(['fetch', '--sds-socket', '.meshca/sds.sock', '--token-file', '.meshca/demo.jwt', '--out', out], { cwd: workdir, env: cleanEnv() });
    assert.equal(fetched.code, 0, fetched.stderr);
    const chain = readFileSync(path.join(out, 'cert-chain.pem'), 'utf8');
    const [leaf, ...rest] = chain.split(/(?<=-----END CERTIFICATE-----\n)/);
    const verified = opensslVerify(leaf!, rest.join(''), readFileSync(path.join(workdir, 'offline-root', 'root-cert.pem'), 'utf8'));
    assert.ok(verified.ok, verified.output);
  } finally {
    await dev.stop('SIGKILL');
  }
});
