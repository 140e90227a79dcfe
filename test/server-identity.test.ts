/**
 * SECURITY.md: clients of the CA recognise it by a DNS subjectAltName only, never by the subject CN. Every workload
 * leaf chains to the same mesh root as the CA's serving certificate, so Node's default check (which falls back to
 * the CN when a certificate has no DNS SAN) would accept a workload certificate with CN=<the CA's name> as the CA.
 * A fake CA presents such a certificate, made by openssl and signed by the trusted root; the agent's CA client and
 * `meshca request` must refuse it during the handshake, so the fake never sees a call or a bearer token. The same
 * fake with a DNS SAN certificate does receive the call (the test can fail).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { GrpcCaClient } from '../src/agent/ca-client.js';
import { createLogger } from '../src/log.js';
import { createCsr, generateKeyPairFor } from '../src/pki/index.js';
import { checkServerIdentityBySan, dnsNameMatches } from '../src/pki/server-identity.js';
import { istioCaService, type IstioCertificateRequest } from '../src/wire/protos.js';
import { CLI, makeTempDir } from './support/process.js';

const SERVER_NAME = 'meshca.istio-system.svc';
const TOKEN = 'header.payload.signature-of-a-workload';

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' });
}

/** A server key and certificate signed by the test root, with `subject` and the given extension lines. */
function serverCertificate(dir: string, name: string, subject: string, extensions: string): { key: string; cert: string } {
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`], dir);
  openssl(['req', '-new', '-key', `${name}.key`, '-subj', subject, '-out', `${name}.csr`], dir);
  writeFileSync(path.join(dir, `${name}.ext`), `${extensions}\n`);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'root.pem', '-CAkey', 'root.key', '-set_serial', String(Date.now()), '-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.pem`], dir);
  return { key: readFileSync(path.join(dir, `${name}.key`), 'utf8'), cert: readFileSync(path.join(dir, `${name}.pem`), 'utf8') };
}

interface FakeCa {
  port: number;
  calls: number;
  authorizations: string[];
  close(): void;
}

/** A CA that records every call and authorization header it receives, and answers UNAVAILABLE. */
async function startFakeCa(identity: { key: string; cert: string }): Promise<FakeCa> {
  const server = new grpc.Server();
  const fake: FakeCa = { port: 0, calls: 0, authorizations: [], close: () => server.forceShutdown() };
  server.addService(istioCaService, {
    CreateCertificate: (call: grpc.ServerUnaryCall<IstioCertificateRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      fake.calls++;
      for (const value of call.metadata.get('authorization')) fake.authorizations.push(String(value));
      callback({ code: grpc.status.UNAVAILABLE, details: 'fake CA' });
    },
  });
  fake.port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      '127.0.0.1:0',
      grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(identity.key), cert_chain: Buffer.from(identity.cert) }]),
      (error, port) => (error ? reject(error) : resolve(port)),
    ),
  );
  return fake;
}

