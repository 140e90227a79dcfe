/**
 * The real `meshca ca` (TokenReview against the Kubernetes stand-in) and the real `meshca agent`, talked to over
 * the agent's Unix socket with grpc-js like Envoy, and with `meshca fetch`.
 */
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { fingerprint } from '../src/ca/material.js';
import { checkAgentBundle, type CheckResult, type StatusOptions } from '../src/commands/status.js';
import { certificateToPem, certificatesFromPem, createCaCertificate, parseCertificate, generateKeyPairFor } from '../src/pki/index.js';
import { caClient, cleanEnv, createCertificate, getText, SERVER_NAME, startCa, type RunningCa } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { metricFamilies, type MetricFamily } from './support/metrics.js';
import { opensslVerify } from './support/openssl.js';
import { REPO_ROOT, runMeshca, startMeshca } from './support/process.js';
import {
  decodeSecret,
  defineSotwRuleTests,
  eventually,
  metricValue,
  namesIn,
  RawSotwStream,
  startAgentProcess,
  tempDir,
  type AgentProcess,
} from './agent-helpers.js';

interface IstioMetric {
  name: string;
  component: 'ca' | 'agent';
  type: string;
  labels: string[];
  extraLabels?: string[];
  exported: boolean;
  linuxOnly?: boolean;
}

const ISTIO_METRICS = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'docs/istio-metric-names.json'), 'utf8')) as { metrics: IstioMetric[] }).metrics;

/**
 * Holds one process's /metrics against docs/istio-metric-names.json: every Istio metric meshca claims for it is
 * there with Istio's type and Istio's labels (plus only the listed extras), and every other name is meshca's own,
 * a process metric, or (under Istio's prefixes) one of those claimed.
 */
function checkAgainstIstio(component: 'ca' | 'agent', families: Map<string, MetricFamily>, ownNames: RegExp): void {
  const claimed = ISTIO_METRICS.filter((m) => m.component === component && m.exported && (!m.linuxOnly || process.platform === 'linux'));
  assert.ok(claimed.length >= 6, `only ${claimed.length} Istio ${component} metrics listed`);
  for (const metric of claimed) {
    const family = families.get(metric.name);
    assert.ok(family, `${component}: ${metric.name} is listed as exported but /metrics has no such family`);
    assert.equal(family.type, metric.type, `${component}: ${metric.name} is a ${family.type}, Istio's is a ${metric.type}`);
    const allowed = new Set([...metric.labels, ...(metric.extraLabels ?? [])]);
    for (const labels of family.labelSets) {
      for (const label of metric.labels) assert.ok(labels.includes(label), `${component}: ${metric.name} sample without Istio's label ${label}`);
      for (const label of labels) assert.ok(allowed.has(label), `${component}: ${metric.name} has label ${label}, which is neither Istio's nor a listed extra`);
    }
  }
  const istioNames = new Set(ISTIO_METRICS.map((m) => m.name));
  for (const name of families.keys()) {
    assert.match(name, ownNames, `${component}: ${name} is outside the names meshca may export here`);
    if (/^(citadel_server_|istio_agent_(?!process_|nodejs_))/.test(name)) {
      assert.ok(claimed.some((m) => m.name === name), `${component}: ${name} looks like Istio's but is not a listed, exported Istio metric${istioNames.has(name) ? ' (listed as not exported)' : ''}`);
    }
  }
}

const firstLeaf = (chainPem: string): string => chainPem.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;

async function secretFor(agent: AgentProcess, token: string | undefined, name = 'default'): Promise<ReturnType<typeof decodeSecret>> {
  const stream = new RawSotwStream(agent.client, token);
  stream.subscribe([name]);
  try {
    return decodeSecret((await stream.next(20_000)).resources[0]!);
  } finally {
    stream.close();
  }
}

