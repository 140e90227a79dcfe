/**
 * `meshca ca --workers N`: one primary process that owns the key source, the TokenReview cache and monitoring,
 * and N worker processes sharing the gRPC port. Checked from outside: every connection is served and what it
 * gets verifies with openssl; the work is spread over the workers; one token costs one TokenReview however
 * many workers see it; /metrics sums the processes; a reloaded cacerts reaches every worker; a killed worker
 * is replaced; start-up failures are one line; SIGTERM stops every process.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createServer, type Server } from 'node:net';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { IstioCaClient, TrustBundleServiceClient, type TrustBundleSetMessage } from '../src/wire/protos.js';
import { createCertificate, getText, metricValue, opensslKeyAndCsr, SERVER_NAME, type CallResult, type KeyAndCsr } from './ca-helpers.js';
import { eventually, expectStartFailure, istioFiles, makeChain, startCaProcess, writeSecretVolume, type StartedCa } from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { ISTIO_WORKLOAD_ROLE, startVaultStandin, type VaultStandin } from './standins/vault.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir, type LogRecord } from './support/process.js';

function assertOk(result: CallResult, what: string): string[] {
  if (!result.ok) assert.fail(`${what}: expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

/** Pids of the processes a primary forked, read from Linux's /proc. */
async function childPids(pid: number): Promise<number[]> {
  const { readFileSync, readdirSync } = await import('node:fs');
  const pids: number[] = [];
  for (const thread of readdirSync(`/proc/${pid}/task`)) {
    try {
      pids.push(...readFileSync(`/proc/${pid}/task/${thread}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
    } catch {
      // The thread ended meanwhile.
    }
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const auditWorkers = (records: readonly LogRecord[]): Set<number> =>
  new Set(records.filter((r) => r.msg === 'certificate issued' && typeof r.worker === 'number').map((r) => r.worker as number));

describe('meshca ca --workers', () => {
  const temp = makeTempDir('meshca-ca-workers-');
  let kube: KubeStandin;
  let workload: KeyAndCsr;
  const running: StartedCa[] = [];
  const clients: IstioCaClient[] = [];

  before(async () => {
    kube = await startKubeStandin();
    workload = opensslKeyAndCsr(temp.dir, 'workload');
  });

  let stopVault: (() => Promise<unknown>) | undefined;

  after(async () => {
    for (const client of clients) client.close();
    await Promise.all(running.map((ca) => ca.proc.stop('SIGKILL')));
    await stopVault?.();
    await kube.close();
    temp.cleanup();
  });

  /** A client per connection: the cluster module hands out connections, not calls. */
  const connect = (ca: StartedCa, rootPem: string, count: number): IstioCaClient[] => {
    const made = Array.from(
      { length: count },
      (_, i) =>
        // Distinct channel arguments keep grpc-js from sharing one connection between the clients.
        new IstioCaClient(ca.grpcAddress, grpc.credentials.createSsl(Buffer.from(rootPem)), {
          'grpc.ssl_target_name_override': SERVER_NAME,
          'grpc.default_authority': SERVER_NAME,
          'meshca.test.connection': i,
        }),
    );
    clients.push(...made);
    return made;
  };

  test('two workers share the port and the load; one TokenReview per token; /metrics, /ready, /debug/ca and /debug/decisions speak for all; a killed worker is replaced', async () => {
    const dir = path.join(temp.dir, 'volume');
    const a = await makeChain('ec', 2, 'workers-a');
    const b = await makeChain('ec', 3, 'workers-b');
    await writeSecretVolume(dir, istioFiles(a));
    const ca = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--workers', '2', '--state-dir', path.join(temp.dir, 'state')], { ROOT_CA_DIR: dir });
    running.push(ca);
    assert.equal(ca.ready.workers, 2, '"CA server ready" names the number of workers');
    const monitoring = `http://${String(ca.ready.monitoringAddress)}`;
    const rootsPem = `${a.root.pem}\n${b.root.pem}\n`;
    const conns = connect(ca, rootsPem, 8);

    // One token used over eight connections, twice each: the workers share the primary's review.
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'shared', ttlSeconds: 3600 });
    const reviewsBefore = kube.state.requests.filter((r) => r.path.endsWith('/tokenreviews')).length;
    for (let round = 0; round < 2; round++) {
      const results = await Promise.all(conns.map((client) => createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 3600 })));
      for (const [i, result] of results.entries()) {
        const chain = assertOk(result, `connection ${i}, round ${round}`);
        const verified = opensslVerifyResponseChain(chain);
        assert.equal(verified.ok, true, `openssl verify of connection ${i}'s chain: ${verified.output}`);
        assert.match(chain[0]!, /BEGIN CERTIFICATE/);
      }
    }
    // Agents watch the trust bundles on the same port: each worker serves the primary's set (own roots, no federation).
    const sets = await Promise.all(
      conns.slice(0, 4).map(
        (client) =>
          new Promise<TrustBundleSetMessage>((resolve, reject) => {
            const watch = new TrustBundleServiceClient(ca.grpcAddress, grpc.credentials.createInsecure(), { channelOverride: client.getChannel() }).WatchTrustBundles({});
            watch.once('data', (set: TrustBundleSetMessage) => {
              resolve(set);
              watch.cancel();
            });
            watch.once('error', (error: grpc.ServiceError) => {
              if (error.code !== grpc.status.CANCELLED) reject(error);
            });
          }),
      ),
    );
    for (const set of sets) {
      assert.equal(set.trust_domain, 'cluster.local');
      assert.deepEqual(set.bundles.map((b) => [b.trust_domain, b.x509_authorities.length]), [['cluster.local', 1]], 'the own bundle: the root of root-cert.pem');
    }
    assert.equal(new Set(sets.map((set) => set.version)).size, 1, 'every worker serves the same set');
    const reviews = kube.state.requests.filter((r) => r.path.endsWith('/tokenreviews')).length - reviewsBefore;
    assert.equal(reviews, 1, 'one TokenReview for one token, however many workers and connections used it');
    // Each worker logs its audit lines with its slot: both served.
    const served = await eventually(() => (auditWorkers(ca.proc.records).size === 2 ? auditWorkers(ca.proc.records) : undefined), 20_000, 'audit lines from both workers');
    assert.deepEqual([...served].sort(), [0, 1], 'audit lines come from worker 0 and worker 1');

    // /metrics is the sum over the processes; the expiry gauges are not summed.
    const metrics = await getText(`${monitoring}/metrics`);
    assert.equal(metricValue(metrics.body, 'citadel_server_success_cert_issuance_count'), 16, 'issuance counted once per certificate, over both workers');
    assert.equal(metricValue(metrics.body, 'meshca_tokenreview_requests_total', { result: 'authenticated' }), 1, 'one TokenReview call counted');
    const signingNotAfter = Math.floor(a.signing.cert.notAfter.getTime() / 1000);
    assert.equal(Math.floor(metricValue(metrics.body, 'citadel_server_cert_chain_expiry_timestamp')), signingNotAfter, 'the signing cert expiry is its own, not a sum');
    const secondsLeft = metricValue(metrics.body, 'citadel_server_cert_chain_expiry_seconds');
    assert.ok(Math.abs(signingNotAfter - Date.now() / 1000 - secondsLeft) < 120, `the seconds left (${secondsLeft}) are the signing cert's, not a sum`);
    assert.equal(metricValue(metrics.body, 'meshca_build_info'), 1, 'the build is shown once, not summed over the processes');
    const ready = await getText(`${monitoring}/ready`);
    assert.equal(ready.status, 200, `/ready: ${ready.body}`);
    assert.deepEqual((JSON.parse(ready.body) as { workers: unknown }).workers, { listening: 2, expected: 2 });
    const debug = JSON.parse((await getText(`${monitoring}/debug/ca`)).body) as { workers: number; keySource: string };
    assert.equal(debug.workers, 2, '/debug/ca names the workers');
    assert.equal(debug.keySource, 'cacerts');
    // /debug/decisions merges the workers' records: all 16 issuances, newest first.
    const decisions = JSON.parse((await getText(`${monitoring}/debug/decisions?identity=spiffe://cluster.local/ns/default/sa/shared&limit=100`)).body) as {
      capacity: number;
      decisions: { outcome: string; time: string }[];
    };
    assert.equal(decisions.capacity, 2000, 'two workers of 1000 each');
    assert.equal(decisions.decisions.filter((d) => d.outcome === 'issued').length, 16);
    assert.deepEqual(decisions.decisions.map((d) => d.time), decisions.decisions.map((d) => d.time).sort().reverse());

    // A new cacerts reaches every worker: after the reload, every connection gets the new issuer.
    await writeSecretVolume(dir, istioFiles(b));
    await ca.proc.waitForLog(/^reloaded the plugged-in CA certificates$/, 30_000);
    await eventually(
      async () => {
        const results = await Promise.all(conns.map((client) => createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 3600 })));
        return results.every((r) => r.ok && r.chain.length === 4) ? true : undefined;
      },
      20_000,
      'every connection signing with the reloaded three-level chain',
    );
    const after = await Promise.all(conns.map((client) => createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 3600 })));
    for (const [i, result] of after.entries()) {
      const chain = assertOk(result, `connection ${i} after the reload`);
      assert.equal(opensslVerifyResponseChain(chain).ok, true, `connection ${i}: the new chain verifies`);
    }

    // Kill one worker: the primary starts another, and new connections are served by both again.
    const workers = await childPids(ca.proc.child.pid!);
    assert.equal(workers.length, 2, `the primary has two worker processes (found ${workers.join(', ')})`);
    process.kill(workers[0]!, 'SIGKILL');
    await ca.proc.waitForLog(/^a CA worker died; starting a new one$/, 30_000);
    await eventually(async () => ((JSON.parse((await getText(`${monitoring}/ready`)).body) as { workers: { listening: number } }).workers.listening === 2 ? true : undefined), 40_000, 'two workers listening again');
    const fresh = connect(ca, rootsPem, 4);
    const afterKill = await kube.mintToken({ namespace: 'default', serviceAccount: 'after-kill', ttlSeconds: 3600 });
    const results = await Promise.all(fresh.map((client) => createCertificate(client, { csr: workload.csrPem, token: afterKill, validitySeconds: 3600 })));
    for (const [i, result] of results.entries()) assertOk(result, `new connection ${i} after a worker was killed`);

    // SIGTERM to the primary stops everything, cleanly.
    const pids = await childPids(ca.proc.child.pid!);
    const code = await ca.proc.stop('SIGTERM', 20_000);
    assert.equal(code, 0, 'the primary exits 0 after a graceful stop');
    await eventually(() => (pids.every((pid) => !alive(pid)) ? true : undefined), 20_000, 'no worker outlives the primary');
  });

  // One Vault stand-in and one `--workers 2` CA in Vault role mode, shared by the Vault test and the killed-primary
  // test (which only needs a primary with two workers, and ends it): started by whichever runs first.
  let vaultCa: Promise<{ vault: VaultStandin; ca: StartedCa }> | undefined;
  const startVaultCa = (): Promise<{ vault: VaultStandin; ca: StartedCa }> =>
    (vaultCa ??= (async () => {
      const vault = await startVaultStandin({ keyType: 'ec' });
      stopVault = () => vault.close();
      vault.state.setRole('pki_int', 'istio', { ...ISTIO_WORKLOAD_ROLE });
      const ca = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'vault', '--ca-key-type', 'ec-p256', '--workers', '2', '--state-dir', path.join(temp.dir, 'vault')], {
        VAULT_ADDR: vault.url,
        VAULT_TOKEN: vault.rootToken,
        VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio',
      });
      running.push(ca);
      return { vault, ca };
    })());

  test('Vault role mode: workers forward each request to the primary, and Vault\'s statuses reach the caller unchanged', async () => {
    const { vault, ca } = await startVaultCa();
    try {
      const conns = connect(ca, vault.state.chain('pki')[0]!, 4);
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'vaulted', ttlSeconds: 3600 });
      const signsBefore = vault.state.requests.filter((r) => r.path === '/v1/pki_int/sign/istio').length;
      const results = await Promise.all(conns.map((client) => createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 1800 })));
      for (const [i, result] of results.entries()) {
        const chain = assertOk(result, `connection ${i}`);
        assert.equal(opensslVerifyResponseChain(chain).ok, true, `connection ${i}: Vault's chain verifies`);
      }
      // Each workload certificate was signed by Vault (the workers hold no key in role mode).
      const signs = vault.state.requests.filter((r) => r.path === '/v1/pki_int/sign/istio').length - signsBefore;
      assert.ok(signs >= 4, `one Vault sign call per certificate (saw ${signs})`);
      vault.state.down = true;
      const down = await Promise.all(conns.map((client) => createCertificate(client, { csr: workload.csrPem, token, validitySeconds: 1800 })));
      for (const [i, result] of down.entries()) {
        assert.equal(result.ok ? 'OK' : grpc.status[result.code], 'UNAVAILABLE', `connection ${i}: Vault down is UNAVAILABLE through the worker`);
        if (!result.ok) assert.match(result.details, /Vault is unavailable/, `connection ${i}: the reason survives the hop`);
      }
      vault.state.down = false;
      const other = await kube.mintToken({ namespace: 'other', serviceAccount: 'app', ttlSeconds: 3600 });
      const refused = await createCertificate(conns[0]!, { csr: workload.csrPem, token: other, validitySeconds: 1800 });
      assert.equal(refused.ok ? 'OK' : grpc.status[refused.code], 'INVALID_ARGUMENT', 'Vault\'s 400 stays INVALID_ARGUMENT');
    } finally {
      vault.state.down = false;
    }
  });

  test('a killed primary takes its workers with it', async () => {
    const { ca } = await startVaultCa();
    const pids = await childPids(ca.proc.child.pid!);
    assert.equal(pids.length, 2, 'two workers');
    await ca.proc.stop('SIGKILL');
    await eventually(() => (pids.every((pid) => !alive(pid)) ? true : undefined), 20_000, 'the workers exit when the primary is gone');
  });

  test('start-up failures of the workers end in one line and a non-zero exit', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const result = await expectStartFailure([
        '--kubeconfig', kube.kubeconfigPath,
        '--workers', '2',
        '--ca-key-type', 'ec-p256',
        '--state-dir', path.join(temp.dir, 'in-use'),
        '--grpc-addr', `127.0.0.1:${port}`,
      ]);
      assert.equal(result.code, 1, `exit code (stderr: ${result.stderr})`);
      const lines = result.stderr.split('\n').filter((l) => l.startsWith('meshca: '));
      assert.equal(lines.length, 1, `one line:\n${result.stderr}`);
      assert.match(lines[0]!, new RegExp(`127\\.0\\.0\\.1:${port}.*--grpc-addr`), 'the line names the address and the flag');
    } finally {
      blocker.close();
    }
    const bad = await expectStartFailure(['--kubeconfig', kube.kubeconfigPath, '--workers', 'many', '--state-dir', path.join(temp.dir, 'bad-workers')]);
    assert.equal(bad.code, 2, 'a bad flag value is a usage error');
    assert.match(bad.stderr, /--workers|MESHCA_CA_WORKERS/, 'the bad value names the flag');
  });
});

