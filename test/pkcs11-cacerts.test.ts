/**
 * `meshca cacerts root|intermediate --pkcs11-*` through the built CLI against a real SoftHSM2 token: a P-256 root
 * whose key is generated in the token, an intermediate whose key is in the token too and that the token root signs,
 * one with a key file signed by the token root, and
 * one in the token signed by a root-key.pem. openssl verifies the chains; no private key reaches the disk;
 * the keys in the token are sensitive and not extractable. Refusals (wrong PIN, a taken label, a root key that is
 * not the root certificate's, no PIN) are one line and leave nothing behind.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openPkcs11Key } from '../src/ca/sources/pkcs11/pkcs11-key.js';
import { certificatesFromPem, parseCertificate } from '../src/pki/index.js';
import { opensslText, opensslVerify } from './support/openssl.js';
import { runMeshca } from './support/process.js';
import { initSoftHsmToken, type SoftHsmToken } from './support/softhsm.js';

const blocks = (text: string): string[] => text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? [];

describe('meshca cacerts with the keys in a PKCS#11 token', () => {
  let token: SoftHsmToken;
  let env: NodeJS.ProcessEnv;
  let tokenFlags: string[];
  const dir = (name: string): string => path.join(token.dir, name);
  const read = (...parts: string[]): string => readFileSync(path.join(token.dir, ...parts), 'utf8');
  const noPrivateKeyIn = (name: string): void => {
    for (const file of readdirSync(dir(name))) {
      assert.doesNotMatch(file, /key/, `${name}/${file}`);
      assert.doesNotMatch(read(name, file), /PRIVATE KEY/, `${name}/${file}`);
    }
  };

  before(() => {
    token = initSoftHsmToken('meshca-cacerts');
    env = { SOFTHSM2_CONF: token.conf, MESHCA_PKCS11_PIN: token.pin };
    tokenFlags = ['--pkcs11-module', token.module, '--pkcs11-token-label', token.label];
  });

  after(() => {
    token?.remove();
  });

  test('root and intermediate keys made in the token; only certificates are written, and openssl verifies them', async () => {
    // A root in root-key.pem for the last case, made meanwhile (it does not touch the token).
    const fileRootRun = runMeshca(['cacerts', 'root', '--out', dir('file-root'), '--key', 'ec-p256'], { env });
    const root = await runMeshca(['cacerts', 'root', '--out', dir('root'), '--key', 'ec-p256', '--org', 'Example Corp', '--trust-domain', 'example.corp', ...tokenFlags, '--pkcs11-key-label', 'root-ca', '--pkcs11-key-id', '0a01'], { env });
    assert.equal(root.code, 0, root.stderr);
    assert.match(root.stdout, /^wrote .*root\/root-cert\.pem; the key is in the token only \(token "meshca-cacerts", key label "root-ca", id 0a01\)\n {2}root: O=Example Corp, CN=Root CA, expires .*, sha256 [0-9A-F:]{95}\n/);
    assert.match(root.stdout, /next: meshca cacerts intermediate --root .* --root-pkcs11-key-label root-ca/);
    assert.deepEqual(readdirSync(dir('root')), ['root-cert.pem']);
    const rootPem = read('root', 'root-cert.pem');
    assert.match(opensslText(rootPem), /ASN1 OID: prime256v1[\s\S]*CA:TRUE/);
    assert.match(opensslText(rootPem), /X509v3 Subject Alternative Name: *\n *URI:spiffe:\/\/example\.corp\n/, 'signed in the token with the SPIFFE ID asked for');
    const selfSigned = opensslVerify(rootPem, '', rootPem);
    assert.ok(selfSigned.ok, selfSigned.output);

    const cluster = await runMeshca(
      ['cacerts', 'intermediate', '--root', dir('root'), '--out', dir('cluster1'), '--cluster', 'cluster1', '--key', 'ec-p256', ...tokenFlags, '--pkcs11-key-label', 'cluster1-ca', '--root-pkcs11-key-label', 'root-ca'],
      { env },
    );
    assert.equal(cluster.code, 0, cluster.stderr);
    assert.match(cluster.stdout, /^wrote .*cluster1\/ca-cert\.pem, cert-chain\.pem and root-cert\.pem; the key is in the token only \(token "meshca-cacerts", key label "cluster1-ca", id [0-9a-f]{16}\)\n/);
    assert.match(cluster.stdout, /signed by the root key in token "meshca-cacerts", key label "root-ca", id 0a01\n/);
    assert.match(cluster.stdout, /next: meshca ca --ca-source pkcs11 .*--pkcs11-key-label cluster1-ca --pkcs11-cert .*cluster1\/cert-chain\.pem --pkcs11-roots .*cluster1\/root-cert\.pem\n$/);
    assert.deepEqual(readdirSync(dir('cluster1')).sort(), ['ca-cert.pem', 'cert-chain.pem', 'root-cert.pem']);
    const caPem = read('cluster1', 'ca-cert.pem');
    assert.equal(read('cluster1', 'root-cert.pem'), rootPem);
    assert.deepEqual(blocks(read('cluster1', 'cert-chain.pem')), [...blocks(caPem), ...blocks(rootPem)]);
    const verified = opensslVerify(caPem, '', rootPem);
    assert.ok(verified.ok, verified.output);
    // pathlen 1: --ca-source pkcs11 in its default intermediate mode puts a short-lived CA below this one.
    assert.match(opensslText(caPem), /CA:TRUE, pathlen:1/);
    assert.match(opensslText(caPem), /X509v3 Subject Alternative Name: *\n *URI:spiffe:\/\/cluster\.local\n/);

    // The intermediate's key in a file (today's cacerts Secret), signed by the root key in the token; PIN from a file.
    const pinFile = dir('user.pin');
    writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 });
    const fileKey = await runMeshca(
      ['cacerts', 'intermediate', '--root', dir('root'), '--out', dir('cluster2'), '--cluster', 'cluster2', '--key', 'ec-p256', ...tokenFlags, '--pkcs11-pin-file', pinFile, '--root-pkcs11-key-label', 'root-ca'],
      { env: { SOFTHSM2_CONF: token.conf, MESHCA_PKCS11_PIN: '' } },
    );
    assert.equal(fileKey.code, 0, fileKey.stderr);
    assert.match(fileKey.stdout, /ca-key\.pem \(0600\)[\s\S]*next: kubectl create secret generic cacerts/);
    assert.equal(statSync(path.join(dir('cluster2'), 'ca-key.pem')).mode & 0o777, 0o600);
    const second = opensslVerify(read('cluster2', 'ca-cert.pem'), '', rootPem);
    assert.ok(second.ok, second.output);
    assert.match(opensslText(read('cluster2', 'ca-cert.pem')), /CA:TRUE, pathlen:0/);

    // The other way round: the root key in root-key.pem (kept offline), the cluster CA's key in the CA host's token.
    const fileRoot = await fileRootRun;
    assert.equal(fileRoot.code, 0, fileRoot.stderr);
    const tokenKey = await runMeshca(
      ['cacerts', 'intermediate', '--root', dir('file-root'), '--out', dir('cluster3'), '--cluster', 'cluster3', '--key', 'ec-p256', ...tokenFlags, '--pkcs11-key-label', 'cluster3-ca'],
      { env },
    );
    assert.equal(tokenKey.code, 0, tokenKey.stderr);
    assert.doesNotMatch(tokenKey.stdout, /signed by the root key in token/);
    const third = opensslVerify(read('cluster3', 'ca-cert.pem'), '', read('file-root', 'root-cert.pem'));
    assert.ok(third.ok, third.output);

    noPrivateKeyIn('root');
    noPrivateKeyIn('cluster1');
    noPrivateKeyIn('cluster3');
    // The keys are in the token, sensitive and never extractable; the certificates carry their public halves.
    for (const [label, pem] of [['root-ca', rootPem], ['cluster1-ca', caPem]] as const) {
      const key = await openPkcs11Key({ modulePath: token.module, tokenLabel: token.label, keyLabel: label, pinEnv: 'PIN' }, { PIN: token.pin });
      try {
        assert.deepEqual({ kind: key.facts.kind, curve: key.facts.curve, extractable: key.facts.extractable, sensitive: key.facts.sensitive }, { kind: 'ec', curve: 'P-256', extractable: false, sensitive: true });
        const cert = parseCertificate(certificatesFromPem(pem)[0]!);
        assert.deepEqual(key.publicKey.export({ format: 'der', type: 'spki' }), cert.spkiDer, `${label}'s certificate holds its public key`);
      } finally {
        key.close();
      }
    }
  });

  test('refusals are one line, exit 1 (the token says no) or 2 (a bad flag), and leave nothing behind', async () => {
    const cases: { args: string[]; env?: NodeJS.ProcessEnv; message: RegExp; code: 1 | 2; out: string }[] = [
      { args: ['root', '--out', dir('wrong-pin'), ...tokenFlags, '--pkcs11-key-label', 'other'], env: { MESHCA_PKCS11_PIN: '000000' }, message: /^meshca: PKCS#11: login to token "meshca-cacerts" failed: wrong PIN$/, code: 1, out: 'wrong-pin' },
      { args: ['root', '--out', dir('taken'), '--key', 'ec-p256', ...tokenFlags, '--pkcs11-key-label', 'root-ca'], message: /^meshca: PKCS#11: token "meshca-cacerts" already holds a private key with label "root-ca"; choose another or delete it$/, code: 1, out: 'taken' },
      { args: ['intermediate', '--root', dir('root'), '--out', dir('mismatch'), '--cluster', 'c', ...tokenFlags, '--root-pkcs11-key-label', 'cluster1-ca'], message: /^meshca: the key in token "meshca-cacerts" \(label "cluster1-ca", id [0-9a-f]+\) does not belong to .*root\/root-cert\.pem$/, code: 1, out: 'mismatch' },
      { args: ['root', '--out', dir('no-pin'), ...tokenFlags, '--pkcs11-key-label', 'x'], env: { MESHCA_PKCS11_PIN: '' }, message: /^meshca: no PIN for token "meshca-cacerts": set MESHCA_PKCS11_PIN or pass --pkcs11-pin-file/, code: 2, out: 'no-pin' },
      { args: ['root', '--out', dir('bad-id'), ...tokenFlags, '--pkcs11-key-label', 'x', '--pkcs11-key-id', 'xyz'], message: /^meshca: invalid --pkcs11-key-id "xyz": expected hex bytes/, code: 2, out: 'bad-id' },
      { args: ['intermediate', '--root', dir('root'), '--out', dir('no-key'), '--cluster', 'c'], message: /cannot read the root in .*root\/root-key\.pem.*if the root key is in a token, pass --root-pkcs11-key-label\)$/, code: 1, out: 'no-key' },
    ];
    const run = (c: (typeof cases)[number]): ReturnType<typeof runMeshca> => runMeshca(['cacerts', ...c.args], { env: { ...env, ...c.env } });
    // The first three reach the token: one after another, because SoftHSM2 rewrites its token file on a failed login
    // (and on the next good one), and another process reading the token directory meanwhile would not see the token.
    const inToken = (async () => {
      const done = [];
      for (const c of cases.slice(0, 3)) done.push(await run(c));
      return done;
    })();
    const offToken = Promise.all(cases.slice(3).map(run));
    const results = [...(await inToken), ...(await offToken)];
    results.forEach((result, index) => {
      const expected = cases[index]!;
      assert.equal(result.code, expected.code, result.stderr);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
      assert.match(result.stderr.trim(), expected.message);
      assert.equal(existsSync(dir(expected.out)), false, `${expected.out} was not created`);
    });
    // The token still holds exactly the keys of the first test: the refused runs made none.
    const other = await openPkcs11Key({ modulePath: token.module, tokenLabel: token.label, keyLabel: 'other', pinEnv: 'PIN' }, { PIN: token.pin }).then(
      (key) => (key.close(), 'found'),
      (error: Error) => error.message,
    );
    assert.match(other, /no private key with label "other"/);
  });
});
