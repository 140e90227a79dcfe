/** The embedded self-signed root: created once, persisted safely, reloaded, never silently replaced. */
import assert from 'node:assert/strict';
import { promises as fs, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { CaConfigError, CertificateAuthority, fingerprint, loadOrCreateSelfSignedCa } from '../src/ca/index.js';
import { createCsr, generateKeyPairFor, parseCertificate, certificatesFromPem, WorkloadId } from '../src/pki/index.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const temp = makeTempDir('meshca-selfsigned-');
after(() => temp.cleanup());
const options = (stateDir: string, keySpec: 'rsa-2048' | 'ec-p256' = 'ec-p256') => ({
  stateDir,
  trustDomain: 'cluster.local',
  keySpec,
  ttlSeconds: 3650 * 86400,
});

describe('self-signed CA', () => {
  it('creates the root on first start with safe file modes, and loads the same root on restart', async () => {
    const stateDir = path.join(temp.dir, 'first');
    const first = await loadOrCreateSelfSignedCa(options(stateDir, 'rsa-2048'));
    assert.equal(first.created, true);
    assert.equal(statSync(stateDir).mode & 0o777, 0o700);
    assert.equal(statSync(first.files.key).mode & 0o777, 0o600);
    const rootPem = await fs.readFile(first.files.roots, 'utf8');
    const root = parseCertificate(certificatesFromPem(rootPem)[0]!);
    assert.equal(root.subject, 'O=cluster.local');
    assert.equal(root.basicConstraints?.ca, true);
    assert.match(await fs.readFile(first.files.key, 'utf8'), /BEGIN RSA PRIVATE KEY/);
    const years = (root.notAfter.getTime() - root.notBefore.getTime()) / (365 * 86400_000);
    assert.ok(years > 9.9 && years < 10.1, `lifetime ~10 years, got ${years}`);

    const second = await loadOrCreateSelfSignedCa(options(stateDir, 'rsa-2048'));
    assert.equal(second.created, false);
    assert.equal(fingerprint(second.signer.current().signingCert), fingerprint(root));
    // No temp files left behind by the atomic writes.
    assert.deepEqual((await fs.readdir(stateDir)).sort(), ['ca-cert.pem', 'ca-key.pem', 'root-cert.pem']);
  });

  it('issues chains that openssl verifies', async () => {
    const { signer } = await loadOrCreateSelfSignedCa(options(path.join(temp.dir, 'issue')));
    const authority = new CertificateAuthority({ signer, defaultTtlSeconds: 86400, maxTtlSeconds: 90 * 86400 });
    const csrPem = createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey });
    const result = await authority.issue({ csrPem, identity: WorkloadId.parse('spiffe://cluster.local/ns/a/sa/b'), requestedTtlSeconds: 0 });
    assert.equal(result.chain.length, 2);
    assert.ok(result.chain.every((pem) => pem.endsWith('\n')));
    assert.equal(result.ttlSeconds, 86400);
    const verified = opensslVerifyResponseChain(result.chain);
    assert.ok(verified.ok, verified.output);
  });

  it('refuses a partial state directory and leaves it untouched', async () => {
    const stateDir = path.join(temp.dir, 'partial');
    const created = await loadOrCreateSelfSignedCa(options(stateDir));
    await fs.rm(created.files.cert);
    const keyBefore = await fs.readFile(created.files.key, 'utf8');
    await assert.rejects(loadOrCreateSelfSignedCa(options(stateDir)), (error: unknown) => {
      assert.ok(error instanceof CaConfigError);
      assert.match(error.message, /is incomplete \(missing ca-cert\.pem\); restore the missing files, or move the directory away/);
      return true;
    });
    assert.equal(await fs.readFile(created.files.key, 'utf8'), keyBefore);
    assert.deepEqual((await fs.readdir(stateDir)).sort(), ['ca-key.pem', 'root-cert.pem']);
  });

  it('refuses a key that does not match the certificate', async () => {
    const stateDir = path.join(temp.dir, 'mismatch');
    const created = await loadOrCreateSelfSignedCa(options(stateDir));
    const other = await loadOrCreateSelfSignedCa(options(path.join(temp.dir, 'other')));
    await fs.copyFile(other.files.key, created.files.key);
    await assert.rejects(loadOrCreateSelfSignedCa(options(stateDir)), /the private key does not match the signing CA certificate/);
  });

  it('refuses a garbage key file with the file name in the message', async () => {
    const stateDir = path.join(temp.dir, 'garbage');
    const created = await loadOrCreateSelfSignedCa(options(stateDir));
    await fs.writeFile(created.files.key, 'garbage');
    await assert.rejects(loadOrCreateSelfSignedCa(options(stateDir)), /ca-key\.pem is not a readable unencrypted PEM private key/);
  });
});
