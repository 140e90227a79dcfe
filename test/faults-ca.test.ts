/**
 * Faults around the real `meshca ca`:
 *  - a TokenReview API that takes 5 s: every caller waits at most --tokenreview-timeout and gets UNAVAILABLE;
 *    beyond --max-inflight-tokenreviews calls, new tokens are refused at once; timed-out calls are really ended
 *    (the in-flight gauge drops while the API server is still sitting on them); the CA recovers by itself;
 *  - SIGKILL under load, then a restart, for the self-signed and the cacerts key sources: the same root and key
 *    come back (nothing lost, nothing regenerated) and certificates issued before the crash still verify;
 *  - Vault answering 500: UNAVAILABLE with Vault's reason, no chain handed out, and back to work after;
 *  - clock skew: issued certificates are backdated by 2 minutes.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { IstioCaClient } from '../src/wire/protos.js';
import {
  caClient,
  createCertificate,
  getText,
  metricValue,
  opensslFacts,
  opensslKeyAndCsr,
  startCa,
  type CallResult,
  type RunningCa,
} from './ca-helpers.js';
import { eventually, istioFiles, makeChain, startCaProcess, writeFiles } from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { ISTIO_WORKLOAD_ROLE, startVaultStandin, type VaultStandin } from './standins/vault.js';
import { opensslVerify, opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

function assertRefused(result: CallResult, code: grpc.status, details: string | RegExp): void {
  if (result.ok) assert.fail(`expected ${grpc.status[code]}, got a certificate`);
  assert.equal(grpc.status[result.code], grpc.status[code], result.details);
  if (typeof details === 'string') assert.equal(result.details, details);
  else assert.match(result.details, details);
}

function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(readdirSync(dir).map((name) => [name, readFileSync(path.join(dir, name), 'utf8')]));
}

/** Concurrent request loops until `stop()`; keeps every chain that was issued. */
function startLoad(client: () => IstioCaClient, requests: { csr: string; token: string }[], concurrency: number): { issued: string[][]; stop: () => Promise<number> } {
  const issued: string[][] = [];
  let running = true;
  let attempts = 0;
  const loops = Array.from({ length: concurrency }, async (_, worker) => {
    for (let i = worker; running; i += concurrency) {
      attempts++;
      const result = await createCertificate(client(), { ...requests[i % requests.length]!, validitySeconds: 3600 });
      if (result.ok) issued.push(result.chain);
    }
  });
  return {
    issued,
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return attempts;
    },
  };
}