describe('meshca agent with meshca ca and the Kubernetes stand-in', () => {
  let kube: KubeStandin;
  let ca: RunningCa;
  let agent: AgentProcess;
  const dirs: (() => void)[] = [];
  let filesDir: string;

  before(async () => {
    kube = await startKubeStandin();
    const caState = tempDir('meshca-ca-e2e-');
    dirs.push(caState.cleanup);
    ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
    const files = tempDir('meshca-files-');
    dirs.push(files.cleanup);
    filesDir = files.dir;
    const { privateKey } = generateKeyPairFor('ec-p256');
    writeFileSync(
      path.join(filesDir, 'extra-root.pem'),
      certificateToPem(createCaCertificate({ subject: { commonName: 'extra' }, subjectKey: privateKey, notAfter: new Date(Date.now() + 86400_000) })),
    );
    agent = await startAgentProcess({ caAddress: ca.grpcAddress, caRootPem: ca.rootPem, args: ['--file-resource-dirs', filesDir] });
  });

  after(async () => {
    await agent?.stop();
    await ca?.proc.stop();
    await kube?.close();
    for (const cleanup of dirs) cleanup();
  });

  it('gives two workloads with different tokens on one socket different SPIFFE IDs, verifiable with openssl', async () => {
    const frontend = await kube.mintToken({ namespace: 'shop', serviceAccount: 'frontend' });
    const backend = await kube.mintToken({ namespace: 'shop', serviceAccount: 'backend' });
    const [a, b] = await Promise.all([secretFor(agent, frontend), secretFor(agent, backend)]);
    assert.equal(a.spiffeId, 'spiffe://cluster.local/ns/shop/sa/frontend');
    assert.equal(b.spiffeId, 'spiffe://cluster.local/ns/shop/sa/backend');
    assert.notEqual(a.keyPem, b.keyPem);
    for (const secret of [a, b]) {
      const result = opensslVerify(firstLeaf(secret.chainPem!), '', ca.rootPem);
      assert.ok(result.ok, result.output);
    }
    const roots = await secretFor(agent, frontend, 'ROOTCA');
    assert.equal(roots.rootsPem!.trim(), ca.rootPem.trim());
  });

  it("meshca status compares the ROOTCA bundle the agent serves with the CA's (PASS), and names the roots that differ (FAIL)", async () => {
    await secretFor(agent, await kube.mintToken({ namespace: 'shop', serviceAccount: 'frontend' }), 'ROOTCA');
    const rootFile = path.join(filesDir, 'status-root.pem');
    writeFileSync(rootFile, ca.rootPem);
    const monitoring = new URL(ca.monitoringUrl).host;
    const agentStatus = new URL(agent.statusUrl).host;
    // No kubeconfig (cleanEnv drops KUBECONFIG): the Kubernetes checks say SKIP, the rest run through the binary.
    const run = await runMeshca(
      ['status', '--ca-addr', ca.grpcAddress, '--ca-root-cert', rootFile, '--server-name', SERVER_NAME, '--monitoring-addr', monitoring, '--agent-status-addr', agentStatus, '-o', 'json'],
      { env: cleanEnv() },
    );
    assert.equal(run.code, 0, run.stdout + run.stderr);
    const results = JSON.parse(run.stdout) as CheckResult[];
    const bundle = results.find((r) => r.check === 'agent bundle');
    assert.equal(`${bundle?.verdict} ${bundle?.detail}`, `PASS ${agent.statusUrl}/debug/secrets: ROOTCA holds the CA's 1 root(s)`);

    // The same check against a CA whose bundle has another root: both differences are named.
    const { privateKey } = generateKeyPairFor('ec-p256');
    const other = fingerprint(parseCertificate(certificatesFromPem(certificateToPem(createCaCertificate({ subject: { commonName: 'other' }, subjectKey: privateKey, notAfter: new Date(Date.now() + 3600_000) })))[0]!));
    const ours = fingerprint(parseCertificate(certificatesFromPem(ca.rootPem)[0]!));
    const options = { timeoutMs: 5000, agentStatus: { host: '127.0.0.1', port: Number(new URL(agent.statusUrl).port), text: agentStatus } } as StatusOptions;
    const differs = await checkAgentBundle(options, { roots: [{ subject: 'CN=other', fingerprintSha256: other }], authenticators: [], trustedNodeAccounts: [] });
    assert.equal(differs.verdict, 'FAIL');
    assert.equal(differs.detail, `the ROOTCA bundle of the agent at ${agentStatus} lacks 1 of the CA's root(s) (${other.slice(0, 23)}) and holds 1 root(s) the CA does not (${ours.slice(0, 23)})`);
    assert.match(differs.fix!, /meshca secrets/);
  });

  it("exports Istio's metric names, types and labels (docs/istio-metric-names.json) and meshca_build_info as `meshca version` prints it", async () => {
    // An identity the first test already proved, so the later tests' count of cached identities holds.
    const token = await kube.mintToken({ namespace: 'shop', serviceAccount: 'frontend' });
    await secretFor(agent, token);
    // A file resource that cannot be read (istio_agent_num_file_secret_failures_total) and a CSR that does not
    // parse (citadel_server_csr_parsing_err_count), so those counters are seen moving, not only declared.
    const missing = new RawSotwStream(agent.client, token);
    missing.subscribe([`file-root:${path.join(filesDir, 'missing.pem')}`]);
    await assert.rejects(missing.next(20_000));
    missing.close();
    const client = caClient(ca.grpcAddress, ca.rootPem);
    try {
      const refused = await createCertificate(client, { csr: 'not a CSR', token });
      assert.equal(refused.ok, false);
    } finally {
      client.close();
    }

    const version = await runMeshca(['version', '--json']);
    assert.equal(version.code, 0, version.stderr);
    const info = JSON.parse(version.stdout) as { version: string; commit: string; nodeVersion: string };
    assert.match(info.commit, /^[0-9a-f]{40}$|^unknown$/);
    const caText = (await getText(`${ca.monitoringUrl}/metrics`)).body;
    const agentText = await agent.metrics();
    for (const text of [caText, agentText]) {
      assert.equal(metricValue(text, 'meshca_build_info', { version: info.version, commit: info.commit, node_version: info.nodeVersion }), 1);
    }
    assert.equal(metricValue(agentText, 'istio_agent_num_file_secret_failures_total'), 1);
    assert.equal(metricValue(caText, 'citadel_server_csr_parsing_err_count'), 1);
    assert.equal(metricValue(caText, 'citadel_server_csr_sign_err_count', { error: 'CSR_ERROR' }), 1);
    const rootSecondsLeft = metricValue(caText, 'citadel_server_root_cert_expiry_seconds');
    assert.ok(Math.abs(metricValue(caText, 'citadel_server_root_cert_expiry_timestamp') - Date.now() / 1000 - rootSecondsLeft) < 120, 'the *_seconds gauge counts down to the *_timestamp one');

    checkAgainstIstio('ca', metricFamilies(caText), /^(citadel_server_|meshca_|process_|nodejs_)/);
    checkAgainstIstio('agent', metricFamilies(agentText), /^(istio_agent_|meshca_)/);
  });

  it('ends a stream without a token, or with a foreign or expired token, with UNAUTHENTICATED naming the cause', async () => {
    const cases: [string | undefined, RegExp][] = [
      [undefined, /no workload token on this SDS stream.*istio_sds_credentials_header-bin/],
      [await kube.mintForeignToken({ namespace: 'shop', serviceAccount: 'frontend' }), /the CA refused the workload token/],
      [await kube.mintToken({ namespace: 'shop', serviceAccount: 'frontend', expired: true }), /the workload token .* expired at/],
      [await kube.mintToken({ namespace: 'shop', serviceAccount: 'frontend', audiences: ['not-istio-ca'] }), /the CA refused the workload token/],
    ];
    for (const [token, message] of cases) {
      const stream = new RawSotwStream(agent.client, token);
      stream.subscribe(['default']);
      const error = await stream.ended();
      assert.equal(error?.code, grpc.status.UNAUTHENTICATED, `token ${token?.slice(0, 12)}: ${error?.details}`);
      assert.match(error!.details, message);
    }
    // Nothing was cached for the refused streams: only the two identities proven above are.
    assert.equal(metricValue(await agent.metrics(), 'meshca_agent_secrets_cached'), 2);
  });

  describe('state-of-the-world rules on the real agent', () => {
    let token: string;
    before(async () => {
      token = await kube.mintToken({ namespace: 'shop', serviceAccount: 'rules' });
    });
    defineSotwRuleTests(() => ({
      client: agent.client,
      token,
      spiffeId: 'spiffe://cluster.local/ns/shop/sa/rules',
      extraName: `file-root:${path.join(filesDir, 'extra-root.pem')}`,
      nacks: async () => metricValue(await agent.metrics(), 'meshca_sds_nacks_total', { api: 'sotw' }),
      records: () => agent.proc.records,
    }));
  });

  it('meshca fetch prints the PEMs, writes them with --out, and fails with one line without a token', async () => {
    const { dir, cleanup } = tempDir('meshca-fetch-');
    try {
      const tokenFile = path.join(dir, 'token');
      writeFileSync(tokenFile, await kube.mintToken({ namespace: 'shop', serviceAccount: 'fetcher' }));
      // ALL and spiffe://<own trust domain> too: this CA federates with nobody, so ALL holds the own trust domain only.
      const printed = await runMeshca([
        'fetch', '--sds-socket', agent.socket, '--token-file', tokenFile,
        '--resource', 'default', '--resource', 'ROOTCA', '--resource', 'ALL', '--resource', 'spiffe://cluster.local',
      ]);
      assert.equal(printed.code, 0, printed.stderr);
      assert.match(printed.stdout, /^# default: spiffe:\/\/cluster\.local\/ns\/shop\/sa\/fetcher serial [0-9a-f]+ expires /m);
      assert.match(printed.stdout, /^# ROOTCA: 1 trusted root\(s\)/m);
      assert.match(printed.stdout, /^# ALL: SPIFFE validator, 1 trust domain\(s\): cluster\.local \(1 root\(s\)\) \(version /m);
      assert.match(printed.stdout, /^# spiffe:\/\/cluster\.local: 1 trusted root\(s\)/m);
      // The key is not printed unless asked for.
      assert.ok(!printed.stdout.includes('PRIVATE KEY'), printed.stdout);
      assert.ok(printed.stdout.includes('[private key hidden: use --show-key to print it, or --out DIR to write it to key.pem (0600)]\n'));
      const shown = await runMeshca(['fetch', '--sds-socket', agent.socket, '--token-file', tokenFile, '--show-key']);
      assert.match(shown.stdout, /-----BEGIN EC PRIVATE KEY-----/);

      const out = path.join(dir, 'out');
      const written = await runMeshca(['fetch', '--sds-socket', agent.socket, '--token-file', tokenFile, '--resource', 'default', '--resource', 'ROOTCA', '--out', out]);
      assert.equal(written.code, 0, written.stderr);
      assert.equal(statSync(path.join(out, 'key.pem')).mode & 0o777, 0o600);
      const chain = readFileSync(path.join(out, 'cert-chain.pem'), 'utf8');
      const result = opensslVerify(firstLeaf(chain), '', readFileSync(path.join(out, 'root-cert.pem'), 'utf8'));
      assert.ok(result.ok, result.output);

      const refused = await runMeshca(['fetch', '--sds-socket', agent.socket, '--timeout', '10s']);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^meshca: SDS stream for default failed: UNAUTHENTICATED: no workload token/);
      assert.equal(refused.stderr.trim().split('\n').length, 1);
    } finally {
      cleanup();
    }
  });

  it('meshca fetch --watch follows pushes', async () => {
    const { dir, cleanup } = tempDir('meshca-watch-');
    const roots = path.join(filesDir, 'watched-root.pem');
    const makeRoot = (name: string): string => {
      const { privateKey } = generateKeyPairFor('ec-p256');
      return certificateToPem(createCaCertificate({ subject: { commonName: name }, subjectKey: privateKey, notAfter: new Date(Date.now() + 86400_000) }));
    };
    writeFileSync(roots, makeRoot('watched-one'));
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, await kube.mintToken({ namespace: 'shop', serviceAccount: 'watcher' }));
    const watcher = startMeshca(['fetch', '--sds-socket', agent.socket, '--token-file', tokenFile, '--resource', `file-root:${roots}`, '--watch']);
    try {
      const printed = (subject: string): boolean => watcher.lines.some((line) => line.startsWith('# file-root:') && line.includes(subject));
      await eventually(() => printed('CN=watched-one'), 'the first secret to be printed', 20_000);
      writeFileSync(roots, makeRoot('watched-two'));
      await eventually(() => printed('CN=watched-two'), 'the pushed secret to be printed', 20_000);
    } finally {
      await watcher.stop();
      cleanup();
    }
  });
});

describe('CA stopped mid-run', () => {
  it('streams keep the old secret while the CA is down and get a new one when it returns, without help', async () => {
    const kube = await startKubeStandin();
    const caState = tempDir('meshca-ca-outage-');
    let ca: RunningCa | null = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath]);
    const address = ca.grpcAddress;
    const agent = await startAgentProcess({ caAddress: address, caRootPem: ca.rootPem, env: { SECRET_TTL: '8s' } });
    try {
      const token = await kube.mintToken({ namespace: 'shop', serviceAccount: 'outage' });
      const stream = new RawSotwStream(agent.client, token);
      stream.subscribe(['default']);
      const first = await stream.next(20_000);
      stream.ack(first, ['default']);
      const served = decodeSecret(first.resources[0]!);
      await ca.proc.stop();
      ca = null;
      // The renewal (at about half of the 8 s) fails and is retried; the stream hears nothing meanwhile.
      await eventually(
        async () => metricValue(await agent.metrics(), 'istio_agent_num_failed_outgoing_requests', { request_type: 'csr' }) >= 2,
        'renewal attempts against the stopped CA',
        20_000,
      );
      assert.equal(stream.inbox.pending, 0);
      assert.ok(agent.proc.records.some((r) => r.msg === 'certificate renewal failed; serving the current certificate and retrying'));
      // A workload that reconnects meanwhile still gets the current secret.
      const again = new RawSotwStream(agent.client, token);
      again.subscribe(['default']);
      assert.equal(decodeSecret((await again.next()).resources[0]!).leaf!.serialHex, served.leaf!.serialHex);
      again.close();

      ca = await startCa(caState.dir, ['--kubeconfig', kube.kubeconfigPath, '--grpc-addr', address]);
      const renewed = decodeSecret((await stream.next(45_000)).resources[0]!);
      assert.notEqual(renewed.leaf!.serialHex, served.leaf!.serialHex);
      assert.equal(renewed.spiffeId, 'spiffe://cluster.local/ns/shop/sa/outage');
      assert.ok(opensslVerify(firstLeaf(renewed.chainPem!), '', ca.rootPem).ok);
      assert.deepEqual(namesIn(first), ['default']);
      stream.close();
    } finally {
      await agent.stop();
      await ca?.proc.stop();
      await kube.close();
      caState.cleanup();
    }
  });
});
