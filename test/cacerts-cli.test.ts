/**
 * `meshca cacerts root|intermediate`: an offline root and per-cluster intermediates in Istio's cacerts layout,
 * with key files 0600, checked with openssl, and loaded by the real `meshca ca --ca-source cacerts`, which issues
 * chains openssl verifies. Misuse (overwriting, the root key in the Secret directory, bad flags) ends in one line.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { caClient, createCertificate, opensslKeyAndCsr } from './ca-helpers.js';
import { foreignSigningTrustDomains } from '../src/server/signing-trust-domain.js';
import { startCaProcess } from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslText, opensslVerify, opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir, runMeshca } from './support/process.js';

const mode = (file: string): number => statSync(file).mode & 0o777;
const blocks = (text: string): string[] => text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? [];

describe('meshca cacerts', () => {
  const temp = makeTempDir('meshca-cacerts-cli-');
  const rootDir = path.join(temp.dir, 'root');
  let kube: KubeStandin;

  before(async () => {
    kube = await startKubeStandin();
  });

  after(async () => {
    await kube?.close();
    temp.cleanup();
  });

  test('root: RSA-4096 by default, 10 years, root-key.pem 0600', async () => {
    const result = await runMeshca(['cacerts', 'root', '--out', rootDir, '--org', 'Example Mesh']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /wrote .*root-cert\.pem and .*root-key\.pem \(0600\)/);
    assert.deepEqual(readdirSync(rootDir).sort(), ['root-cert.pem', 'root-key.pem']);
    assert.equal(mode(path.join(rootDir, 'root-key.pem')), 0o600);
    const text = opensslText(readFileSync(path.join(rootDir, 'root-cert.pem'), 'utf8'));
    assert.match(text, /Public-Key: \(4096 bit\)/);
    assert.match(text, /Subject: O ?= ?Example Mesh, CN ?= ?Root CA/);
    assert.match(text, /CA:TRUE/);
    assert.match(text, /Certificate Sign, CRL Sign/);
    assert.doesNotMatch(text, /Subject Alternative Name/, 'a root names no trust domain unless asked: it may serve several');
    const enddate = execFileSync('openssl', ['x509', '-noout', '-enddate'], { input: readFileSync(path.join(rootDir, 'root-cert.pem')), encoding: 'utf8' });
    const years = (Date.parse(enddate.replace('notAfter=', '').trim()) - Date.now()) / (365.25 * 86400_000);
    assert.ok(years > 9.9 && years < 10.1, `root lifetime ${years} years`);
  });

  test('intermediate: Istio cacerts layout per cluster that openssl and the real CA accept', async () => {
    const cluster1 = path.join(temp.dir, 'cluster1');
    const cluster2 = path.join(temp.dir, 'cluster2');
    const one = await runMeshca(['cacerts', 'intermediate', '--root', rootDir, '--out', cluster1, '--cluster', 'cluster1', '--key', 'ec-p256']);
    assert.equal(one.code, 0, one.stderr);
    assert.match(one.stdout, /kubectl create secret generic cacerts -n istio-system --from-file=/);
    const two = await runMeshca(['cacerts', 'intermediate', '--root', rootDir, '--out', cluster2, '--cluster', 'cluster2', '--key', 'rsa-2048', '--ttl', '30d', '--trust-domain', 'mesh.example']);
    assert.equal(two.code, 0, two.stderr);

    assert.deepEqual(readdirSync(cluster1).sort(), ['ca-cert.pem', 'ca-key.pem', 'cert-chain.pem', 'root-cert.pem']);
    assert.equal(mode(path.join(cluster1, 'ca-key.pem')), 0o600);
    const rootPem = readFileSync(path.join(rootDir, 'root-cert.pem'), 'utf8');
    const caCert = readFileSync(path.join(cluster1, 'ca-cert.pem'), 'utf8');
    assert.equal(readFileSync(path.join(cluster1, 'root-cert.pem'), 'utf8'), rootPem);
    assert.deepEqual(blocks(readFileSync(path.join(cluster1, 'cert-chain.pem'), 'utf8')), [...blocks(caCert), ...blocks(rootPem)]);
    const verified = opensslVerify(caCert, '', rootPem);
    assert.ok(verified.ok, verified.output);
    const text = opensslText(caCert);
    assert.match(text, /CA:TRUE, pathlen:0/);
    assert.match(text, /CN ?= ?Intermediate CA cluster1/);
    // The X.509-SVID standard: a signing certificate SHOULD be an SVID of its trust domain, with no path.
    assert.match(text, /X509v3 Subject Alternative Name: *\n *URI:spiffe:\/\/cluster\.local\n/);
    const text2 = opensslText(readFileSync(path.join(cluster2, 'ca-cert.pem'), 'utf8'));
    assert.match(text2, /Public-Key: \(2048 bit\)/);
    assert.match(text2, /X509v3 Subject Alternative Name: *\n *URI:spiffe:\/\/mesh\.example\n/);

    // The directory is a working cacerts: the real CA loads it and issues chains openssl verifies.
    const ca = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'ca-state')], { ROOT_CA_DIR: cluster1 });
    const client = caClient(ca.grpcAddress, rootPem);
    try {
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin' });
      const { csrPem } = opensslKeyAndCsr(temp.dir, 'workload', { spiffeId: 'spiffe://cluster.local/ns/default/sa/httpbin' });
      const result = await createCertificate(client, { csr: csrPem, token, validitySeconds: 3600 });
      if (!result.ok) assert.fail(`${grpc.status[result.code]}: ${result.details}`);
      const check = opensslVerifyResponseChain(result.chain);
      assert.ok(check.ok, check.output);
      // Cluster 2 trusts cluster 1's workloads: same root.
      const crossCheck = opensslVerify(result.chain[0]!, result.chain[1]!, readFileSync(path.join(cluster2, 'root-cert.pem'), 'utf8'));
      assert.ok(crossCheck.ok, crossCheck.output);
      assert.ok(!ca.proc.records.some((r) => r.level === 'warn'), ca.proc.lines.join('\n'));
    } finally {
      client.close();
      await ca.proc.stop();
    }

    // Cluster 2's CA certificate is for mesh.example: a CA of cluster.local started on it says so, with the fix.
    const other = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'ca-state-2')], { ROOT_CA_DIR: cluster2 });
    try {
      const warning = await other.proc.waitForLog(/^the signing certificate is a CA of trust domain "mesh\.example", but this CA issues in "cluster\.local": /);
      assert.equal(warning.level, 'warn');
      assert.match(String(warning.msg), /re-issue it with meshca cacerts intermediate --trust-domain cluster\.local/);
      assert.deepEqual(warning.signingCertTrustDomains, ['mesh.example']);
    } finally {
      await other.proc.stop();
    }
    // The same material under an alias of that trust domain is expected: no warning.
    const aliased = await startCaProcess(
      ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'ca-state-3'), '--trust-domain-aliases', 'mesh.example'],
      { ROOT_CA_DIR: cluster2 },
    );
    try {
      assert.ok(!aliased.proc.records.some((r) => /signing certificate is a CA of trust domain/.test(String(r.msg))), aliased.proc.lines.join('\n'));
    } finally {
      await aliased.proc.stop();
    }
  });

  test('the trust domains a signing certificate names that the CA does not issue in', () => {
    const own = 'cluster.local';
    assert.deepEqual(foreignSigningTrustDomains([], own, []), []);
    assert.deepEqual(foreignSigningTrustDomains(['spiffe://cluster.local'], own, []), []);
    assert.deepEqual(foreignSigningTrustDomains(['spiffe://old.example'], own, ['old.example']), [], 'an alias is the CA\'s own');
    assert.deepEqual(foreignSigningTrustDomains(['spiffe://mesh.example', 'https://example.org/ca', 'spiffe://mesh.example/ns/istio-system/sa/citadel'], own, []), ['mesh.example']);
    assert.deepEqual(foreignSigningTrustDomains(['spiffe://a.example', 'spiffe://b.example', 'spiffe://Bad_TD', 'SPIFFE://c.example'], own, []), ['a.example', 'b.example'], 'what is no SPIFFE ID names no trust domain');
  });

  test('misuse ends in one line and exit 2 (a bad flag) or 1, and nothing is overwritten', async () => {
    const cluster1 = path.join(temp.dir, 'cluster1');
    const keyBefore = readFileSync(path.join(cluster1, 'ca-key.pem'), 'utf8');
    // code: 2 for a bad flag value (a usage error), 1 for a refusal of the files at hand.
    const cases: { args: string[]; message: RegExp; code: 1 | 2 }[] = [
      { args: ['intermediate', '--root', rootDir, '--out', cluster1, '--cluster', 'cluster1', '--key', 'ec-p256'], message: /cluster1\/ca-cert\.pem already exists; choose another --out, or pass --force/, code: 1 },
      { args: ['root', '--out', rootDir, '--key', 'ec-p256'], message: /root\/root-cert\.pem already exists/, code: 1 },
      { args: ['intermediate', '--root', rootDir, '--out', rootDir, '--cluster', 'c'], message: /--out must not be the --root directory/, code: 2 },
      { args: ['intermediate', '--root', path.join(temp.dir, 'nowhere'), '--out', path.join(temp.dir, 'x'), '--cluster', 'c'], message: /cannot read the root in .*nowhere: .*ENOENT.*\(make one with: meshca cacerts root --out/, code: 1 },
      { args: ['root', '--out', path.join(temp.dir, 'y'), '--key', 'dsa-1024'], message: /invalid --key "dsa-1024": unknown key type/, code: 2 },
      { args: ['root', '--out', path.join(temp.dir, 'z'), '--ttl', 'forever'], message: /invalid --ttl "forever"/, code: 2 },
      { args: ['intermediate', '--root', rootDir, '--out', path.join(temp.dir, 'w'), '--cluster', 'bad name'], message: /invalid --cluster "bad name"/, code: 2 },
      { args: ['intermediate', '--root', rootDir, '--out', path.join(temp.dir, 'v'), '--cluster', 'c', '--trust-domain', 'Mesh.Example'], message: /invalid --trust-domain "Mesh\.Example": SPIFFE trust domain "Mesh\.Example" may contain only lowercase letters/, code: 2 },
      { args: ['root', '--out', path.join(temp.dir, 'u'), '--trust-domain', 'spiffe://mesh.example'], message: /invalid --trust-domain "spiffe:\/\/mesh\.example"/, code: 2 },
    ];
    const results = await Promise.all(cases.map((c) => runMeshca(['cacerts', ...c.args])));
    results.forEach((result, index) => {
      assert.equal(result.code, cases[index]!.code, result.stderr);
      const lines = result.stderr.trim().split('\n');
      assert.equal(lines.length, 1, result.stderr);
      assert.match(lines[0]!, /^meshca: /);
      assert.match(lines[0]!, cases[index]!.message);
    });
    assert.equal(readFileSync(path.join(cluster1, 'ca-key.pem'), 'utf8'), keyBefore);
    const forced = await runMeshca(['cacerts', 'intermediate', '--root', rootDir, '--out', cluster1, '--cluster', 'cluster1', '--key', 'ec-p256', '--force', '--ttl', '40000d']);
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(forced.stdout, /capped at the root expiry/);
    assert.notEqual(readFileSync(path.join(cluster1, 'ca-key.pem'), 'utf8'), keyBefore);
  });
});
