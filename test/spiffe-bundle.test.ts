/**
 * SPIFFE bundle documents (src/pki/spiffe-bundle.ts): what we serve round-trips and OpenSSL reads its x5c; every
 * broken document another trust domain could serve is refused with ERR_BUNDLE; and mutated documents never get
 * through as anything but the authorities they started with.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  createCaCertificate,
  formatSpiffeBundle,
  generateKeyPairFor,
  isPkiError,
  LeafIssuer,
  parseCertificate,
  parseSpiffeBundle,
  spiffeBundleOf,
  bundlePem,
  MAX_BUNDLE_BYTES,
  type KeySpec,
  type ParsedCertificate,
} from '../src/pki/index.js';

function root(trustDomain: string | null, spec: KeySpec = 'ec-p256', name = 'root'): { cert: ParsedCertificate; privateKey: import('node:crypto').KeyObject } {
  const keys = generateKeyPairFor(spec);
  const der = createCaCertificate({
    subject: { organization: trustDomain ?? 'none', commonName: name },
    subjectKey: keys.privateKey,
    notAfter: new Date(Date.now() + 24 * 3600_000),
    ...(trustDomain ? { uris: [`spiffe://${trustDomain}`] } : {}),
  });
  return { cert: parseCertificate(der), privateKey: keys.privateKey };
}

const ec = root('example.org');
const rsa = root(null, 'rsa-2048', 'rsa root');
const other = root('other.org');

type Doc = { keys: Record<string, unknown>[]; spiffe_sequence?: unknown; spiffe_refresh_hint?: unknown };
function doc(...certs: ParsedCertificate[]): Doc {
  return JSON.parse(formatSpiffeBundle(spiffeBundleOf('example.org', certs, { sequence: 7, refreshHintSeconds: 300 }))) as Doc;
}

function refused(document: unknown, pattern: RegExp, trustDomain = 'example.org'): void {
  assert.throws(
    () => parseSpiffeBundle(trustDomain, typeof document === 'string' ? document : JSON.stringify(document)),
    (error: unknown) => isPkiError(error, 'ERR_BUNDLE') && pattern.test((error as Error).message),
  );
}

describe('SPIFFE bundle documents', () => {
  it('round-trips authorities, sequence and refresh hint; OpenSSL reads each x5c', () => {
    const text = formatSpiffeBundle(spiffeBundleOf('example.org', [ec.cert, rsa.cert, ec.cert], { sequence: 42, refreshHintSeconds: 60 }));
    const bundle = parseSpiffeBundle('example.org', text);
    assert.deepEqual(bundle.x509Authorities.map((c) => c.der), [ec.cert.der, rsa.cert.der]);
    assert.equal(bundle.sequence, 42);
    assert.equal(bundle.refreshHintSeconds, 60);
    const parsed = JSON.parse(text) as Doc;
    assert.deepEqual(parsed.keys.map((k) => [k.use, k.kty]), [['x509-svid', 'EC'], ['x509-svid', 'RSA']]);
    for (const key of parsed.keys) {
      const der = Buffer.from((key.x5c as string[])[0]!, 'base64');
      const out = spawnSync('openssl', ['x509', '-inform', 'DER', '-noout', '-subject'], { input: der, encoding: 'utf8' });
      assert.equal(out.status, 0, out.stderr);
      assert.match(out.stdout, /root/);
    }
    assert.equal(bundlePem(bundle).match(/BEGIN CERTIFICATE/g)?.length, 2);
  });

  it('skips jwt-svid keys and keys of unknown use, and needs no sequence or hint', () => {
    const d = doc(ec.cert);
    d.keys.push({ use: 'jwt-svid', kty: 'EC', kid: 'k1', crv: 'P-256', x: 'AA', y: 'AA' }, { use: 'something-new', kty: 'oct' });
    delete d.spiffe_sequence;
    delete d.spiffe_refresh_hint;
    const bundle = parseSpiffeBundle('example.org', JSON.stringify(d));
    assert.equal(bundle.x509Authorities.length, 1);
    assert.equal(bundle.sequence, undefined);
  });

  it('refuses every broken document with the reason', () => {
    refused('not json', /not JSON/);
    refused([], /not a JSON object/);
    refused({ nokeys: [] }, /no "keys" array/);
    refused({ keys: [] }, /no X.509 authority/);
    refused({ keys: [{ use: 'jwt-svid', kty: 'EC', kid: 'a' }] }, /no X.509 authority/);
    refused({ keys: ['x'] }, /key 0 is not a JSON object/);
    refused({ keys: [{ use: 'x509-svid' }] }, /key 0 has no kty/);
    const twoCerts = doc(ec.cert);
    twoCerts.keys[0]!.x5c = [ec.cert.der.toString('base64'), ec.cert.der.toString('base64')];
    refused(twoCerts, /exactly one certificate/);
    const urlSafe = doc(ec.cert);
    urlSafe.keys[0]!.x5c = [ec.cert.der.toString('base64url')];
    refused(urlSafe, /standard base64|not a DER certificate/);
    const notDer = doc(ec.cert);
    notDer.keys[0]!.x5c = [Buffer.from('hello world!').toString('base64')];
    refused(notDer, /not a DER certificate/);
    const swapped = doc(ec.cert);
    const otherKey = doc(other.cert).keys[0]!;
    swapped.keys[0] = { ...otherKey, x5c: swapped.keys[0]!.x5c };
    refused(swapped, /not the key of the certificate/);
    refused(doc(other.cert), /belongs to trust domain "other.org"/);
    for (const bad of [-1, 1.5, '3', Number.MAX_SAFE_INTEGER + 2]) refused({ ...doc(ec.cert), spiffe_sequence: bad }, /spiffe_sequence must be an integer/);
    for (const bad of [0, 'x', 31 * 24 * 3600]) refused({ ...doc(ec.cert), spiffe_refresh_hint: bad }, /spiffe_refresh_hint must be an integer/);
    refused(' '.repeat(MAX_BUNDLE_BYTES + 1), /more than the/);
    refused({ keys: Array.from({ length: 101 }, () => doc(ec.cert).keys[0]) }, /101 keys/);
  });

  it('refuses a leaf certificate as an authority and a root whose self-signature is broken', () => {
    const issuer = new LeafIssuer({ certificate: ec.cert, privateKey: ec.privateKey });
    const leafKeys = generateKeyPairFor('ec-p256');
    const leaf = issuer.issue({ spkiDer: leafKeys.publicKey.export({ type: 'spki', format: 'der' }), uris: ['spiffe://example.org/ns/a/sa/b'], ttlSeconds: 3600 });
    const leafCert = parseCertificate(leaf.der);
    const d = doc(ec.cert);
    d.keys[0] = { ...d.keys[0], x5c: [leafCert.der.toString('base64')], ...leafKeys.publicKey.export({ format: 'jwk' }) };
    refused(d, /not a CA certificate/);
    const broken = Buffer.from(ec.cert.der);
    broken[broken.length - 5]! ^= 0x01; // inside the signature value
    const b = doc(ec.cert);
    b.keys[0]!.x5c = [broken.toString('base64')];
    refused(b, /signature does not verify|not a DER certificate/);
  });

  it('mutated documents are refused or trust only the original keys (fast-check)', () => {
    const original = formatSpiffeBundle(spiffeBundleOf('example.org', [ec.cert, rsa.cert], { sequence: 1 }));
    // A mutated name or extension outside a self-signature can still parse (an authority need not be self-issued),
    // but no edit may make a key trusted that was not.
    const known = [ec.cert.spkiDer, rsa.cert.spkiDer];
    fc.assert(
      fc.property(fc.array(fc.record({ at: fc.nat(), char: fc.integer({ min: 0, max: 127 }).map((code) => String.fromCharCode(code)) }), { minLength: 1, maxLength: 4 }), (edits) => {
        let text = original;
        for (const { at, char } of edits) {
          const i = at % text.length;
          text = text.slice(0, i) + char + text.slice(i + 1);
        }
        try {
          const bundle = parseSpiffeBundle('example.org', text);
          for (const cert of bundle.x509Authorities) assert.ok(known.some((spki) => spki.equals(cert.spkiDer)), 'a key that was not in the bundle became trusted');
        } catch (error) {
          if (!isPkiError(error, 'ERR_BUNDLE') && !isPkiError(error, 'ERR_SPIFFE_ID')) throw error;
        }
      }),
      { numRuns: 400, seed: 18 },
    );
  });
});
