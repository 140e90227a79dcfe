/** `meshca inspect`, run as the real binary on bundles we issue. */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import type { KeyObject } from 'node:crypto';
import {
  certificateToPem,
  createCaCertificate,
  createCsr,
  decodePem,
  exportPrivateKeyPem,
  generateKeyPairFor,
  LeafIssuer,
  parseCertificate,
  parseCsr,
} from '../src/pki/index.js';
import { makeTempDir, runMeshca } from './support/process.js';

function bundle(): { leaf: string; root: string; csr: string; leafKey: KeyObject } {
  const rootKeys = generateKeyPairFor('ec-p256');
  const rootDer = createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: rootKeys.privateKey, notAfter: new Date(Date.now() + 86400_000) });
  const leafKey = generateKeyPairFor('rsa-2048').privateKey;
  const csr = createCsr({ privateKey: leafKey, uris: ['spiffe://cluster.local/ns/default/sa/demo'] });
  const leafDer = new LeafIssuer({ certificate: parseCertificate(rootDer), privateKey: rootKeys.privateKey }).issue({
    spkiDer: parseCsr(csr).spkiDer,
    uris: ['spiffe://cluster.local/ns/default/sa/demo'],
    ttlSeconds: 3600,
  }).der;
  return { leaf: certificateToPem(leafDer), root: certificateToPem(rootDer), csr, leafKey };
}

describe('meshca inspect', () => {
  const { leaf, root, csr, leafKey } = bundle();
  const temp = makeTempDir('meshca-inspect-');
  after(() => temp.cleanup());

  it('prints each certificate and says the chain verifies', async () => {
    const result = await runMeshca(['inspect', '-'], { input: leaf + root });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /SPIFFE ID:\s+spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo/);
    assert.match(result.stdout, /issuer:\s+O=cluster\.local/);
    assert.match(result.stdout, /key:\s+RSA 2048/);
    assert.match(result.stdout, /key:\s+ECDSA P-256/);
    assert.match(result.stdout, /not after:\s+\S+ \(5\dm\d+s left\)/);
    assert.match(result.stdout, /chain: verifies \(spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo -> O=cluster\.local\)/);
  });

  it('--json gives machine-readable fields, and a broken chain exits 1', async () => {
    const result = await runMeshca(['inspect', '--json', '-'], { input: leaf });
    assert.equal(result.code, 1);
    const report = JSON.parse(result.stdout) as { items: { spiffeId: string; serial: string; remainingSeconds: number }[]; chain: { verified: boolean; error: string } };
    assert.equal(report.items[0]!.spiffeId, 'spiffe://cluster.local/ns/default/sa/demo');
    assert.match(report.items[0]!.serial, /^[0-9a-f]{32}$/);
    assert.ok(report.items[0]!.remainingSeconds > 3500);
    assert.equal(report.chain.verified, false);
    assert.match(report.chain.error, /no trust anchor/);
  });

  it('decodes CSRs', async () => {
    const result = await runMeshca(['inspect', '-'], { input: csr });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /certificate request/);
    assert.match(result.stdout, /SANs:\s+URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo/);
    assert.match(result.stdout, /signature:\s+valid/);
  });

  it('says clearly when the input is not PEM', async () => {
    const result = await runMeshca(['inspect', '-'], { input: 'hello' });
    assert.equal(result.code, 1);
    assert.equal(result.stderr, 'meshca: no PEM block found in the input, and it is not one DER certificate, certificate request or private key\n');
  });

  it('reads DER certificates, CSRs and keys (detected strictly), describes private keys without printing them, and says when a file is missing', async () => {
    const files = {
      cert: decodePem(leaf)[0]!.der,
      csr: decodePem(csr)[0]!.der,
      key: leafKey.export({ format: 'der', type: 'pkcs8' }),
      trailing: Buffer.concat([decodePem(leaf)[0]!.der, Buffer.from([0])]),
    };
    for (const [name, der] of Object.entries(files)) writeFileSync(path.join(temp.dir, `${name}.der`), der);
    const keyPem = exportPrivateKeyPem(leafKey);
    const missing = path.join(temp.dir, 'nope.pem');
    // In parallel: each run is a process start.
    const [pemKey, absent, cert, request, key, trailing] = await Promise.all([
      runMeshca(['inspect', '-'], { input: leaf + keyPem + root }),
      runMeshca(['inspect', missing]),
      ...Object.keys(files).map((name) => runMeshca(['inspect', path.join(temp.dir, `${name}.der`)])),
    ]);
    assert.equal(pemKey!.code, 0, pemKey!.stderr);
    assert.match(pemKey!.stdout, /\[1\] private key \(PKCS#1; not printed\)\n {4}key: {9}RSA 2048\n {4}public key: {2}sha256 [0-9A-F:]{95}\n {4}matches: {5}certificate \[0\]\n/);
    const body = keyPem.split('\n')[1]!;
    assert.ok(!pemKey!.stdout.includes(body.slice(0, 20)) && !pemKey!.stdout.includes('PRIVATE KEY-----'), 'no key material in the output');
    assert.equal(absent!.code, 1);
    assert.equal(absent!.stderr, `meshca: input file ${missing} does not exist: check the path (or give '-' to read standard input)\n`);

    assert.match(cert!.stdout, /^\[0\] certificate\n {4}subject:/);
    assert.match(cert!.stdout, /SPIFFE ID:\s+spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo/);
    assert.match(request!.stdout, /^\[0\] certificate request\n[^]*signature:\s+valid/);
    assert.equal(key!.code, 0, key!.stderr);
    assert.match(key!.stdout, /^\[0\] private key \(PKCS#8; not printed\)\n {4}key: {9}RSA 2048\n/);
    assert.equal(trailing!.code, 1);
    assert.equal(trailing!.stderr, 'meshca: no PEM block found in the input, and it is not one DER certificate, certificate request or private key\n');
  });
});
