/**
 * PKCS#11 direct mode (src/ca/sources/pkcs11/direct.ts) against a real SoftHSM2 token: every workload certificate
 * is signed inside the token. Leaves issued through the CertificateAuthority (whose final check verifies each
 * leaf's signature, since the signer declares no in-process key) are checked again by `openssl verify
 * -x509_strict` and by @peculiar/x509 as a second, independent parser. P-256 and P-384 token keys hold
 * self-signed roots; the RSA-2048 token key holds an intermediate under a software root, so the chain has three
 * links. Also: a certificate that is not the token key's, or that does not reach the bundle, is refused at
 * construction, and a token that does not sign gives UNAVAILABLE (UPSTREAM_UNAVAILABLE), not a broken chain.
 */
import assert from 'node:assert/strict';
import { verify } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { CertificateAuthority } from '../src/ca/authority.js';
import { CaConfigError, CaError, WithheldChainError } from '../src/ca/errors.js';
import type { WorkloadSigner } from '../src/ca/signer.js';
import { Pkcs11DirectSigner, type TokenKey } from '../src/ca/sources/pkcs11/direct.js';
import { generatePkcs11KeyPair } from '../src/ca/sources/pkcs11/keygen.js';
import { openPkcs11Key, type Pkcs11Key } from '../src/ca/sources/pkcs11/pkcs11-key.js';
import {
  caCertificateTbs,
  certificateFromTbs,
  certificateToPem,
  createCaCertificate,
  createCsr,
  parseCertificate,
  WorkloadId,
  type ParsedCertificate,
  generateKeyPairFor,
} from '../src/pki/index.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { initSoftHsmToken, type SoftHsmToken } from './support/softhsm.js';
import { x509 } from './standins/pki.js';

const PIN_ENV = 'MESHCA_TEST_PKCS11_PIN';
const DAY_MS = 86_400_000;
const SPIFFE = 'spiffe://cluster.local/ns/shop/sa/cart';
const SPECS = { p256: 'ec-p256', rsa: 'rsa-2048', p384: 'ec-p384' } as const;
type KeyName = keyof typeof SPECS;

let token: SoftHsmToken;
const keys = new Map<KeyName, Pkcs11Key>();
const workloadKey = generateKeyPairFor('ec-p256');
const csrPem = createCsr({ privateKey: workloadKey.privateKey, uris: [SPIFFE] });

const tokenKey = (name: KeyName): Pkcs11Key => {
  const key = keys.get(name);
  assert.ok(key, `the ${name} token key is open`);
  return key;
};

/** A self-signed CA certificate for a token key, signed in the token. */
async function tokenRoot(key: TokenKey, commonName: string): Promise<ParsedCertificate> {
  const { tbs, profile } = caCertificateTbs({ subject: { organization: 'meshca', commonName }, subjectKey: key.publicKey, notAfter: new Date(Date.now() + 30 * DAY_MS) }, key.publicKey);
  return parseCertificate(certificateFromTbs(tbs, profile.algorithmIdentifier, await key.sign(profile.hash, tbs)));
}

/** A software root and, under it, an intermediate CA certificate for a token key. */
function softwareRootOver(key: TokenKey): { root: ParsedCertificate; intermediate: ParsedCertificate } {
  const rootKey = generateKeyPairFor('ec-p256');
  const root = parseCertificate(createCaCertificate({ subject: { organization: 'meshca', commonName: 'software root' }, subjectKey: rootKey.privateKey, notAfter: new Date(Date.now() + 60 * DAY_MS) }));
  const intermediate = parseCertificate(
    createCaCertificate({
      subject: { organization: 'meshca', commonName: 'HSM intermediate' },
      subjectKey: key.publicKey,
      issuer: { certificate: root, privateKey: rootKey.privateKey },
      notAfter: new Date(Date.now() + 30 * DAY_MS),
      pathLen: 0,
    }),
  );
  return { root, intermediate };
}

function authorityOver(signer: Pkcs11DirectSigner): CertificateAuthority {
  return new CertificateAuthority({ signer, defaultTtlSeconds: 3600, maxTtlSeconds: DAY_MS / 1000 });
}