describe('faults around meshca ca', () => {
  const temp = makeTempDir('meshca-faults-ca-');
  let kube: KubeStandin;
  let csr: string;
  const processes: RunningCa['proc'][] = [];

  before(async () => {
    kube = await startKubeStandin();
    csr = opensslKeyAndCsr(temp.dir, 'workload').csrPem;
  });

  after(async () => {
    for (const proc of processes) await proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  async function start(stateDir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<RunningCa> {
    const ca = await startCa(stateDir, ['--kubeconfig', kube.kubeconfigPath, '--max-csr-per-identity-per-minute', '0', ...args], env);
    processes.push(ca.proc);
    return ca;
  }

  // One CA for the tests that neither kill it nor need their own key source (the slow-API test and the clock-skew
  // test): started by whichever runs first, stopped in `after`. Its flags only matter to the slow-API test.
  let shared: Promise<RunningCa> | undefined;
  const sharedCa = (): Promise<RunningCa> =>
    (shared ??= start(path.join(temp.dir, 'shared'), ['--tokenreview-timeout', '3s', '--max-inflight-tokenreviews', '3']));

  test('a TokenReview API taking 5 s: bounded waits, UNAVAILABLE, --max-inflight-tokenreviews, and recovery', async () => {
    const ca = await sharedCa();
    const client = caClient(ca.grpcAddress, ca.rootPem);
    const metric = async (name: string): Promise<number> => metricValue((await getText(`${ca.monitoringUrl}/metrics`)).body, name);
    const tokens = await Promise.all(Array.from({ length: 6 }, (_, i) => kube.mintToken({ namespace: 'default', serviceAccount: `slow-${i}` })));
    const timedOut = `authentication could not be completed: tokenreview: could not reach the Kubernetes API server of cluster "Kubernetes" (${kube.url}) to review the token: no answer within 3s`;
    try {
      kube.state.delayMs = 5000;
      // The stand-in records a request when it arrives (and counts TokenReviews only once it answers).
      const mark = kube.state.requests.length;
      const reviewsArrived = (): number => kube.state.requests.slice(mark).filter((r) => r.path.endsWith('/tokenreviews')).length;
      let settled = 0;
      const slow = tokens.slice(0, 3).map((token) =>
        createCertificate(client, { csr, token }).then((result) => {
          settled++;
          return result;
        }),
      );
      await eventually(() => (reviewsArrived() === 3 ? true : undefined), 10_000, 'three TokenReviews at the API server');
      // All three slots are taken: a fourth token is refused at once, before any of the three has an answer.
      assertRefused(
        await createCertificate(client, { csr, token: tokens[3]! }),
        grpc.status.UNAVAILABLE,
        'authentication could not be completed: tokenreview: too many TokenReviews in flight (3, the --max-inflight-tokenreviews limit): the Kubernetes API server of cluster "Kubernetes" is not keeping up; retry later',
      );
      assert.equal(settled, 0, 'the refusal did not wait for the slow reviews');
      assert.equal(reviewsArrived(), 3, 'the refused token was not sent to the API server');
      for (const result of await Promise.all(slow)) assertRefused(result, grpc.status.UNAVAILABLE, timedOut);
      // The timed-out calls were cut off, not left running until the API server answers (5 s after each arrived).
      const arrivals = kube.state.requests.slice(mark).filter((r) => r.path.endsWith('/tokenreviews'));
      await eventually(async () => ((await metric('meshca_tokenreviews_in_flight')) === 0 ? true : undefined), 10_000, 'no TokenReview in flight');
      assert.ok(Date.now() < Math.min(...arrivals.map((r) => r.time)) + 5000, 'the slots were freed before the API server would have answered');
      // Capacity is back while the API server is still slow: new tokens get a TokenReview (and time out) again.
      assertRefused(await createCertificate(client, { csr, token: tokens[4]! }), grpc.status.UNAVAILABLE, timedOut);
      assert.equal(await metric('meshca_tokenreview_overload_total'), 1);
    } finally {
      kube.state.delayMs = 0;
    }
    // The API server is back: the same tokens work.
    for (const token of [tokens[3]!, tokens[5]!]) {
      const result = await createCertificate(client, { csr, token });
      assert.ok(result.ok, JSON.stringify(result));
    }
    assert.equal(await metric('meshca_tokenreviews_in_flight'), 0);
    client.close();
  });

  test('self-signed: SIGKILL under load and restart brings back the same root and key; old and new chains verify', async () => {
    const stateDir = path.join(temp.dir, 'killed-self-signed');
    const first = await start(stateDir);
    const stateBefore = snapshot(stateDir);
    const tokens = await Promise.all(Array.from({ length: 8 }, (_, i) => kube.mintToken({ namespace: 'default', serviceAccount: `kill-${i}` })));
    let client = caClient(first.grpcAddress, first.rootPem);
    const load = startLoad(() => client, tokens.map((token) => ({ csr, token })), 8);
    await eventually(() => (load.issued.length >= 40 ? true : undefined), 20_000, 'certificates issued under load');
    assert.equal(await first.proc.stop('SIGKILL'), null);
    await load.stop();
    client.close();

    const second = await start(stateDir);
    assert.deepEqual(snapshot(stateDir), stateBefore, 'the state directory is exactly as before the crash');
    assert.ok(second.proc.records.some((r) => r.msg === 'loaded the self-signed root CA'));
    assert.ok(!second.proc.records.some((r) => r.msg === 'created a new self-signed root CA'));
    assert.equal(second.rootPem, first.rootPem);
    // Certificates issued before the crash verify against the root the restarted CA publishes.
    for (const chain of [load.issued[0]!, load.issued[load.issued.length - 1]!]) {
      const verified = opensslVerify(chain[0]!, chain.slice(1, -1).join(''), second.rootPem);
      assert.ok(verified.ok, verified.output);
    }
    client = caClient(second.grpcAddress, second.rootPem);
    const after = await createCertificate(client, { csr, token: tokens[0]! });
    assert.ok(after.ok, JSON.stringify(after));
    assert.ok(opensslVerifyResponseChain(after.chain).ok);
    client.close();
    await second.proc.stop();
  });

  test('cacerts: SIGKILL under load and restart signs with the same plugged-in CA; nothing is written to ROOT_CA_DIR', async () => {
    const chain = await makeChain('ec', 3, 'killed');
    const dir = path.join(temp.dir, 'killed-cacerts');
    await writeFiles(dir, istioFiles(chain));
    const filesBefore = snapshot(dir);
    const args = ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'killed-cacerts-state'), '--max-csr-per-identity-per-minute', '0'];
    const first = await startCaProcess(args, { ROOT_CA_DIR: dir });
    processes.push(first.proc);
    const debugOf = async (monitoringAddress: unknown): Promise<{ signingCertificate: { serial: string }; roots: { fingerprintSha256: string }[] }> =>
      JSON.parse((await getText(`http://${String(monitoringAddress)}/debug/ca`)).body) as { signingCertificate: { serial: string }; roots: { fingerprintSha256: string }[] };
    const debugBefore = await debugOf(first.ready.monitoringAddress);
    const tokens = await Promise.all(Array.from({ length: 8 }, (_, i) => kube.mintToken({ namespace: 'default', serviceAccount: `kill-cacerts-${i}` })));
    let client = caClient(first.grpcAddress, chain.root.pem);
    const load = startLoad(() => client, tokens.map((token) => ({ csr, token })), 8);
    await eventually(() => (load.issued.length >= 40 ? true : undefined), 20_000, 'certificates issued under load');
    await first.proc.stop('SIGKILL');
    await load.stop();
    client.close();

    const second = await startCaProcess(args, { ROOT_CA_DIR: dir });
    processes.push(second.proc);
    const debugAfter = await debugOf(second.ready.monitoringAddress);
    assert.deepEqual(debugAfter.roots, debugBefore.roots);
    assert.equal(debugAfter.signingCertificate.serial, debugBefore.signingCertificate.serial);
    assert.deepEqual(snapshot(dir), filesBefore);
    client = caClient(second.grpcAddress, chain.root.pem);
    const after = await createCertificate(client, { csr, token: tokens[0]! });
    assert.ok(after.ok, JSON.stringify(after));
    for (const issued of [load.issued[0]!, after.chain]) {
      const verified = opensslVerify(issued[0]!, issued.slice(1, -1).join(''), chain.root.pem);
      assert.ok(verified.ok, verified.output);
    }
    client.close();
    await second.proc.stop();
  });

  test('Vault answering 500: UNAVAILABLE with Vault\'s reason and no chain; signing resumes when Vault recovers', async () => {
    let vault: VaultStandin | undefined;
    try {
      vault = await startVaultStandin({ keyType: 'ec' });
      vault.state.setRole('pki_int', 'istio', { ...ISTIO_WORKLOAD_ROLE });
      const ca = await startCaProcess(
        ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'vault', '--ca-key-type', 'ec-p256', '--state-dir', path.join(temp.dir, 'vault-state')],
        { VAULT_ADDR: vault.url, VAULT_TOKEN: vault.rootToken, VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' },
      );
      processes.push(ca.proc);
      const client = caClient(ca.grpcAddress, vault.state.chain('pki')[0]!);
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'vault-500' });
      try {
        vault.state.failWith500 = 2;
        for (let i = 0; i < 2; i++) {
          assertRefused(
            await createCertificate(client, { csr, token }),
            grpc.status.UNAVAILABLE,
            'Vault is unavailable: internal error (HTTP 500 from pki_int/sign/istio)',
          );
        }
        const recovered = await createCertificate(client, { csr, token });
        assert.ok(recovered.ok, JSON.stringify(recovered));
        assert.ok(opensslVerifyResponseChain(recovered.chain).ok);
      } finally {
        client.close();
        await ca.proc.stop();
      }
    } finally {
      await vault?.close();
    }
  });

  test('clock skew: NotBefore is 2 minutes before issuance, NotAfter the requested TTL after it', async () => {
    const ca = await sharedCa();
    const client = caClient(ca.grpcAddress, ca.rootPem);
    try {
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'skew' });
      const requestedAt = Math.floor(Date.now() / 1000) * 1000;
      const result = await createCertificate(client, { csr, token, validitySeconds: 3600 });
      const answeredAt = Date.now();
      assert.ok(result.ok, JSON.stringify(result));
      const { notBefore, notAfter } = opensslFacts(result.chain[0]!);
      assert.ok(notBefore.getTime() >= requestedAt - 120_000 && notBefore.getTime() <= answeredAt - 120_000, `NotBefore ${notBefore.toISOString()}`);
      assert.equal(notAfter.getTime() - notBefore.getTime(), (3600 + 120) * 1000);
    } finally {
      client.close();
    }
  });
});
