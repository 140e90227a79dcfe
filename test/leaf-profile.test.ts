/**
 * SECURITY.md, the leaf profile: every workload leaf has an empty subject (no CN) and exactly one SAN, the granted
 * URI; the final check refuses anything else from any key source. Leaves are made by openssl (a signer we did not
 * write) under the CA's own root, so only the profile can tell them apart; LeafIssuer's own leaves pass.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { buildCaMaterial, LocalSigner, type SignedChain } from '../src/ca/index.js';
import { CaError } from '../src/ca/errors.js';
import { IssuedChainChecker } from '../src/ca/issued-check.js';
import { certificateToPem, createCaCertificate, createCsr, exportPrivateKeyPem, generateKeyPairFor, parseCertificate, parseCsr } from '../src/pki/index.js';
import { makeTempDir } from './support/process.js';

const IDENTITY = 'spiffe://cluster.local/ns/default/sa/profile';

describe('workload leaf profile in the final check', () => {
  const temp = makeTempDir('meshca-leaf-profile-');
  after(() => temp.cleanup());
  const rootKey = generateKeyPairFor('ec-p256').privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: 'profile root' }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
  const local = new LocalSigner('self-signed', buildCaMaterial({ signingCert: root, privateKey: rootKey, chain: [], roots: [root] }));
  writeFileSync(path.join(temp.dir, 'root.key'), exportPrivateKeyPem(rootKey));
  writeFileSync(path.join(temp.dir, 'root.pem'), certificateToPem(root.der));
  const leafKey = generateKeyPairFor('ec-p256').privateKey;
  const csrPem = createCsr({ privateKey: leafKey });
  writeFileSync(path.join(temp.dir, 'leaf.csr'), csrPem);
  const spkiDer = parseCsr(csrPem).spkiDer;
  const expectation = { identities: [IDENTITY], spkiDer, advertisedBundles: [local.trustBundlePem()] };

  /** A leaf for the CSR's key signed by the root with openssl, with `subject` (as -subj) and extension lines. */
  function opensslLeaf(name: string, subject: string | null, extensions: string): SignedChain {
    writeFileSync(path.join(temp.dir, `${name}.ext`), `basicConstraints=critical,CA:FALSE\n${extensions}\n`);
    const args = ['x509', '-req', '-in', 'leaf.csr', '-CA', 'root.pem', '-CAkey', 'root.key', '-set_serial', '4660', '-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.pem`];
    if (subject !== null) args.push('-subj', subject);
    execFileSync('openssl', args, { cwd: temp.dir, stdio: 'pipe' });
    const pem = readFileSync(path.join(temp.dir, `${name}.pem`), 'utf8');
    const leaf = parseCertificate(Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64'));
    return { chain: [certificateToPem(leaf.der), local.trustBundlePem()], leafDer: leaf.der, serialHex: leaf.serialHex, notAfter: leaf.notAfter };
  }

  const refused = (signed: SignedChain, reason: RegExp): void =>
    assert.throws(
      () => new IssuedChainChecker().check(signed, expectation),
      (error: unknown) => error instanceof CaError && error.code === 'CERT_GEN_ERROR' && /failed the final check/.test(error.message) && reason.test(error.message),
    );

  test("LeafIssuer's leaves match the profile (read by openssl) and pass", async () => {
    const signed = await local.sign({ csrPem, spkiDer, uris: [IDENTITY], ttlSeconds: 600 });
    new IssuedChainChecker().check(signed, { ...expectation, signer: local });
    const text = execFileSync('openssl', ['x509', '-noout', '-subject', '-ext', 'subjectAltName'], { input: signed.chain[0], encoding: 'utf8' });
    assert.match(text, /^subject=\s*$/m);
    assert.match(text, new RegExp(`^\\s+URI:${IDENTITY.replace(/[/.]/g, '\\$&')}\\s*$`, 'm'));
  });

  test('an openssl leaf in the profile passes (the check does not refuse foreign leaves as such)', () => {
    new IssuedChainChecker().check(opensslLeaf('good', null, `subjectAltName=critical,URI:${IDENTITY}`), expectation);
  });

  test('a CN, another subject attribute, DNS/email/IP/otherName SANs, or two URIs are refused', () => {
    refused(opensslLeaf('cn-only', '/CN=meshca.istio-system.svc', ''), /the leaf has a subject \("CN=meshca\.istio-system\.svc"\)/);
    refused(opensslLeaf('cn-uri', '/CN=meshca.istio-system.svc', `subjectAltName=URI:${IDENTITY}`), /the leaf has a subject/);
    refused(opensslLeaf('org', '/O=workload', `subjectAltName=URI:${IDENTITY}`), /the leaf has a subject \("O=workload"\)/);
    refused(opensslLeaf('dns', null, `subjectAltName=critical,URI:${IDENTITY},DNS:meshca.istio-system.svc`), /SANs that were not granted \(DNS:meshca\.istio-system\.svc\)/);
    refused(opensslLeaf('email', null, `subjectAltName=critical,URI:${IDENTITY},email:a@b.example`), /not granted \(email:a@b\.example\)/);
    refused(opensslLeaf('ip', null, `subjectAltName=critical,URI:${IDENTITY},IP:10.0.0.1`), /not granted \(IP:10\.0\.0\.1\)/);
    refused(opensslLeaf('other', null, `subjectAltName=critical,URI:${IDENTITY},otherName:1.3.6.1.4.1.311.20.2.3;UTF8:x@y`), /names 2 subjectAltName\(s\)/);
    refused(opensslLeaf('two-uris', null, `subjectAltName=critical,URI:${IDENTITY},URI:spiffe://cluster.local/ns/default/sa/other`), /names 2 subjectAltName\(s\)/);
    refused(opensslLeaf('no-san', null, ''), /names 0 subjectAltName\(s\)/);
  });
});