/** The leaf read by @peculiar/x509: its signature verified with the issuer's key, its profile read back. */
async function peculiarCheck(leafPem: string, issuer: ParsedCertificate, signatureHash: string): Promise<void> {
  const leaf = new x509.X509Certificate(leafPem);
  const issuerCert = new x509.X509Certificate(issuer.der);
  assert.equal(leaf.issuer, issuerCert.subject);
  assert.equal(leaf.subject, '');
  assert.equal(await leaf.verify({ publicKey: issuerCert.publicKey, signatureOnly: true }), true, '@peculiar/x509 verifies the token signature');
  assert.equal((leaf.signatureAlgorithm as { hash?: { name?: string } }).hash?.name, signatureHash);
  const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
  assert.ok(san?.critical, 'a critical SAN (the subject is empty)');
  assert.deepEqual(san.names.toJSON(), [{ type: 'url', value: SPIFFE }]);
  assert.equal(leaf.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  assert.deepEqual(Buffer.from(leaf.publicKey.rawData), workloadKey.publicKey.export({ format: 'der', type: 'spki' }));
}

before(async () => {
  token = initSoftHsmToken('meshca-p11-direct');
  const env = { [PIN_ENV]: token.pin };
  const config = { modulePath: token.module, tokenLabel: token.label, pinEnv: PIN_ENV };
  // One after the other: SoftHSM2 answered CKR_GENERAL_ERROR once (CI, under load) to key pairs generated in
  // parallel sessions of one token.
  for (const [i, [name, spec]] of (Object.entries(SPECS) as [KeyName, (typeof SPECS)[KeyName]][]).entries()) {
    await generatePkcs11KeyPair({ ...config, keyLabel: `direct-${name}`, keyIdHex: `0${i + 1}`, spec }, env);
  }
  for (const name of Object.keys(SPECS) as KeyName[]) keys.set(name, await openPkcs11Key({ ...config, keyLabel: `direct-${name}` }, env));
});

after(() => {
  for (const key of keys.values()) key.close();
  token?.remove();
});

describe('PKCS#11 direct mode: workload certificates signed in the token', () => {
  const cases = [
    { name: 'P-256 token key, self-signed root', key: 'p256', hash: 'SHA-256', intermediate: false },
    { name: 'RSA-2048 token key, intermediate under a software root', key: 'rsa', hash: 'SHA-256', intermediate: true },
    { name: 'P-384 token key, self-signed root', key: 'p384', hash: 'SHA-384', intermediate: false },
  ] as const;
  for (const { name, key: keyName, hash, intermediate } of cases) {
    test(`${name}: the leaf verifies with openssl -x509_strict and @peculiar/x509`, async () => {
      const key = tokenKey(keyName);
      const { root, signingCert } = intermediate
        ? ((made) => ({ root: made.root, signingCert: made.intermediate }))(softwareRootOver(key))
        : await tokenRoot(key, `HSM ${keyName}`).then((cert) => ({ root: cert, signingCert: cert }));
      const signer = new Pkcs11DirectSigner({ key, certificate: signingCert, chain: intermediate ? [root] : [], roots: [root] });
      assert.equal((signer as WorkloadSigner).inProcessMaterial, undefined, 'no in-process key: the final check verifies every leaf');
      assert.deepEqual(signer.maxNotAfter(), signingCert.notAfter);
      const status = signer.status();
      assert.deepEqual([status.source, status.mode, status.signingCertSubject, status.roots.length], ['pkcs11', 'direct', signingCert.subject, 1]);

      const issued = await authorityOver(signer).issue({ csrPem, identity: WorkloadId.parse(SPIFFE), requestedTtlSeconds: 7200 });
      const rootPem = certificateToPem(root.der);
      // Like LocalSigner: [leaf, signing cert and intermediates (none when a root signs), roots bundle].
      assert.deepEqual(issued.chain.slice(1), intermediate ? [certificateToPem(signingCert.der), rootPem] : [rootPem]);
      assert.equal(signer.trustBundlePem(), rootPem);
      assert.equal(issued.chain[0], certificateToPem(issued.leafDer));
      const leaf = parseCertificate(issued.leafDer);
      assert.equal(leaf.serialHex, issued.serialHex);
      assert.equal(leaf.notAfter.getTime(), issued.notAfter.getTime());
      assert.equal(leaf.notAfter.getTime() - leaf.notBefore.getTime(), 7200_000 + 120_000, 'two hours, backdated by the clock-skew grace');
      assert.equal(verify(hash.replace('-', '').toLowerCase(), leaf.tbs, key.publicKey, leaf.signature), true);

      const openssl = opensslVerifyResponseChain(issued.chain);
      assert.ok(openssl.ok, openssl.output);
      await peculiarCheck(issued.chain[0]!, signingCert, hash);
      await signer.close();
    });
  }

  test('a token key that does not belong to the certificate is refused at construction, in one line', async () => {
    const rsaRoot = await tokenRoot(tokenKey('rsa'), 'HSM rsa');
    const refused = (pattern: RegExp) => (error: unknown): boolean => {
      assert.ok(error instanceof CaConfigError, `a CaConfigError, not ${String(error)}`);
      assert.doesNotMatch(error.message, /\n/);
      assert.match(error.message, pattern);
      return true;
    };
    assert.throws(
      () => new Pkcs11DirectSigner({ key: tokenKey('p256'), certificate: rsaRoot, chain: [], roots: [rsaRoot] }),
      refused(/^PKCS#11: the token key does not match the --pkcs11-cert certificate "O=meshca, CN=HSM rsa"; give the certificate issued for this key/),
    );
    // The right key, but a bundle the certificate does not chain to.
    const { intermediate } = softwareRootOver(tokenKey('rsa'));
    assert.throws(
      () => new Pkcs11DirectSigner({ key: tokenKey('rsa'), certificate: intermediate, chain: [], roots: [rsaRoot] }),
      refused(/^PKCS#11: the signing CA certificate does not chain to a root in the bundle/),
    );
  });

  test('a wrong signature from the token is withheld by the final check; a token that does not sign is UNAVAILABLE, or keeps the code of a CaError from the key', async () => {
    const key = tokenKey('p256');
    const root = await tokenRoot(key, 'HSM p256 faults');
    // A token that signs something else than it was given: the CA's own verification of every leaf catches it.
    const skewed: TokenKey = { publicKey: key.publicKey, sign: (digest, data) => key.sign(digest, Buffer.concat([data, Buffer.from([0])])) };
    const request = { csrPem, identity: WorkloadId.parse(SPIFFE), requestedTtlSeconds: 600 };
    await assert.rejects(authorityOver(new Pkcs11DirectSigner({ key: skewed, certificate: root, chain: [], roots: [root] })).issue(request), WithheldChainError);

    const unavailable = (pattern: RegExp) => (error: unknown): boolean => {
      assert.ok(error instanceof CaError && !(error instanceof WithheldChainError), String(error));
      assert.equal(error.code, 'UPSTREAM_UNAVAILABLE');
      assert.match(error.message, pattern);
      return true;
    };
    // The real key, closed under the signer (its sessions gone): the token's error, as one line.
    const closing = await openPkcs11Key({ modulePath: token.module, tokenLabel: token.label, pinEnv: PIN_ENV, keyLabel: 'direct-p256' }, { [PIN_ENV]: token.pin });
    const signer = new Pkcs11DirectSigner({ key: closing, certificate: root, chain: [], roots: [root] });
    closing.close();
    await assert.rejects(authorityOver(signer).issue(request), unavailable(/^PKCS#11: key "direct-p256" \(id 01\) in token "meshca-p11-direct" is closed$/));
    // A module's multi-line error is cut to its first line.
    const failing: TokenKey = { publicKey: key.publicKey, sign: () => Promise.reject(new Error('CKR_DEVICE_REMOVED\nstack')) };
    await assert.rejects(
      authorityOver(new Pkcs11DirectSigner({ key: failing, certificate: root, chain: [], roots: [root] })).issue(request),
      unavailable(/^PKCS#11: the token did not sign: CKR_DEVICE_REMOVED$/),
    );
    // A CaError from the key keeps its code: a refused signature is not an outage.
    const refusing: TokenKey = { publicKey: key.publicKey, sign: () => Promise.reject(new CaError('CERT_GEN_ERROR', 'PKCS#11: signing failed (CKR_MECHANISM_INVALID)')) };
    await assert.rejects(
      authorityOver(new Pkcs11DirectSigner({ key: refusing, certificate: root, chain: [], roots: [root] })).issue(request),
      (error: unknown) => error instanceof CaError && error.code === 'CERT_GEN_ERROR' && error.message === 'PKCS#11: signing failed (CKR_MECHANISM_INVALID)',
    );
  });
});