describe('the CA is recognised by a DNS SAN, never by its CN', () => {
  const temp = makeTempDir('meshca-server-identity-');
  const logger = createLogger({ level: 'silent', format: 'json' });
  let cnOnly: FakeCa;
  let cnAndUri: FakeCa;
  let withDnsSan: FakeCa;
  const csrPem = createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey, uris: ['spiffe://cluster.local/ns/default/sa/app'] });

  before(async () => {
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'root.key'], temp.dir);
    openssl(['req', '-new', '-x509', '-key', 'root.key', '-subj', '/O=mesh root', '-days', '1', '-out', 'root.pem'], temp.dir);
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'other-root.key'], temp.dir);
    openssl(['req', '-new', '-x509', '-key', 'other-root.key', '-subj', '/O=another root', '-days', '1', '-out', 'other-root.pem'], temp.dir);
    cnOnly = await startFakeCa(serverCertificate(temp.dir, 'cn-only', `/CN=${SERVER_NAME}`, 'basicConstraints=critical,CA:FALSE'));
    cnAndUri = await startFakeCa(
      serverCertificate(temp.dir, 'cn-uri', `/CN=${SERVER_NAME}`, 'basicConstraints=critical,CA:FALSE\nsubjectAltName=critical,URI:spiffe://cluster.local/ns/default/sa/app'),
    );
    withDnsSan = await startFakeCa(serverCertificate(temp.dir, 'dns', '/O=meshca', `basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:${SERVER_NAME}`));
  });

  after(() => {
    cnOnly?.close();
    cnAndUri?.close();
    withDnsSan?.close();
    temp.cleanup();
  });

  function agentClient(port: number, options: { serverName?: string; rootFile?: string } = {}, log = logger): GrpcCaClient {
    const rootFile = options.rootFile ?? 'root.pem';
    return new GrpcCaClient(
      { address: `127.0.0.1:${port}`, rootCertPath: rootFile, serverName: options.serverName ?? SERVER_NAME, certSigner: '', extraHeaders: {} },
      readFileSync(path.join(temp.dir, rootFile)),
      log,
    );
  }

  async function agentCall(port: number, options: { serverName?: string; rootFile?: string } = {}): Promise<{ ok: boolean; message: string }> {
    const client = agentClient(port, options);
    try {
      await client.createCertificate({ csrPem, token: TOKEN, ttlSeconds: 600 });
      return { ok: true, message: '' };
    } catch (error) {
      return { ok: false, message: (error as Error).message };
    } finally {
      client.close();
    }
  }

  test('RFC 6125 DNS matching without a CN: exact, case-insensitive, one whole-label wildcard', () => {
    assert.ok(dnsNameMatches('meshca.istio-system.svc', 'MESHCA.istio-system.svc.'));
    assert.ok(dnsNameMatches('meshca.istio-system.svc', '*.istio-system.svc'));
    assert.ok(!dnsNameMatches('a.meshca.istio-system.svc', '*.istio-system.svc'), 'a wildcard covers one label');
    assert.ok(!dnsNameMatches('istio-system.svc', '*.istio-system.svc'));
    assert.ok(!dnsNameMatches('meshca.svc', '*.svc'), 'no wildcard directly under a one-label suffix');
    assert.ok(!dnsNameMatches('meshca.istio-system.svc', 'mesh*.istio-system.svc'), 'no partial-label wildcard');
    assert.ok(!dnsNameMatches('meshca.istio-system.svc', 'meshca.*.svc'));
    assert.ok(!dnsNameMatches('meshca.istio-system.svc', 'meshca.istio-system.svc.evil'));
  });

  test('the check itself: a CN-only certificate is refused with one line naming the host; a DNS SAN passes', () => {
    const der = (name: string): Buffer => Buffer.from(readFileSync(path.join(temp.dir, `${name}.pem`), 'utf8').replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const refused = checkServerIdentityBySan(SERVER_NAME, der('cn-only'));
    assert.ok(refused);
    assert.equal(
      refused.message,
      `the server certificate does not name "${SERVER_NAME}" in a subjectAltName (it names no DNS name or IP; a subject CN is never accepted): dial the CA by one of its DNS names or set the server name to one`,
    );
    assert.match(checkServerIdentityBySan(SERVER_NAME, der('cn-uri'))!.message, /does not name/);
    assert.equal(checkServerIdentityBySan(SERVER_NAME, der('dns')), undefined);
    // Node's own check accepts the CN-only certificate: what this module exists to prevent.
    const nodeCheck = spawnSync(process.execPath, [
      '-e',
      `const tls=require('tls');const {X509Certificate}=require('crypto');const c=new X509Certificate(require('fs').readFileSync(${JSON.stringify(path.join(temp.dir, 'cn-only.pem'))}));console.log(tls.checkServerIdentity(${JSON.stringify(SERVER_NAME)}, {subject:{CN:${JSON.stringify(SERVER_NAME)}}})===undefined)`,
    ]);
    assert.equal(nodeCheck.stdout.toString().trim(), 'true', 'Node falls back to the CN');
  });

  test("the agent's CA client refuses a CA whose certificate has the name only as CN; no call and no token reach it", async () => {
    for (const fake of [cnOnly, cnAndUri]) {
      const result = await agentCall(fake.port);
      assert.equal(result.ok, false);
      assert.match(result.message, /not valid for the name "meshca\.istio-system\.svc" \(it has no DNS name or IP; a subject CN is never accepted\)/);
      assert.equal(fake.calls, 0, 'the fake CA received no call');
      assert.deepEqual(fake.authorizations, [], 'the bearer token never reached the fake CA');
    }
    // Control: a certificate with the DNS SAN is accepted and the call (with the token) arrives.
    const control = await agentCall(withDnsSan.port);
    assert.equal(control.ok, false);
    assert.match(control.message, /fake CA/);
    assert.equal(withDnsSan.calls, 1);
    assert.deepEqual(withDnsSan.authorizations, [`Bearer ${TOKEN}`]);
  });

  test('a CA certificate from another root, or for another name, is named in one line that says what to set', async () => {
    const wrongRoot = await agentCall(withDnsSan.port, { rootFile: 'other-root.pem' });
    assert.equal(wrongRoot.ok, false);
    assert.equal(
      wrongRoot.message,
      `UNAVAILABLE: the CA at 127.0.0.1:${withDnsSan.port} presented a certificate (issued by "O=mesh root") that is not signed by the root in other-root.pem (CA_ROOT_CA/--ca-root-cert): point CA_ROOT_CA/--ca-root-cert at the mesh root (kubectl -n istio-system get cm istio-ca-root-cert -o jsonpath='{.data.root-cert\\.pem}')`,
    );
    const wrongName = await agentCall(withDnsSan.port, { serverName: 'istiod.elsewhere.svc' });
    assert.equal(
      wrongName.message,
      `UNAVAILABLE: the CA at 127.0.0.1:${withDnsSan.port} presented a certificate not valid for the name "istiod.elsewhere.svc" (it has name ${SERVER_NAME}; a subject CN is never accepted): set ISTIOD_SAN/--istiod-san to one of its names or fix CA_ADDR/--ca-addr`,
    );
    // The agent says so while it waits for the CA, as an error, and keeps backing off.
    const lines: string[] = [];
    const client = agentClient(withDnsSan.port, { rootFile: 'other-root.pem' }, pino({ level: 'info' }, { write: (line: string) => lines.push(line) }));
    const waiting = new AbortController();
    const reached = client.waitUntilReachable(waiting.signal).catch(() => undefined);
    try {
      for (let waited = 0; !lines.some((line) => line.includes('cannot connect to the CA over TLS')); waited += 20) {
        assert.ok(waited < 15_000, `no TLS diagnosis logged: ${lines.join('')}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    } finally {
      waiting.abort(new Error('test over'));
      await reached;
      client.close();
    }
    const record = JSON.parse(lines.find((line) => line.includes('cannot connect to the CA over TLS'))!) as { level: number; err: string };
    assert.equal(record.level, 50);
    assert.match(record.err, /is not signed by the root in other-root\.pem \(CA_ROOT_CA\/--ca-root-cert\)/);
    assert.equal(withDnsSan.calls, 1, 'only the control call of the previous test arrived');
  });

  const runRequest = (port: number, extra: string[] = [], options: { serverName?: string | null; env?: NodeJS.ProcessEnv } = {}): Promise<{ status: number | null; stderr: string }> =>
    // Asynchronously: the fake CAs live in this process and must keep answering while the command runs.
    new Promise((resolve) => {
      const tokenFile = path.join(temp.dir, 'token');
      writeFileSync(tokenFile, TOKEN);
      const child = spawn(
        process.execPath,
        [CLI, 'request', '--ca-addr', `127.0.0.1:${port}`, '--root-cert', path.join(temp.dir, 'root.pem'), ...(options.serverName === null ? [] : ['--server-name', options.serverName ?? SERVER_NAME]), '--token-file', tokenFile, '--identity', 'spiffe://cluster.local/ns/default/sa/app', '--out', path.join(temp.dir, 'out'), '--timeout', '15s', ...extra],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MESHCA_DEBUG: '', ...options.env } },
      );
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      child.on('close', (status) => resolve({ status, stderr }));
    });

  test('`meshca request` against a CA with another root or name exits with that one line', async () => {
    const [wrongRoot, wrongName] = await Promise.all([
      runRequest(withDnsSan.port, ['--root-cert', path.join(temp.dir, 'other-root.pem')]),
      runRequest(withDnsSan.port, ['--server-name', 'istiod.elsewhere.svc']),
    ]);
    assert.equal(wrongRoot.status, 1);
    assert.equal(
      wrongRoot.stderr,
      `meshca: the CA at 127.0.0.1:${withDnsSan.port} presented a certificate (issued by "O=mesh root") that is not signed by the root in ${path.join(temp.dir, 'other-root.pem')} (--root-cert): point --root-cert at the mesh root (kubectl -n istio-system get cm istio-ca-root-cert -o jsonpath='{.data.root-cert\\.pem}')\n`,
    );
    assert.equal(wrongName.status, 1);
    assert.equal(
      wrongName.stderr,
      `meshca: the CA at 127.0.0.1:${withDnsSan.port} presented a certificate not valid for the name "istiod.elsewhere.svc" (it has name ${SERVER_NAME}; a subject CN is never accepted): set --server-name to one of its names or fix --ca-addr\n`,
    );
    assert.equal(withDnsSan.calls, 1, 'no call reached the CA');
  });

  test("Node's deprecation warnings (grpc-js sends an IP address as TLS server name: DEP0123) are dropped unless MESHCA_DEBUG=1", async () => {
    const [quiet, debug] = await Promise.all([
      runRequest(withDnsSan.port, [], { serverName: null }),
      runRequest(withDnsSan.port, [], { serverName: null, env: { MESHCA_DEBUG: '1' } }),
    ]);
    assert.equal(quiet.status, 1);
    assert.equal(
      quiet.stderr,
      `meshca: the CA at 127.0.0.1:${withDnsSan.port} presented a certificate not valid for the name "127.0.0.1" (it has name ${SERVER_NAME}; a subject CN is never accepted): set --server-name to one of its names or fix --ca-addr\n`,
    );
    assert.match(debug.stderr, /DEP0123\] DeprecationWarning: Setting the TLS ServerName to an IP address/, 'the warning does occur: the test can fail');
  });

  test('`meshca request` refuses it too, before sending the token', async () => {
    const run = (port: number): Promise<{ status: number | null; stderr: string }> => runRequest(port);
    const before = withDnsSan.calls;
    for (const fake of [cnOnly, cnAndUri]) {
      const result = await run(fake.port);
      assert.notEqual(result.status, 0);
      assert.match(result.stderr, /not valid for the name "meshca\.istio-system\.svc" \(it has no DNS name or IP; a subject CN is never accepted\)/, result.stderr);
      assert.equal(fake.calls, 0);
      assert.deepEqual(fake.authorizations, []);
    }
    const control = await run(withDnsSan.port);
    assert.notEqual(control.status, 0);
    assert.match(control.stderr, /UNAVAILABLE: fake CA/, control.stderr);
    assert.equal(withDnsSan.calls, before + 1);
    assert.equal(withDnsSan.authorizations.at(-1), `Bearer ${TOKEN}`);
  });
});
