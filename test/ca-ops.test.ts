/**
 * Operating `meshca ca`: start-up failures end in one line naming what to fix, --plaintext warns, the serving
 * certificate renews without a restart, and an expired signing certificate turns requests into INTERNAL and
 * readiness false (in process, on a fake clock: no test waits for a certificate to expire).
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { connect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { Registry } from 'prom-client';
import { DEV_ISSUER, DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { openSigner } from '../src/ca/index.js';
import { addCaServerOptions, assertCanAuthenticate, readCaServerConfig, type CaServerFlags } from '../src/config/ca.js';
import { createLogger } from '../src/log.js';
import { certificateToPem, createCaCertificate, exportPrivateKeyPem, generateKeyPairFor } from '../src/pki/index.js';
import { startCaServer, type CaServer } from '../src/server/index.js';
import { IstioCaClient } from '../src/wire/protos.js';
import { caClient, cleanEnv, createCertificate, getText, opensslKeyAndCsr, startCa, waitForRecord } from './ca-helpers.js';
import { caStartupError, cliOutcome } from './support/ca-startup.js';
import { makeTempDir, runMeshca } from './support/process.js';
import { opensslVerifyResponseChain } from './support/openssl.js';

const temp = makeTempDir('meshca-ca-ops-');
let issuer: DevTokenIssuer;
let jwtRule: string;

before(async () => {
  issuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'issuer'));
  jwtRule = JSON.stringify({ issuer: DEV_ISSUER, jwks_file: issuer.jwksPath, audiences: ['istio-ca'] });
});
after(() => temp.cleanup());

async function occupiedPort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

describe('start-up failures are one clear line and a non-zero exit', () => {
  test('gRPC port in use names the address and --grpc-addr', async () => {
    const { server, port } = await occupiedPort();
    try {
      const result = await runMeshca(
        ['ca', '--grpc-addr', `127.0.0.1:${port}`, '--monitoring-addr', '127.0.0.1:0', '--state-dir', path.join(temp.dir, 'busy-grpc'), '--ca-key-type', 'ec-p256'],
        { env: cleanEnv({ JWT_RULE: jwtRule }) },
      );
      assert.notEqual(result.code, 0);
      const errorLines = result.stderr.trim().split('\n');
      assert.equal(errorLines.length, 1, result.stderr);
      assert.equal(errorLines[0], `meshca: cannot listen on 127.0.0.1:${port} for the CA gRPC API: the address is already in use; stop the other process or choose another address with --grpc-addr`);
    } finally {
      server.close();
    }
  });

  test('monitoring port in use names --monitoring-addr', async () => {
    const { server, port } = await occupiedPort();
    try {
      const result = await runMeshca(
        ['ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', `127.0.0.1:${port}`, '--state-dir', path.join(temp.dir, 'busy-http'), '--ca-key-type', 'ec-p256'],
        { env: cleanEnv({ JWT_RULE: jwtRule }) },
      );
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, new RegExp(`^meshca: cannot listen on 127\\.0\\.0\\.1:${port} for the monitoring HTTP server: the address is already in use; .*--monitoring-addr\\n$`));
    } finally {
      server.close();
    }
  });

  test('configuration errors name the variable or flag', async () => {
    const state = ['--state-dir', path.join(temp.dir, 'config-errors'), '--ca-key-type', 'ec-p256'];
    // inProcess: the same start-up in this process (support/ca-startup.ts) instead of the real binary, which still
    // runs the other cases: the exit code and the one line that every refusal of the configuration goes through.
    const cases: { args: string[]; env: NodeJS.ProcessEnv; message: RegExp; inProcess?: true }[] = [
      { args: [], env: {}, message: /^meshca: no way to authenticate workloads: give --kubeconfig FILE/ },
      { args: [], env: { JWT_RULE: '{"issuer": 1}' }, message: /^meshca: invalid JWT_RULE: "issuer" must be a non-empty string/, inProcess: true },
      {
        args: [],
        env: { JWT_RULE: jwtRule, MAX_WORKLOAD_CERT_TTL: 'forever' },
        message: /^meshca: invalid --max-workload-cert-ttl \(env MAX_WORKLOAD_CERT_TTL\)="forever"/,
        inProcess: true,
      },
      { args: ['--kubeconfig', path.join(temp.dir, 'missing.yaml')], env: {}, message: /^meshca: kubeconfig .*missing\.yaml does not exist/ },
      {
        args: ['--trusted-node-accounts', 'ztunnel'],
        env: { JWT_RULE: jwtRule },
        message: /CA_TRUSTED_NODE_ACCOUNTS\)="ztunnel": expected namespace\/serviceaccount/,
        inProcess: true,
      },
    ];
    for (const c of cases) {
      const args = ['ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', ...state, ...c.args];
      const result = c.inProcess ? cliOutcome(await caStartupError(args.slice(1), c.env)) : await runMeshca(args, { env: cleanEnv(c.env) });
      assert.equal(result.code, 2, `a configuration error is a usage error: ${result.stderr}`);
      assert.match(result.stderr, c.message);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    }
  });
});

describe('--plaintext and an expiring signing certificate', () => {
  test('plaintext warns; an expired CA certificate gives INTERNAL and readiness false (in process, on a fake clock)', async () => {
    // `meshca ca --plaintext` in process: its own flags and configuration, the key source opened and the server
    // started as src/commands/ca.ts does, but all of them on a clock the test moves. The root expires when the clock
    // passes its NotAfter, not in real time. (The real binary's start-up, exit codes and one-line errors are checked
    // above; the serving and signing paths are the same code in process.)
    let offsetMs = 0;
    const now = (): number => Date.now() + offsetMs;
    const stateDir = path.join(temp.dir, 'expiring');
    const key = generateKeyPairFor('ec-p256').privateKey;
    const expiresAt = now() + 3600_000;
    const rootPem = certificateToPem(createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: key, notAfter: new Date(expiresAt) }));
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(path.join(stateDir, 'ca-key.pem'), exportPrivateKeyPem(key), { mode: 0o600 });
    writeFileSync(path.join(stateDir, 'ca-cert.pem'), rootPem);
    writeFileSync(path.join(stateDir, 'root-cert.pem'), rootPem);

    const command = addCaServerOptions(new Command('ca').exitOverride());
    command.parse(['--plaintext', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', '--state-dir', stateDir], { from: 'user' });
    // Rotation off: with it on (the default), the CA would rotate this short-lived root instead of letting it expire.
    const env = cleanEnv({ JWT_RULE: jwtRule, CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL: '0' });
    const config = readCaServerConfig(command.opts<CaServerFlags>(), env);
    assertCanAuthenticate(config);
    const records: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) records.push(JSON.parse(line) as Record<string, unknown>);
        callback();
      },
    });
    const logger = createLogger({ level: 'info', format: 'json', name: 'meshca-ca', destination });
    const registry = new Registry();
    const signer = await openSigner(config.keySource, logger, { registry, env, now });
    let server: CaServer | undefined;
    let client: IstioCaClient | undefined;
    try {
      server = await startCaServer({ config, signer, logger, registry, env, now });
      client = new IstioCaClient(server.grpcAddress, grpc.credentials.createInsecure());
      const monitoringUrl = `http://${server.monitoringAddress}`;
      const warning = records.find((r) => typeof r.msg === 'string' && r.msg.includes('WITHOUT TLS'));
      assert.ok(warning, 'the --plaintext warning is logged');
      assert.equal(warning.level, 'warn');
      assert.equal(records.find((r) => r.msg === 'CA server ready')?.tls, false);
      const csr = opensslKeyAndCsr(temp.dir, 'plain').csrPem;
      const token = await issuer.mint({ namespace: 'default', serviceAccount: 'plain', audiences: ['istio-ca'], ttlSeconds: 600 });
      const first = await createCertificate(client, { csr, token });
      assert.ok(first.ok, JSON.stringify(first));
      if (first.ok) assert.ok(opensslVerifyResponseChain(first.chain).ok);
      assert.equal((await getText(`${monitoringUrl}/ready`)).status, 200);

      // The signing certificate expires: the clock moves past its NotAfter.
      offsetMs = expiresAt + 60_000 - Date.now();
      const late = await createCertificate(client, { csr, token });
      assert.equal(late.ok, false);
      if (!late.ok) {
        assert.equal(grpc.status[late.code], 'INTERNAL');
        assert.equal(late.details, 'CA certificate has expired');
      }
      // The last good probe is older than the freshness window on this clock, so /ready probes again and fails.
      const ready = await getText(`${monitoringUrl}/ready`);
      assert.equal(ready.status, 503);
      assert.match(ready.body, /CA certificate has expired/);
    } finally {
      client?.close();
      await server?.close();
      await signer.close();
    }
  });
});

describe('serving certificate renewal', () => {
  // The CA runs in namespace mesh-ops (POD_NAMESPACE, as the Deployment sets it): its serving certificate, the first
  // and every renewal, carries that namespace's names, and clients dialing them verify it. EXTERNAL_CA (an istiod
  // variable meshca does not implement) and --log-format json ride along: one CA start.
  test('a new serving certificate, named for POD_NAMESPACE, is used for new connections without a restart', async () => {
    const ca = await startCa(path.join(temp.dir, 'renewal'), ['--server-cert-ttl', '3s', '--log-format', 'json'], {
      JWT_RULE: jwtRule,
      POD_NAMESPACE: 'mesh-ops',
      EXTERNAL_CA: 'ISTIOD_RA_KUBERNETES_API',
    });
    try {
      const ignored = ca.proc.records.filter((r) => r.variable === 'EXTERNAL_CA');
      assert.equal(ignored.length, 1, 'one warning for the unimplemented istiod variable');
      assert.equal(ignored[0]!.level, 'warn', 'the level is a word');
      assert.match(String(ignored[0]!.msg), /^EXTERNAL_CA is set but meshca does not implement it and ignores it: choose the signer with --ca-source/);
      const time = String(ignored[0]!.time);
      assert.equal(new Date(time).toISOString(), time, 'time is ISO-8601');
      const first = await waitForRecord(ca.proc, (r) => r.msg === 'serving certificate issued');
      assert.deepEqual(first.dnsNames, ['meshca.mesh-ops.svc', 'istiod.mesh-ops.svc']);
      const second = await waitForRecord(ca.proc, (r) => r.msg === 'serving certificate issued' && r.serial !== first.serial, 10_000);
      const port = Number(ca.grpcAddress.split(':').pop());
      const serial = await new Promise<string>((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port, servername: 'istiod.mesh-ops.svc', ca: ca.rootPem, ALPNProtocols: ['h2'] }, () => {
          resolve(socket.getPeerCertificate().serialNumber);
          socket.end();
        });
        socket.on('error', reject);
      });
      const served = await waitForRecord(ca.proc, (r) => r.msg === 'serving certificate issued' && String(r.serial).toUpperCase() === serial.toUpperCase());
      assert.notEqual(served.serial, first.serial);
      assert.ok(second.serial);
      // The CA keeps serving with the renewed certificate, to a client that checks it against the name it dials.
      const client = caClient(ca.grpcAddress, ca.rootPem, undefined, 'meshca.mesh-ops.svc');
      try {
        const token = await issuer.mint({ namespace: 'default', serviceAccount: 'renewal', audiences: ['istio-ca'], ttlSeconds: 600 });
        const result = await createCertificate(client, { csr: opensslKeyAndCsr(temp.dir, 'renewal').csrPem, token });
        assert.ok(result.ok, JSON.stringify(result));
      } finally {
        client.close();
      }
    } finally {
      await ca.proc.stop();
    }
  });
});
