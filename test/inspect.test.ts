/** `meshca inspect`, run as the real binary on bundles we issue. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { certificateToPem, createCaCertificate, createCsr, generateKeyPairFor, LeafIssuer, parseCertificate, parseCsr } from '../src/pki/index.js';
import { runMeshca } from './support/process.js';

function bundle(): { leaf: string; root: string; csr: string } {
  const rootKeys = generateKeyPairFor('ec-p256');
  const rootDer = createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: rootKeys.privateKey, notAfter: new Date(Date.now() + 86400_000) });
  const csr = createCsr({ privateKey: generateKeyPairFor('rsa-2048').privateKey, uris: ['spiffe://cluster.local/ns/default/sa/demo'] });
  const leafDer = new LeafIssuer({ certificate: parseCertificate(rootDer), privateKey: rootKeys.privateKey }).issue({
    spkiDer: parseCsr(csr).spkiDer,
    uris: ['spiffe://cluster.local/ns/default/sa/demo'],
    ttlSeconds: 3600,
  }).der;
  return { leaf: certificateToPem(leafDer), root: certificateToPem(rootDer), csr };
}

describe('meshca inspect', () => {
  const { leaf, root, csr } = bundle();

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
    assert.equal(result.stderr, 'meshca: no PEM block found in the input\n');
  });
});
