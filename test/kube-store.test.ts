/**
 * Shared CA state in Kubernetes and root distribution, against the Kubernetes API stand-in:
 *  - two `meshca ca --ca-store kubernetes` processes started at once end with one root in Secret istio-ca-secret
 *    (type istio.io/ca-root), and both issue chains to it;
 *  - create-if-absent returns the winner's root on 409, stale updates are refused by resourceVersion, and two
 *    rotators sharing the Secret converge on the same material;
 *  - ConfigMap istio-ca-root-cert (label istio.io/config=true) is written in every namespace, follows new
 *    namespaces and trust-bundle changes, and is repaired when edited or deleted;
 *  - with that CA running: `meshca decisions` shows an issued and a refused call, and `meshca status` passes, then
 *    fails with a fix for a wrong TLS name, a wrong root, a ConfigMap with another root and a forbidden RBAC verb;
 *    in process, its lines for a refused CA, no kubeconfig and a skewed clock;
 *  - the same CA with `--pod-certificate-signer` answers a pod's PodCertificateRequest with its SPIFFE certificate
 *    (the full signer is tested in process in k8s-pod-certificates.test.ts).
 */
import assert from 'node:assert/strict';
import { randomUUID, X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { KubeConfig } from '@kubernetes/client-node';
import {
  CA_SECRET_NAME,
  CaStateConflictError,
  createSelfSignedRoot,
  KubeSecretCaStore,
  LocalSigner,
  ROOT_CONFIGMAP_NAME,
  RootRotator,
  type RotationPolicy,
  type StoredCaState,
} from '../src/ca/index.js';
import { checkClock, formatResults, runStatusChecks, type StatusOptions } from '../src/commands/status.js';
import { loadKubeConfig } from '../src/kube/config.js';
import { createLogger } from '../src/log.js';
import { certificateToPem, createCaCertificate, createCsr, generateKeyPairFor } from '../src/pki/index.js';
import { caClient, cleanEnv, createCertificate, metricValue, opensslKeyAndCsr, SERVER_NAME } from './ca-helpers.js';
import { eventually, istioFiles, makeChain, startCaProcess, writeSecretVolume, type StartedCa } from './keysource-helpers.js';
import { podCertificateRequests } from './standins/kube-pcr.js';
import { startKubeStandin, type KubeObject, type KubeStandin } from './standins/kube.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { closedPort, makeTempDir, runMeshca } from './support/process.js';

const logger = createLogger({ level: 'silent', format: 'json' });
const decode = (value: unknown): string => Buffer.from(String(value), 'base64').toString('utf8');

async function root(now?: () => number): Promise<StoredCaState> {
  const made = await createSelfSignedRoot({ stateDir: '', trustDomain: 'cluster.local', keySpec: 'ec-p256', ttlSeconds: 100, ...(now ? { now } : {}) });
  return { certPem: made.certPem, keyPem: made.keyPem, rootsPem: made.certPem };
}

describe('Kubernetes Secret store and root distribution', () => {
  const temp = makeTempDir('meshca-kube-store-');
  let kube: KubeStandin;
  let kubeConfig: KubeConfig;
  const processes: StartedCa[] = [];

  before(async () => {
    kube = await startKubeStandin();
    // Through meshca's loader, which also loads the Kubernetes client the store's API calls use (src/kube/client.ts).
    kubeConfig = await loadKubeConfig(kube.kubeconfigPath, {});
  });

  after(async () => {
    for (const p of processes) await p.proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  test('two CA processes started at once against the stand-in end with one shared root', async (t) => {
    const args = (name: string): string[] => [
      '--kubeconfig',
      kube.kubeconfigPath,
      '--ca-store',
      'kubernetes',
      '--ca-namespace',
      'istio-system',
      '--ca-key-type',
      'ec-p256',
      '--state-dir',
      path.join(temp.dir, name),
    ];
    // API latency widens the window in which both replicas find no Secret and both try to create it.
    kube.state.delayMs = 800;
    let first: StartedCa;
    let second: StartedCa;
    try {
      [first, second] = await Promise.all([startCaProcess(args('replica-1')), startCaProcess(args('replica-2'))]);
    } finally {
      kube.state.delayMs = 0;
    }
    processes.push(first, second);
    const secret = kube.state.get('secrets', 'istio-system', CA_SECRET_NAME);
    assert.ok(secret, 'Secret istio-ca-secret exists');
    assert.equal(secret.type, 'istio.io/ca-root');
    const data = secret.data as Record<string, string>;
    for (const key of ['ca-cert.pem', 'ca-key.pem', 'root-cert.pem']) assert.ok(data[key], `key ${key}`);
    const rootPem = decode(data['root-cert.pem']);
    const created = [first, second].filter((p) => p.proc.records.some((r) => r.msg === 'created a new self-signed root CA'));
    assert.equal(created.length, 1, 'exactly one replica created the root');
    const raced = [first, second].some((p) => p.proc.records.some((r) => r.msg === 'another CA replica created the root first; using it'));
    t.diagnostic(raced ? 'the second replica lost the create race (409) and used the winner root' : 'the second replica found the Secret already there');

    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin' });
    const { csrPem } = opensslKeyAndCsr(temp.dir, 'shared', { spiffeId: 'spiffe://cluster.local/ns/default/sa/httpbin' });
    for (const replica of [first, second]) {
      const client = caClient(replica.grpcAddress, rootPem);
      try {
        const result = await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 });
        if (!result.ok) assert.fail(`${grpc.status[result.code]}: ${result.details}`);
        assert.equal(result.chain[result.chain.length - 1], rootPem, 'both replicas publish the Secret root');
        const verified = opensslVerifyResponseChain(result.chain);
        assert.ok(verified.ok, verified.output);
      } finally {
        client.close();
      }
    }
    await Promise.all([first.proc.stop(), second.proc.stop()]);
  });

  test('create-if-absent returns the winner on 409, and a stale resourceVersion is refused', async () => {
    const a = new KubeSecretCaStore({ kubeConfig, namespace: 'default', name: 'race-secret' });
    const b = new KubeSecretCaStore({ kubeConfig, namespace: 'default', name: 'race-secret' });
    assert.equal(await a.load(), null);
    assert.equal(await b.load(), null);
    const [stateA, stateB] = await Promise.all([root(), root()]);
    const winner = await a.create(stateA);
    const loser = await b.create(stateB);
    assert.equal(winner.created, true);
    assert.equal(loser.created, false);
    assert.equal(loser.state.certPem, stateA.certPem, "the loser uses the winner's root");
    const fresh = await a.update({ ...winner.state, rootsPem: winner.state.rootsPem + stateB.certPem }, winner.version);
    await assert.rejects(b.update({ ...winner.state }, winner.version), CaStateConflictError);
    assert.notEqual(fresh.version, winner.version);
    // Keys other tools put in the Secret survive our updates.
    const stored = kube.state.get('secrets', 'default', 'race-secret')!;
    kube.state.put('secrets', { ...stored, data: { ...(stored.data as Record<string, string>), extra: Buffer.from('kept').toString('base64') } });
    const reloaded = (await a.load())!;
    await a.update({ ...reloaded.state, rootsPem: reloaded.state.certPem }, reloaded.version);
    assert.equal(decode((kube.state.get('secrets', 'default', 'race-secret')!.data as Record<string, string>).extra), 'kept');
  });

  test('two rotators sharing the Secret converge on one material through a rotation', async () => {
    const clock = { now: Date.parse('2031-06-01T00:00:00Z') };
    const t0 = clock.now;
    const policy: RotationPolicy = { checkIntervalSeconds: 60, gracePeriodPercentile: 20, overlapSeconds: 10 };
    const make = (): RootRotator =>
      new RootRotator({
        store: new KubeSecretCaStore({ kubeConfig, namespace: 'default', name: 'rotating-secret' }),
        policy,
        logger,
        now: () => clock.now,
        createRoot: async () => {
          const made = await root(() => clock.now);
          return { certPem: made.certPem, keyPem: made.keyPem };
        },
      });
    const one = make();
    const two = make();
    const [m1, m2] = await Promise.all([one.initialize(), two.initialize()]);
    assert.ok(m1.material.signingCert.der.equals(m2.material.signingCert.der));
    assert.equal([m1.created, m2.created].filter(Boolean).length, 1);
    const s1 = new LocalSigner('self-signed', m1.material);
    const s2 = new LocalSigner('self-signed', m2.material);
    one.attach(s1);
    two.attach(s2);
    const same = (): boolean => s1.current().signingCert.der.equals(s2.current().signingCert.der) && s1.current().rootsPem === s2.current().rootsPem;

    clock.now = t0 + 81_000;
    await Promise.all([one.runOnce(), two.runOnce()]);
    await Promise.all([one.runOnce(), two.runOnce()]);
    assert.ok(same(), 'both publish the same next root');
    assert.equal(s1.current().roots.length, 2);
    clock.now = t0 + 92_000;
    await Promise.all([one.runOnce(), two.runOnce()]);
    await Promise.all([one.runOnce(), two.runOnce()]);
    assert.ok(same(), 'both switched to the same root');
    assert.ok(!s1.current().signingCert.der.equals(m1.material.signingCert.der));
    clock.now = t0 + 101_000;
    await Promise.all([one.runOnce(), two.runOnce()]);
    await Promise.all([one.runOnce(), two.runOnce()]);
    assert.ok(same());
    assert.equal(s1.current().roots.length, 1);
    await Promise.all([one.close(), two.close()]);
  });

  test('ConfigMap istio-ca-root-cert is kept current in every namespace, follows new namespaces and bundle changes, and is repaired', async () => {
    const configMap = (ns: string): KubeObject | undefined => kube.state.get('configmaps', ns, ROOT_CONFIGMAP_NAME);
    const bundleOf = (ns: string): string | undefined => (configMap(ns)?.data as Record<string, string> | undefined)?.['root-cert.pem'];
    const chainA = await makeChain('ec', 2, 'dist-a');
    const chainB = await makeChain('ec', 2, 'dist-b');
    const dir = path.join(temp.dir, 'dist-cacerts');
    await writeSecretVolume(dir, istioFiles(chainA));
    // The same CA also publishes ClusterTrustBundle meshca.io:spiffe:roots (--cluster-trust-bundle, issue 14).
    kube.state.clusterTrustBundles.attestGrants.add(`${kube.state.reviewerUser} meshca.io/spiffe`);
    // And signs PodCertificateRequests (the API served as on 1.35/1.36 with the gate on).
    podCertificateRequests(kube.state).served.add('v1beta1');
    const trustBundle = (): string | undefined => kube.state.clusterTrustBundles.get('meshca.io:spiffe:roots')?.spec.trustBundle;
    const ca = await startCaProcess(
      ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--distribute-root-configmap', '--cluster-trust-bundle', '--state-dir', path.join(temp.dir, 'dist-state')],
      // With node impersonation on, the pod-certificate signer looks pods up in its pod cache (one watch for both).
      { ROOT_CA_DIR: dir, MESHCA_POD_CERTIFICATE_SIGNER: 'meshca.io/spiffe', CA_TRUSTED_NODE_ACCOUNTS: 'istio-system/ztunnel' },
    );
    processes.push(ca);
    await ca.proc.waitForLog(/^root distribution: trust bundle published in every namespace$/, 20_000);
    await podCertificateThroughCli(ca);
    const rootA = `${chainA.root.pem.trim()}\n`;
    await eventually(() => (trustBundle() === rootA ? true : undefined), 10_000, 'the ClusterTrustBundle with the root');
    const namespaces = kube.state.list('namespaces').map((n) => n.metadata.name!);
    assert.ok(namespaces.length >= 4);
    for (const ns of namespaces) {
      assert.equal(bundleOf(ns), rootA, `bundle in ${ns}`);
      assert.equal(configMap(ns)!.metadata.labels?.['istio.io/config'], 'true');
    }

    kube.state.addNamespace('team-a');
    await eventually(() => (bundleOf('team-a') === rootA ? true : undefined), 10_000, 'the ConfigMap in a new namespace');

    const edited = configMap('default')!;
    kube.state.put('configmaps', { ...edited, data: { 'root-cert.pem': 'tampered' } });
    await eventually(() => (bundleOf('default') === rootA ? true : undefined), 10_000, 'the edited ConfigMap to be repaired');

    kube.state.remove('configmaps', 'kube-public', ROOT_CONFIGMAP_NAME);
    await eventually(() => (bundleOf('kube-public') === rootA ? true : undefined), 10_000, 'the deleted ConfigMap to come back');

    // A new root in the plugged-in CA: every namespace gets new ∪ old.
    await writeSecretVolume(dir, istioFiles(chainB));
    const both = await eventually(() => (bundleOf('istio-system')?.includes(chainB.root.pem.split('\n')[1]!) ? bundleOf('istio-system') : undefined), 10_000, 'the new bundle');
    assert.ok(both.includes(chainA.root.pem.split('\n')[1]!), 'old root kept until it expires');
    for (const ns of [...namespaces, 'team-a']) await eventually(() => (bundleOf(ns) === both ? true : undefined), 10_000, `the new bundle in ${ns}`);
    await eventually(() => (trustBundle() === both ? true : undefined), 10_000, 'the new bundle in the ClusterTrustBundle');
    assert.deepEqual(kube.state.clusterTrustBundles.log.filter((e) => e.code >= 400 && e.code !== 404), [], 'no ClusterTrustBundle write refused');

    // The same CA, as an operator sees it: `meshca decisions` and `meshca status` (issue 17).
    await decisionsAndStatus(ca, both);
    await ca.proc.stop();
  });

  /** A pod's PodCertificateRequest (the kubelet's 1.36 stub CSR) answered by the CA process: Issued, its SPIFFE ID. */
  async function podCertificateThroughCli(ca: StartedCa): Promise<void> {
    await ca.proc.waitForLog(/^pod certificates: signing PodCertificateRequests$/, 10_000);
    const issuedCount = async (): Promise<number> =>
      metricValue(await (await fetch(`http://${String(ca.ready.monitoringAddress)}/metrics`)).text(), 'citadel_server_success_cert_issuance_count');
    const issuedBefore = await issuedCount();
    const pod = kube.state.addPod({ namespace: 'default', name: 'pcr-0', serviceAccount: 'httpbin', nodeName: 'node-a' });
    const key = generateKeyPairFor('ec-p256').privateKey;
    const stub = Buffer.from(createCsr({ privateKey: key }).replace(/-----[^-]+-----|\s/g, ''), 'base64').toString('base64');
    const spec = { signerName: 'meshca.io/spiffe', podName: 'pcr-0', podUID: pod.metadata.uid, serviceAccountName: 'httpbin', serviceAccountUID: randomUUID(), nodeName: 'node-a', nodeUID: randomUUID(), stubPKCS10Request: stub };
    const store = podCertificateRequests(kube.state);
    const name = String((store.create('v1beta1', 'default', { metadata: { generateName: 'req-' }, spec }).metadata as { name: string }).name);
    const status = await eventually(() => (store.get('default', name)?.status as { conditions?: { type: string }[]; certificateChain?: string } | undefined)?.conditions ? (store.get('default', name)!.status as { conditions: { type: string }[]; certificateChain: string }) : undefined, 10_000, 'the PodCertificateRequest answered');
    assert.equal(status.conditions[0]!.type, 'Issued');
    assert.match(new X509Certificate(status.certificateChain).subjectAltName ?? '', /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/httpbin/);
    // The signer used node impersonation's pod cache: pods were listed once, not once more for the signer.
    assert.equal(kube.state.requests.filter((r) => r.method === 'GET' && r.path === '/api/v1/pods' && !/watch=/.test(r.query)).length, 1);
    // The CA's audit line, as for CreateCertificate, and its issuance count.
    const leaf = new X509Certificate(status.certificateChain);
    const audit = await eventually(() => ca.proc.records.find((r) => r.audit === true && r.via === 'pod-certificates'), 5000, 'the audit line');
    assert.equal(audit.msg, 'certificate issued');
    assert.equal(audit.spiffeId, 'spiffe://cluster.local/ns/default/sa/httpbin');
    assert.equal(audit.serial, leaf.serialNumber.toLowerCase());
    assert.equal(audit.caller, 'default/pcr-0');
    assert.equal(await issuedCount(), issuedBefore + 1);
  }

  /**
   * `meshca decisions <id>` shows an issued and a refused call with the reason; `meshca status` passes against this
   * healthy CA and stand-in, then fails with a fix for a wrong TLS name, a wrong root, a ConfigMap with another root
   * and a forbidden RBAC verb.
   */
  async function decisionsAndStatus(ca: StartedCa, bundle: string): Promise<void> {
    const id = 'spiffe://cluster.local/ns/default/sa/httpbin';
    const monitoring = String(ca.ready.monitoringAddress);
    const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin' });
    const { csrPem } = opensslKeyAndCsr(temp.dir, 'decisions', { spiffeId: id });
    const client = caClient(ca.grpcAddress, bundle);
    let serial: string;
    try {
      const issued = await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 });
      if (!issued.ok) assert.fail(`${grpc.status[issued.code]}: ${issued.details}`);
      serial = new X509Certificate(issued.chain[0]!).serialNumber.toLowerCase();
      const refused = await createCertificate(client, { csr: csrPem, token, validitySeconds: 1000 * 86400 });
      assert.ok(!refused.ok && refused.code === grpc.status.INVALID_ARGUMENT, 'a TTL over MAX_WORKLOAD_CERT_TTL is refused');
    } finally {
      client.close();
    }
    const decisions = await runMeshca(['decisions', id, '--monitoring-addr', monitoring]);
    assert.equal(decisions.code, 0, decisions.stderr);
    const [header, refusedRow, issuedRow, ...rest] = decisions.stdout.trimEnd().split('\n');
    assert.match(header!, /^TIME +OUTCOME +CODE +IDENTITY +CALLER +SERIAL +NOT AFTER +REASON$/);
    assert.deepEqual(rest, [], 'only the two calls of this identity');
    assert.match(refusedRow!, new RegExp(`refused +INVALID_ARGUMENT +${id} +system:serviceaccount:default:httpbin \\(tokenreview\\) +- +- +.*requested TTL 1000d is greater than the max allowed TTL 90d`));
    assert.match(issuedRow!, new RegExp(`issued +OK +${id} +system:serviceaccount:default:httpbin \\(tokenreview\\) +[0-9a-f]+ +\\d{4}-`));
    assert.ok(issuedRow!.toLowerCase().includes(serial.replace(/^0+/, '')), `the issued row names serial ${serial}: ${issuedRow}`);

    const badLimit = await fetch(`http://${monitoring}/debug/decisions?limit=all`);
    assert.equal(badLimit.status, 400);
    assert.deepEqual(await badLimit.json(), { error: 'limit must be a whole number from 1 to 999999, not "all"' });

    const rootFile = path.join(temp.dir, 'status-root.pem');
    writeFileSync(rootFile, bundle);
    const status = (extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
      runMeshca(['status', '--ca-addr', ca.grpcAddress, '--ca-root-cert', rootFile, '--monitoring-addr', monitoring, '--kubeconfig', kube.kubeconfigPath, ...extra], {
        env: cleanEnv(),
      });
    const lines = (stdout: string): Map<string, string> => {
      const found = new Map<string, string>();
      for (const line of stdout.split('\n')) {
        const match = /^(PASS|WARN|FAIL|SKIP) +(CA TLS|CA monitoring|root file|clock vs the CA|root ConfigMaps|clock vs the API server|RBAC) +(.*)$/.exec(line);
        if (match) found.set(match[2]!, `${match[1]} ${match[3]}`);
      }
      return found;
    };

    // The healthy run asks for JSON (the broken run below reads the text form).
    const healthy = await status(['--server-name', SERVER_NAME, '-o', 'json']);
    assert.equal(healthy.code, 0, healthy.stdout + healthy.stderr);
    const pass = JSON.parse(healthy.stdout) as { verdict: string; check: string; detail: string }[];
    assert.deepEqual(pass.map((r) => r.check).sort(), ['CA TLS', 'CA monitoring', 'RBAC', 'agent bundle', 'clock vs the API server', 'clock vs the CA', 'root ConfigMaps', 'root file']);
    for (const result of pass) {
      // No agent runs here: agent-e2e.test.ts compares a real agent's bundle.
      if (result.check === 'agent bundle') assert.match(`${result.verdict} ${result.detail}`, /^SKIP no --agent-status-addr/);
      else assert.equal(result.verdict, 'PASS', `${result.check}: ${result.detail}`);
    }

    // A wrong TLS name, a ConfigMap with another root (the CA may not repair it: update is forbidden).
    kube.state.forbidden.add('update configmaps');
    try {
      const edited = kube.state.get('configmaps', 'team-a', ROOT_CONFIGMAP_NAME)!;
      kube.state.put('configmaps', { ...edited, data: { 'root-cert.pem': kube.caPem } });
      const broken = await status(['--server-name', 'wrong.example.com']);
      assert.equal(broken.code, 1, broken.stdout + broken.stderr);
      const fail = lines(broken.stdout);
      assert.match(fail.get('CA TLS')!, /^FAIL name mismatch: the server certificate does not name "wrong\.example\.com" in a subjectAltName \(it names DNS:meshca\.istio-system\.svc/);
      assert.match(fail.get('root ConfigMaps')!, /^FAIL istio-ca-root-cert differs from the CA's bundle in team-a$/);
      assert.match(fail.get('RBAC')!, /^FAIL as kubeconfig user "reviewer" \(context standin\): not allowed to update configmaps\/istio-ca-root-cert \(root distribution\)$/);
      assert.match(broken.stdout, /fix: set --server-name \(env ISTIOD_SAN\) to one of the names it shows/);
      assert.match(broken.stdout, /fix: grant the CA's rules: kubectl apply -f deploy\/kubernetes\/ca-rbac\.yaml/);
    } finally {
      kube.state.forbidden.delete('update configmaps');
    }

    // A root file with another root: the CA is an unknown root, and the file lacks the CA's bundle (in process: the
    // same checks the binary ran above, without another process start).
    const otherRoot = path.join(temp.dir, 'other-root.pem');
    writeFileSync(otherRoot, kube.caPem);
    const wrongRoot = await runStatusChecks({
      caAddr: ca.grpcAddress,
      rootCertPath: otherRoot,
      serverName: SERVER_NAME,
      monitoring: new URL(`http://${monitoring}`),
      kubeconfig: kube.kubeconfigPath,
      caNamespace: 'istio-system',
      maxClockSkewSeconds: 5,
      timeoutMs: 10_000,
      env: {},
      now: Date.now,
    });
    const unknown = lines(formatResults(wrongRoot));
    assert.match(unknown.get('CA TLS')!, /^FAIL unknown root: the CA's certificate does not chain to .*other-root\.pem \([A-Z_]+\)$/);
    assert.match(unknown.get('root file')!, /^FAIL .*other-root\.pem lacks 2 of the CA's 2 root\(s\)/);
    assert.match(wrongRoot[0]!.fix!, /^use the mesh's root as --ca-root-cert: kubectl get configmap istio-ca-root-cert/);
  }
});

describe('meshca status checks that need no CA', () => {
  const statusTemp = makeTempDir('meshca-status-');
  after(() => statusTemp.cleanup());

  test('a refused CA, an unreachable monitoring server and no kubeconfig are each one line', async () => {
    const rootFile = path.join(statusTemp.dir, 'root.pem');
    writeFileSync(rootFile, certificateToPem(createCaCertificate({ subject: { organization: 'test' }, subjectKey: generateKeyPairFor('ec-p256').privateKey, notAfter: new Date(Date.now() + 3600_000) })));
    const port = await closedPort();
    const options: StatusOptions = {
      caAddr: `127.0.0.1:${port}`,
      rootCertPath: rootFile,
      serverName: 'meshca.istio-system.svc',
      monitoring: new URL(`http://127.0.0.1:${port}`),
      kubeconfig: undefined,
      caNamespace: 'istio-system',
      maxClockSkewSeconds: 5,
      timeoutMs: 5000,
      env: {},
      now: Date.now,
    };
    const results = await runStatusChecks(options);
    assert.deepEqual(
      results.map((r) => [r.verdict, r.check]),
      [
        ['FAIL', 'CA TLS'],
        ['FAIL', 'CA monitoring'],
        ['SKIP', 'root file'],
        ['SKIP', 'agent bundle'],
        ['SKIP', 'clock vs the CA'],
        ['SKIP', 'Kubernetes'],
      ],
    );
    assert.equal(results[0]!.detail, `127.0.0.1:${port}: connection refused`);
    assert.equal(results[0]!.fix, 'start meshca ca, or point --ca-addr (env CA_ADDR) at its --grpc-addr');
    assert.equal(results[1]!.detail, `cannot reach the CA monitoring server at http://127.0.0.1:${port} (ECONNREFUSED)`);
    assert.match(results[5]!.detail, /^no kubeconfig: ConfigMap and RBAC checks skipped/);
    assert.match(results[3]!.detail, /^no --agent-status-addr/);
  });

  test('clock skew: within the limit passes, beyond it warns with a fix', () => {
    const local = Date.parse('2030-01-01T00:00:10.500Z');
    assert.equal(checkClock('the CA', Date.parse('2030-01-01T00:00:10Z'), local, 5).verdict, 'PASS');
    const skewed = checkClock('the CA', Date.parse('2030-01-01T00:00:00Z'), local + 60_000, 5);
    assert.equal(skewed.verdict, 'WARN');
    assert.equal(skewed.detail, 'this clock is 70s ahead of the CA (more than --max-clock-skew 5s)');
    assert.match(skewed.fix!, /^run NTP/);
  });
});
