/**
 * The PKI core, checked against OpenSSL's command line: what we issue must be what Istio issues
 * (the workload profile), and what we parse must be what OpenSSL makes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import {
  certificateToPem,
  certificatesFromPem,
  createCaCertificate,
  createCsr,
  exportPrivateKeyPem,
  WorkloadId,
  generateKeyPairFor,
  generateKeyPairOf,
  isPkiError,
  LeafIssuer,
  loadPrivateKey,
  parseCertificate,
  parseCsr,
  parseSpiffeId,
  spkiDer,
  verifyChain,
  verifyCsr,
  type KeySpec,
  type ParsedCertificate,
  type SigningMaterial,
} from '../src/pki/index.js';
import { spkiFromJwk } from '../src/pki/spki.js';
import { opensslText, opensslVerify } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const temp = makeTempDir('meshca-pki-');
after(() => temp.cleanup());

function openssl(args: string[], input?: string): string {
  return execFileSync('openssl', args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] });
}

function makeRoot(spec: KeySpec, days = 365): SigningMaterial & { pem: string } {
  const keys = generateKeyPairFor(spec);
  const der = createCaCertificate({
    subject: { organization: 'cluster.local' },
    subjectKey: keys.privateKey,
    notAfter: new Date(Date.now() + days * 86400_000),
  });
  return { certificate: parseCertificate(der), privateKey: keys.privateKey, pem: certificateToPem(der) };
}

const SPIFFE = 'spiffe://cluster.local/ns/default/sa/demo';

function expectPkiError(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(isPkiError(error), `expected PkiError, got ${String(error)}`);
    assert.equal(error.code, code);
    if (message) assert.match(error.message, message);
    return true;
  });
}

describe('keys', () => {
  for (const spec of ['rsa-2048', 'rsa-3072', 'ec-p256', 'ec-p384'] as const) {
    it(`${spec}: PKCS#1/SEC1 and PKCS#8 PEM that OpenSSL reads`, () => {
      const { privateKey } = generateKeyPairFor(spec);
      const traditional = exportPrivateKeyPem(privateKey);
      const pkcs8 = exportPrivateKeyPem(privateKey, { pkcs8: true });
      assert.match(traditional, spec.startsWith('rsa') ? /^-----BEGIN RSA PRIVATE KEY-----/ : /^-----BEGIN EC PRIVATE KEY-----/);
      assert.match(pkcs8, /^-----BEGIN PRIVATE KEY-----/);
      const text = openssl(['pkey', '-noout', '-text'], pkcs8);
      assert.match(text, spec.startsWith('rsa') ? new RegExp(`Private-Key: \\(${spec.slice(4)} bit`) : /NIST CURVE|ASN1 OID: (prime256v1|secp384r1)/);
      assert.ok(loadPrivateKey(traditional).equals(privateKey));
    });
  }

  it("spkiDer writes the bytes OpenSSL's own SPKI export writes, for RSA and every named curve, private or public", () => {
    const keys = [
      generateKeyPairFor('rsa-2048').privateKey,
      // 40 keys a curve: a coordinate with leading zero bytes (about 1 in 128 per coordinate) shows up now and then;
      // the padding is also checked by construction below.
      ...(['prime256v1', 'secp384r1', 'secp521r1'] as const).flatMap((curve) => Array.from({ length: 40 }, () => generateKeyPairOf({ type: 'ec', curve }).privateKey)),
      generateKeyPairSync('ed25519').privateKey,
    ];
    for (const key of keys) {
      const expected = createPublicKey(key).export({ format: 'der', type: 'spki' });
      if (!spkiDer(key).equals(expected)) assert.fail(`${key.asymmetricKeyType} ${key.asymmetricKeyDetails?.namedCurve ?? ''}: ${spkiDer(key).toString('hex')} != ${expected.toString('hex')}`);
      assert.ok(spkiDer(createPublicKey(key)).equals(expected));
    }
    // A JWK whose coordinates lost their leading zeros is padded back to the curve's size.
    const key = createPublicKey(keys[1]!);
    const jwk = key.export({ format: 'jwk' });
    const x = Buffer.from(jwk.x!, 'base64url');
    x[0] = 0;
    const padded = spkiFromJwk({ ...jwk, x: x.subarray(1).toString('base64url') });
    assert.equal(padded?.length, key.export({ format: 'der', type: 'spki' }).length);
    assert.equal(padded?.subarray(-64, -32).toString('hex'), x.toString('hex'));
    assert.equal(spkiFromJwk({ kty: 'EC', crv: 'secp256k1', x: jwk.x!, y: jwk.y! }), undefined, 'another curve is left to OpenSSL');
  });

  it('generated keys can be exported while GC runs (Node 20 deadlocked an export racing the collection of its generation job)', () => {
    // A child with a 1 MiB young generation, so that GC runs inside exports: it generates keys as meshca does, keeps
    // the last 50 and exports all of them as JWK (spkiDer's path) after each new one, for 1.2 s. With keys straight
    // from crypto.generateKeyPairSync this hung within 1.5 s in three runs out of three; a hang fails by the timeout.
    const keysModule = new URL('../src/pki/keys.js', import.meta.url).href;
    const script = `
      const { generateKeyPairFor, generateKeyPairOffLoop } = await import(${JSON.stringify(keysModule)});
      const kept = [];
      const until = Date.now() + 1200;
      for (let i = 0; Date.now() < until; i++) {
        kept.push(i % 4 === 0 ? (await generateKeyPairOffLoop({ type: 'ec', curve: 'prime256v1' })).privateKey : generateKeyPairFor('ec-p256').privateKey);
        if (kept.length > 50) kept.shift();
        for (const key of kept) key.export({ format: 'jwk' });
      }
      process.stdout.write('done');`;
    const out = execFileSync(process.execPath, ['--max-semi-space-size=1', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(out, 'done');
  });

  it('rsa-4096 generates', () => {
    const { privateKey } = generateKeyPairFor('rsa-4096');
    assert.equal(privateKey.asymmetricKeyDetails?.modulusLength, 4096);
  });

  it('refuses an encrypted or garbage key with a readable message', () => {
    expectPkiError(() => loadPrivateKey('not a key', 'ca-key.pem'), 'ERR_PEM', /ca-key.pem is not a readable unencrypted PEM private key/);
  });
});

describe('PEM', () => {
  it('decodes each certificate into memory of its own, not a slice of a shared pool slab, with the same bytes', () => {
    const { privateKey } = generateKeyPairFor('ec-p256');
    const ders = [1, 2, 3].map((n) => createCaCertificate({ subject: { organization: `pem-${n}` }, subjectKey: privateKey, notAfter: new Date(Date.now() + 3600_000) }));
    const decoded = certificatesFromPem(ders.map((der) => certificateToPem(der)).join(''));
    assert.equal(decoded.length, 3);
    for (const [i, der] of decoded.entries()) {
      assert.ok(der.equals(ders[i]!));
      // A kept certificate must not keep 8 KiB of unrelated bytes alive (see src/util/buffers.ts).
      assert.equal(der.buffer.byteLength, der.length, 'the DER owns its ArrayBuffer');
    }
    // Buffer.from(text, 'base64'), the lenient decoder it replaces, reads the same bytes.
    const body = ders[0]!.toString('base64').replace(/(.{64})/g, '$1\n');
    assert.ok(certificatesFromPem(`-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----\n`)[0]!.equals(Buffer.from(body, 'base64')));
  });
});

describe('CSRs', () => {
  it('creates an Istio-style CSR (empty subject, critical URI SAN) that OpenSSL verifies', () => {
    for (const spec of ['rsa-2048', 'ec-p256', 'ec-p384'] as const) {
      const { privateKey } = generateKeyPairFor(spec);
      const pem = createCsr({ privateKey, uris: [SPIFFE] });
      const text = openssl(['req', '-noout', '-verify', '-text'], pem);
      assert.match(text, new RegExp(`URI:${SPIFFE.replace(/\//g, '\\/')}`));
      assert.match(text, /X509v3 Subject Alternative Name: critical/);
      const parsed = parseCsr(pem);
      assert.deepEqual(parsed.sans.uris, [SPIFFE]);
      assert.equal(parsed.subject, '');
      assert.equal(parsed.requestsCa, false);
      const publicKey = verifyCsr(parsed);
      assert.ok(publicKey.equals(createPublicKey(privateKey)));
    }
  });

  it('parses and verifies CSRs made by OpenSSL, PEM and DER', () => {
    const keyFile = path.join(temp.dir, 'openssl-key.pem');
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyFile]);
    const pem = openssl(['req', '-new', '-key', keyFile, '-subj', '/O=example/CN=workload', '-addext', `subjectAltName=URI:${SPIFFE},DNS:a.example`]);
    const fromPem = parseCsr(pem);
    assert.equal(fromPem.subject, 'O=example, CN=workload');
    assert.deepEqual(fromPem.sans.uris, [SPIFFE]);
    assert.deepEqual(fromPem.sans.dnsNames, ['a.example']);
    assert.deepEqual(fromPem.key, { kind: 'ec', curve: 'P-256' });
    verifyCsr(fromPem);
    const der = execFileSync('openssl', ['req', '-outform', 'DER'], { input: pem });
    verifyCsr(parseCsr(der));
  });

  it('rejects garbage, the wrong PEM type, truncated DER and a bad signature with typed errors', () => {
    expectPkiError(() => parseCsr('hello'), 'ERR_CSR_MALFORMED', /CSR is not PEM/);
    const root = makeRoot('ec-p256');
    expectPkiError(() => parseCsr(root.pem), 'ERR_CSR_MALFORMED', /PEM of type "CERTIFICATE", expected "CERTIFICATE REQUEST"/);
    const good = createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey, uris: [SPIFFE] });
    const der = parseCsr(good).der;
    expectPkiError(() => parseCsr(der.subarray(0, der.length - 10)), 'ERR_CSR_MALFORMED', /truncated/);
    const tampered = Buffer.from(der);
    tampered[tampered.length - 5] ^= 0xff;
    expectPkiError(() => verifyCsr(parseCsr(tampered)), 'ERR_CSR_SIGNATURE', /does not verify/);
  });

  it('refuses RSA-1024, unsupported curves and CA requests', () => {
    const weakKey = path.join(temp.dir, 'rsa1024.pem');
    openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024', '-out', weakKey]);
    const weak = openssl(['req', '-new', '-key', weakKey, '-subj', '/O=x']);
    expectPkiError(() => verifyCsr(parseCsr(weak)), 'ERR_KEY_WEAK', /RSA-1024; at least RSA-2048/);

    const k1Key = path.join(temp.dir, 'k1.pem');
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:secp256k1', '-out', k1Key]);
    const k1 = openssl(['req', '-new', '-key', k1Key, '-subj', '/O=x']);
    expectPkiError(() => parseCsr(k1), 'ERR_KEY_UNSUPPORTED', /unsupported elliptic curve 1\.3\.132\.0\.10/);

    const ca = createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey, uris: [SPIFFE], requestCa: true });
    expectPkiError(() => verifyCsr(parseCsr(ca)), 'ERR_CSR_CA_REQUESTED', /CA:true/);
  });
});

describe('SPIFFE IDs', () => {
  it('formats and parses the workload form', () => {
    const id = WorkloadId.of({ trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'demo' });
    assert.equal(id.uri, SPIFFE);
    const parsed = WorkloadId.parse(id.uri);
    assert.deepEqual([parsed.trustDomain, parsed.namespace, parsed.serviceAccount], ['cluster.local', 'default', 'demo']);
    expectPkiError(() => WorkloadId.parse('spiffe://td/other/path'), 'ERR_SPIFFE_ID', /not of the form/);
    expectPkiError(() => WorkloadId.of({ trustDomain: 'td', namespace: 'default', serviceAccount: 'x/ns/kube-system/sa/admin' }), 'ERR_SPIFFE_ID', /service account/);
    assert.deepEqual(parseSpiffeId('spiffe://example.org'), { trustDomain: 'example.org', path: '' });
  });

  const invalid: [string, RegExp][] = [
    ['http://cluster.local/ns/a/sa/b', /must start with spiffe:\/\//],
    ['spiffe://Cluster.local/ns/a/sa/b', /lowercase/],
    ['spiffe:///ns/a/sa/b', /trust domain is empty/],
    ['spiffe://td/ns//sa/b', /empty segment/],
    ['spiffe://td/ns/a/sa/b/', /empty segment/],
    ['spiffe://td/ns/./sa/b', /"\." or "\.\."/],
    ['spiffe://td/ns/../sa/b', /"\." or "\.\."/],
    ['spiffe://td/ns/a?x=1', /query or fragment/],
    ['spiffe://td/ns/a#frag', /query or fragment/],
    ['spiffe://td:8080/ns/a', /port/],
    ['spiffe://user@td/ns/a', /userinfo/],
    ['spiffe://td/ns/a b', /may contain only/],
    [`spiffe://td/${'a'.repeat(2050)}`, /longer than 2048 bytes/],
  ];
  for (const [id, reason] of invalid) {
    it(`rejects ${id.slice(0, 40)}`, () => expectPkiError(() => parseSpiffeId(id), 'ERR_SPIFFE_ID', reason));
  }
});

describe("leaf issuance with Istio's workload profile", () => {
  const cases: { ca: KeySpec; signature: RegExp }[] = [
    { ca: 'rsa-2048', signature: /Signature Algorithm: sha256WithRSAEncryption/ },
    { ca: 'ec-p256', signature: /Signature Algorithm: ecdsa-with-SHA256/ },
    { ca: 'ec-p384', signature: /Signature Algorithm: ecdsa-with-SHA384/ },
  ];
  for (const { ca, signature } of cases) {
    it(`${ca} CA: every profile item, checked with openssl x509 -text and openssl verify -x509_strict`, () => {
      const root = makeRoot(ca);
      const issuer = new LeafIssuer(root);
      const workload = generateKeyPairFor('ec-p256');
      const csr = parseCsr(createCsr({ privateKey: workload.privateKey, uris: ['spiffe://attacker/ns/x/sa/y'] }));
      verifyCsr(csr);
      const before = Date.now();
      const leaf = issuer.issue({ spkiDer: csr.spkiDer, uris: [SPIFFE], ttlSeconds: 3600 });
      const pem = certificateToPem(leaf.der);
      const text = opensslText(pem);
      // serial: 128 random bits, positive (16 bytes, top bit clear)
      const serial = /Serial Number:\s*\n\s*([0-9a-f:]+)/.exec(text)![1]!.split(':');
      assert.equal(serial.length, 16);
      assert.ok(parseInt(serial[0]!, 16) < 0x80);
      assert.match(text, signature);
      assert.match(text, /Subject: ?\n/);
      assert.match(text, /X509v3 Subject Alternative Name: critical\n\s*URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/demo\n/);
      assert.doesNotMatch(text, /attacker/);
      assert.match(text, /X509v3 Key Usage: critical\n\s*Digital Signature, Key Encipherment\n/);
      assert.match(text, /X509v3 Extended Key Usage: ?\n\s*TLS Web Server Authentication, TLS Web Client Authentication\n/);
      assert.match(text, /X509v3 Basic Constraints: critical\n\s*CA:FALSE\n/);
      const aki = /X509v3 Authority Key Identifier: ?\n\s*(?:keyid:)?([0-9A-F:]+)/.exec(text)![1];
      assert.equal(aki, root.certificate.subjectKeyId!.toString('hex').toUpperCase().replace(/(..)(?!$)/g, '$1:'));
      const parsed = parseCertificate(leaf.der);
      assert.ok(parsed.spkiDer.equals(csr.spkiDer), 'leaf key is the CSR key');
      assert.ok(Math.abs(parsed.notBefore.getTime() - (before - 120_000)) < 5000, 'NotBefore is now - 2 min');
      assert.ok(Math.abs(parsed.notAfter.getTime() - (before + 3600_000)) < 5000, 'NotAfter is now + TTL');
      const verified = opensslVerify(pem, '', root.pem);
      assert.ok(verified.ok, verified.output);
    });
  }

  it('clamps NotAfter to the issuer NotAfter', () => {
    const root = makeRoot('ec-p256', 1);
    const csr = parseCsr(createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey }));
    const leaf = new LeafIssuer(root).issue({ spkiDer: csr.spkiDer, uris: [SPIFFE], ttlSeconds: 30 * 86400 });
    assert.equal(leaf.notAfter.getTime(), root.certificate.notAfter.getTime());
    assert.equal(parseCertificate(leaf.der).notAfter.getTime(), root.certificate.notAfter.getTime());
  });

  it('issues distinct serials', () => {
    const root = makeRoot('ec-p256');
    const issuer = new LeafIssuer(root);
    const csr = parseCsr(createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey }));
    const serials = new Set(Array.from({ length: 200 }, () => issuer.issue({ spkiDer: csr.spkiDer, uris: [SPIFFE], ttlSeconds: 60 }).serialHex));
    assert.equal(serials.size, 200);
  });
});

describe('CA certificates and chains', () => {
  it('builds a root and an intermediate with CA:true, keyCertSign+cRLSign, SKI and pathLen', () => {
    const root = makeRoot('rsa-2048');
    const intermediateKeys = generateKeyPairFor('ec-p256');
    const intermediateDer = createCaCertificate({
      subject: { organization: 'cluster.local', commonName: 'intermediate' },
      subjectKey: intermediateKeys.publicKey,
      issuer: root,
      notAfter: new Date(Date.now() + 30 * 86400_000),
      pathLen: 0,
    });
    const intermediatePem = certificateToPem(intermediateDer);
    const text = opensslText(intermediatePem);
    assert.match(text, /X509v3 Basic Constraints: critical\n\s*CA:TRUE, pathlen:0\n/);
    assert.match(text, /X509v3 Key Usage: critical\n\s*Certificate Sign, CRL Sign\n/);
    assert.match(text, /X509v3 Subject Key Identifier:/);
    assert.match(text, /Issuer: O ?= ?cluster\.local\n/);
    assert.match(opensslText(root.pem), /X509v3 Basic Constraints: critical\n\s*CA:TRUE\n/);
    const intermediate: SigningMaterial = { certificate: parseCertificate(intermediateDer), privateKey: intermediateKeys.privateKey };
    const csr = parseCsr(createCsr({ privateKey: generateKeyPairFor('rsa-2048').privateKey }));
    const leafPem = certificateToPem(new LeafIssuer(intermediate).issue({ spkiDer: csr.spkiDer, uris: [SPIFFE], ttlSeconds: 600 }).der);
    const verified = opensslVerify(leafPem, intermediatePem, root.pem);
    assert.ok(verified.ok, verified.output);
    const path = verifyChain(parseCertificate(Buffer.from(leafPem.split('\n').slice(1, -2).join(''), 'base64')), {
      intermediates: [intermediate.certificate],
      roots: [root.certificate],
    });
    assert.equal(path.length, 3);
  });

  it('explains why a chain fails', () => {
    const root = makeRoot('ec-p256');
    const other = makeRoot('ec-p256');
    const csr = parseCsr(createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey }));
    const issue = (material: SigningMaterial, ttlSeconds = 600, now?: number): ParsedCertificate =>
      parseCertificate(new LeafIssuer(material).issue({ spkiDer: csr.spkiDer, uris: [SPIFFE], ttlSeconds, ...(now ? { now } : {}) }).der);
    const leaf = issue(root);
    expectPkiError(() => verifyChain(leaf, { roots: [other.certificate] }), 'ERR_CHAIN', /no trusted issuer found/);
    expectPkiError(() => verifyChain(leaf, { roots: [root.certificate], at: new Date(Date.now() + 3600_000) }), 'ERR_CHAIN', /expired at/);
    expectPkiError(() => verifyChain(leaf, { roots: [root.certificate], at: new Date(Date.now() - 3600_000) }), 'ERR_CHAIN', /not valid before/);
    // A leaf posing as an issuer is refused because it is not a CA.
    const leafKey = generateKeyPairFor('ec-p256');
    const leafCsr = parseCsr(createCsr({ privateKey: leafKey.privateKey }));
    const fakeIssuer = parseCertificate(new LeafIssuer(root).issue({ spkiDer: leafCsr.spkiDer, uris: [SPIFFE], ttlSeconds: 600 }).der);
    const signedByLeaf = issue({ certificate: fakeIssuer, privateKey: leafKey.privateKey });
    expectPkiError(() => verifyChain(signedByLeaf, { intermediates: [fakeIssuer], roots: [root.certificate] }), 'ERR_CHAIN', /is not a CA certificate/);
    assert.ok(verifyChain(leaf, { roots: [root.certificate] }).length === 2);
  });

  it('reads the key files OpenSSL writes for a CA and matches them to the certificate', () => {
    const keyFile = path.join(temp.dir, 'ca-key.pem');
    const certFile = path.join(temp.dir, 'ca-cert.pem');
    openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '10', '-subj', '/O=openssl-root', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    const key = loadPrivateKey(readFileSync(keyFile, 'utf8'));
    const cert = parseCertificate(Buffer.from(readFileSync(certFile, 'utf8').replace(/-----[^-]+-----|\s/g, ''), 'base64'));
    assert.equal(cert.subject, 'O=openssl-root');
    assert.equal(cert.basicConstraints?.ca, true);
    const csr = parseCsr(createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey }));
    const leafPem = certificateToPem(new LeafIssuer({ certificate: cert, privateKey: key }).issue({ spkiDer: csr.spkiDer, uris: [SPIFFE], ttlSeconds: 60 }).der);
    writeFileSync(path.join(temp.dir, 'leaf.pem'), leafPem);
    const verified = opensslVerify(leafPem, '', readFileSync(certFile, 'utf8'));
    assert.ok(verified.ok, verified.output);
    assert.ok(createPrivateKey(readFileSync(keyFile)).equals(key));
  });
});
