/**
 * Strict CSRs: DER only, exact signature over the exact CertificationRequestInfo bytes, standard algorithm
 * parameters, canonical keys within policy. Each regression is a CSR whose signature is valid over the bytes it
 * carries (re-signed after the edit) unless said otherwise, so only the parser or the policy can refuse it; each
 * asserts the stable code and the message. Checks that run before any signature verification are recognisable by
 * their code and message (key policy, encoding), never by timing.
 */
import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { describe, it } from 'node:test';
import { buildCaMaterial, CaError, CertificateAuthority, LocalSigner } from '../src/ca/index.js';
import { bitString, explicit, nullValue, oid, sequence, set, smallInteger, unsignedInteger } from '../src/pki/der.js';
import { OID } from '../src/pki/oids.js';
import {
  createCaCertificate,
  createCsr,
  encodePem,
  generateKeyPairFor,
  isPkiError,
  parseCertificate,
  parseCsr,
  spkiDer,
  verifyCsr,
  type PkiErrorCode,
  WorkloadId,
  generateKeyPairOf,
} from '../src/pki/index.js';

const SPIFFE = 'spiffe://cluster.local/ns/default/sa/strict';
const rsa = generateKeyPairFor('rsa-2048').privateKey;
const p256 = generateKeyPairFor('ec-p256').privateKey;
const p384 = generateKeyPairFor('ec-p384').privateKey;

const RSA_SHA256 = sequence(oid(OID.sha256WithRSA), nullValue());
const ECDSA_SHA256 = sequence(oid(OID.ecdsaWithSHA256));
const VERSION_0 = smallInteger(0);
const EMPTY_ATTRIBUTES = explicit(0);

function info(spki: Buffer, options: { version?: Buffer; attributes?: Buffer; extra?: Buffer } = {}): Buffer {
  return sequence(options.version ?? VERSION_0, sequence(), spki, options.attributes ?? EMPTY_ATTRIBUTES, ...(options.extra ? [options.extra] : []));
}

/** CertificationRequest over `infoBytes` exactly as given, signed by `key` over `signedBytes` (default: the same bytes). */
function csr(infoBytes: Buffer, key: KeyObject, options: { algorithm?: Buffer; signedBytes?: Buffer; hash?: string } = {}): Buffer {
  const algorithm = options.algorithm ?? (key.asymmetricKeyType === 'rsa' ? RSA_SHA256 : ECDSA_SHA256);
  const signature = sign(options.hash ?? 'sha256', options.signedBytes ?? infoBytes, key);
  return sequence(infoBytes, algorithm, bitString(signature));
}

function rsaSpki(modulus: Buffer, exponent: Buffer): Buffer {
  return sequence(sequence(oid(OID.rsaEncryption), nullValue()), bitString(sequence(unsignedInteger(modulus), unsignedInteger(exponent))));
}

const modulusOf = (key: KeyObject): Buffer => Buffer.from(createPublicKey(key).export({ format: 'jwk' }).n!, 'base64url');

function ecPoint(key: KeyObject): { x: Buffer; y: Buffer } {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  return { x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') };
}

function ecSpki(curveOid: string, point: Buffer): Buffer {
  return sequence(sequence(oid(OID.ecPublicKey), oid(curveOid)), bitString(point));
}

/** parseCsr and verifyCsr together, as the CA runs them; asserts the PkiError code and message. */
function expectRefused(der: Buffer, code: PkiErrorCode, message: RegExp): void {
  assert.throws(
    () => verifyCsr(parseCsr(der)),
    (error: unknown) => {
      assert.ok(isPkiError(error), `expected a PkiError, got ${String(error)}`);
      assert.equal(error.code, code, `code of "${error.message}"`);
      assert.match(error.message, message);
      return true;
    },
  );
}

/** Replaces the first occurrence of `find` in `bytes`. */
function replaceBytes(bytes: Buffer, find: Buffer, replacement: Buffer): Buffer {
  const at = bytes.indexOf(find);
  assert.ok(at >= 0, 'pattern not found');
  return Buffer.concat([bytes.subarray(0, at), replacement, bytes.subarray(at + find.length)]);
}

describe('strict CSRs: what is accepted', () => {
  it('accepts meshca, OpenSSL-shaped and hand-built canonical CSRs for RSA-2048, P-256 and P-384', () => {
    for (const key of [rsa, p256, p384]) {
      const parsed = parseCsr(createCsr({ privateKey: key, uris: [SPIFFE] }));
      assert.ok(verifyCsr(parsed).equals(createPublicKey(key)));
      assert.ok(parsed.spkiDer.equals(spkiDer(key)), 'the SPKI handed to the issuer is the canonical one');
    }
    verifyCsr(parseCsr(csr(info(spkiDer(rsa)), rsa)));
    // e = 3 is the smallest exponent allowed.
    const smallExponent = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 3 }).privateKey;
    verifyCsr(parseCsr(csr(info(spkiDer(smallExponent)), smallExponent)));
  });

  it('issues a leaf whose SubjectPublicKeyInfo is exactly the canonical encoding of the CSR key', async () => {
    const rootKey = generateKeyPairFor('ec-p256').privateKey;
    const root = parseCertificate(createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
    const authority = new CertificateAuthority({
      signer: new LocalSigner('self-signed', buildCaMaterial({ signingCert: root, privateKey: rootKey, chain: [], roots: [root] })),
      defaultTtlSeconds: 3600,
      maxTtlSeconds: 86400,
    });
    for (const key of [rsa, p256, p384]) {
      const issued = await authority.issue({ csrPem: createCsr({ privateKey: key, uris: [SPIFFE] }), identity: WorkloadId.parse(SPIFFE), requestedTtlSeconds: 0 });
      const leaf = parseCertificate(Buffer.from(issued.chain[0]!.replace(/-----[^-]+-----|\s/g, ''), 'base64'));
      assert.ok(leaf.spkiDer.equals(createPublicKey(key).export({ format: 'der', type: 'spki' })));
    }
  });
});

describe('strict CSRs: RSA keys are checked before any signature work', () => {
  const modulus = modulusOf(rsa);

  it('refuses a 3063-bit public exponent by policy, before verification', () => {
    const exponent = Buffer.alloc(383, 0xab);
    exponent[0] = 0x7f;
    exponent[exponent.length - 1] = 0xab; // odd
    expectRefused(csr(info(rsaSpki(modulus, exponent)), rsa), 'ERR_KEY_UNSUPPORTED', /3063-bit RSA public exponent; meshca accepts odd exponents from 3 to 2\^32-1/);
  });

  it('refuses an even exponent, e = 1 and e >= 2^32', () => {
    expectRefused(csr(info(rsaSpki(modulus, Buffer.from([0x01, 0x00, 0x00]))), rsa), 'ERR_KEY_UNSUPPORTED', /RSA public exponent 65536; meshca accepts odd exponents/);
    expectRefused(csr(info(rsaSpki(modulus, Buffer.from([0x01]))), rsa), 'ERR_KEY_UNSUPPORTED', /RSA public exponent 1; meshca accepts odd exponents/);
    expectRefused(csr(info(rsaSpki(modulus, Buffer.from([0x01, 0x00, 0x00, 0x00, 0x01]))), rsa), 'ERR_KEY_UNSUPPORTED', /33-bit RSA public exponent/);
    expectRefused(csr(info(rsaSpki(modulus, Buffer.from([0x01, 0x00, 0x00, 0x00, 0x00]))), rsa), 'ERR_KEY_UNSUPPORTED', /33-bit RSA public exponent/);
  });

  it('refuses a 1024-bit and an 8200-bit modulus, and an even modulus', () => {
    const weak = generateKeyPairOf({ type: 'rsa', bits: 1024 }).privateKey;
    expectRefused(csr(info(spkiDer(weak)), weak), 'ERR_KEY_WEAK', /RSA-1024; at least RSA-2048 is required/);
    // No 8200-bit key is generated: the size is refused before the (here bogus) signature is looked at.
    const huge = Buffer.alloc(1025, 0xc3);
    huge[0] = 0xff;
    expectRefused(csr(info(rsaSpki(huge, Buffer.from([0x01, 0x00, 0x01]))), rsa), 'ERR_KEY_UNSUPPORTED', /RSA-8200; at most RSA-8192 is accepted/);
    const even = Buffer.from(modulus);
    even[even.length - 1] = even[even.length - 1]! & 0xfe;
    expectRefused(csr(info(rsaSpki(even, Buffer.from([0x01, 0x00, 0x01]))), rsa), 'ERR_KEY_UNSUPPORTED', /modulus is even/);
  });

  it('refuses a non-minimal or negative modulus and key AlgorithmIdentifier without NULL', () => {
    const n = Buffer.concat([Buffer.from([0x02, 0x82, 0x01, 0x02, 0x00, 0x00]), modulus]); // INTEGER with two leading zeros
    const spki = sequence(sequence(oid(OID.rsaEncryption), nullValue()), bitString(sequence(n, unsignedInteger(Buffer.from([1, 0, 1])))));
    expectRefused(csr(info(spki), rsa), 'ERR_CSR_MALFORMED', /RSA modulus is not a minimal INTEGER encoding/);
    const noNull = sequence(sequence(oid(OID.rsaEncryption)), bitString(sequence(unsignedInteger(modulus), unsignedInteger(Buffer.from([1, 0, 1])))));
    expectRefused(csr(info(noNull), rsa), 'ERR_CSR_MALFORMED', /RSA key algorithm must have NULL parameters/);
  });
});

describe('strict CSRs: EC keys are uncompressed points on a named curve', () => {
  it('refuses compressed and hybrid points even when the signature over them is valid', () => {
    const { x, y } = ecPoint(p256);
    const odd = y[y.length - 1]! & 1;
    expectRefused(csr(info(ecSpki(OID.prime256v1, Buffer.concat([Buffer.from([0x02 + odd]), x]))), p256), 'ERR_CSR_MALFORMED', /compressed point; meshca accepts only the uncompressed form/);
    expectRefused(csr(info(ecSpki(OID.prime256v1, Buffer.concat([Buffer.from([0x06 + odd]), x, y]))), p256), 'ERR_CSR_MALFORMED', /hybrid point; meshca accepts only the uncompressed form/);
    const q = ecPoint(p384);
    expectRefused(csr(info(ecSpki(OID.secp384r1, Buffer.concat([Buffer.from([0x02 + (q.y[q.y.length - 1]! & 1)]), q.x]))), p384, { hash: 'sha384', algorithm: sequence(oid(OID.ecdsaWithSHA384)) }), 'ERR_CSR_MALFORMED', /compressed point/);
  });

  it('refuses a point off the curve, a short point and explicit curve parameters', () => {
    const { x, y } = ecPoint(p256);
    const offCurve = Buffer.from(y);
    offCurve[offCurve.length - 1] = offCurve[offCurve.length - 1]! ^ 1;
    expectRefused(csr(info(ecSpki(OID.prime256v1, Buffer.concat([Buffer.from([4]), x, offCurve]))), p256), 'ERR_CSR_MALFORMED', /not a point on P-256/);
    expectRefused(csr(info(ecSpki(OID.prime256v1, Buffer.concat([Buffer.from([4]), x]))), p256), 'ERR_CSR_MALFORMED', /point is 33 bytes; P-256 needs 65/);
    const explicitParameters = sequence(sequence(oid(OID.ecPublicKey), sequence(smallInteger(1))), bitString(Buffer.concat([Buffer.from([4]), x, y])));
    expectRefused(csr(info(explicitParameters), p256), 'ERR_KEY_UNSUPPORTED', /must name their curve/);
  });
});

describe('strict CSRs: DER only, no trailing bytes, version 0', () => {
  const good = parseCsr(createCsr({ privateKey: p256, uris: [SPIFFE] })).der;
  const goodInfo = parseCsr(good).info;

  it('refuses a non-minimal length (signed over the received bytes)', () => {
    // The subject (empty SEQUENCE) written with a long-form length: 30 81 00.
    const infoBytes = Buffer.from(goodInfo);
    const longSubject = replaceBytes(infoBytes.subarray(2), Buffer.from([0x02, 0x01, 0x00, 0x30, 0x00]), Buffer.from([0x02, 0x01, 0x00, 0x30, 0x81, 0x00]));
    const berInfo = Buffer.concat([Buffer.from([0x30, 0x81, longSubject.length]), longSubject]);
    expectRefused(csr(berInfo, p256), 'ERR_CSR_MALFORMED', /non-minimal DER length/);
    const longTop = Buffer.concat([Buffer.from([0x30, 0x83, 0x00]), good.subarray(2 + (good[1]! & 0x7f))]);
    longTop.writeUInt16BE(good.length - 2 - (good[1]! & 0x7f), 3);
    expectRefused(longTop, 'ERR_CSR_MALFORMED', /non-minimal DER length \(leading zero byte\)/);
  });

  it('refuses an indefinite length', () => {
    const body = good.subarray(2 + (good[1]! & 0x7f));
    expectRefused(Buffer.concat([Buffer.from([0x30, 0x80]), body, Buffer.from([0, 0])]), 'ERR_CSR_MALFORMED', /indefinite length is not DER/);
  });

  it('refuses a trailing byte after the CSR and inside the CertificationRequestInfo', () => {
    expectRefused(Buffer.concat([good, Buffer.from([0])]), 'ERR_CSR_MALFORMED', /trailing bytes after CSR/);
    expectRefused(csr(info(spkiDer(p256), { extra: nullValue() }), p256), 'ERR_CSR_MALFORMED', /CertificationRequestInfo has 5 fields, expected 4/);
    const oneByte = Buffer.concat([goodInfo, Buffer.from([0])]);
    oneByte[1] = oneByte[1]! + 1; // short-form length of the info grows by one
    expectRefused(csr(oneByte, p256), 'ERR_CSR_MALFORMED', /truncated DER/);
  });

  it('refuses version 1 and a non-minimal version 0', () => {
    expectRefused(csr(info(spkiDer(p256), { version: smallInteger(1) }), p256), 'ERR_CSR_MALFORMED', /CSR version must be v1 \(INTEGER 0 in DER\), got 1/);
    expectRefused(csr(info(spkiDer(p256), { version: Buffer.from([0x02, 0x02, 0x00, 0x00]) }), p256), 'ERR_CSR_MALFORMED', /CSR version must be v1/);
  });

  it('accepts subject names made of directory strings, and refuses other value types and malformed strings', () => {
    const subject = (tag: number, value: Buffer): Buffer => sequence(VERSION_0, sequence(set(sequence(oid(OID.commonName), Buffer.concat([Buffer.from([tag, value.length]), value])))), spkiDer(p256), EMPTY_ATTRIBUTES);
    assert.equal(parseCsr(csr(subject(0x0c, Buffer.from('wörkload')), p256)).subject, 'CN=wörkload');
    verifyCsr(parseCsr(csr(subject(0x13, Buffer.from('Workload 1')), p256)));
    // Found by the differential fuzz: OpenSSL cannot load a CSR whose name holds an OCTET STRING.
    expectRefused(csr(subject(0x04, Buffer.from('w451')), p256), 'ERR_CSR_MALFORMED', /subject attribute 2\.5\.4\.3 is not a well-formed string/);
    expectRefused(csr(subject(0x13, Buffer.from('a@b')), p256), 'ERR_CSR_MALFORMED', /not a well-formed string/);
    expectRefused(csr(subject(0x0c, Buffer.from([0xc3, 0x28])), p256), 'ERR_CSR_MALFORMED', /not a well-formed string/);
    expectRefused(csr(subject(0x1e, Buffer.from('abc')), p256), 'ERR_CSR_MALFORMED', /not a well-formed string/);
  });

  it('refuses missing attributes, non-DER attribute values and an explicit critical FALSE in a requested extension', () => {
    const noAttributes = sequence(VERSION_0, sequence(), spkiDer(p256));
    expectRefused(csr(noAttributes, p256), 'ERR_CSR_MALFORMED', /CertificationRequestInfo has 3 fields, expected 4/);
    const challenge = (value: Buffer): Buffer => info(spkiDer(p256), { attributes: explicit(0, sequence(oid('1.2.840.113549.1.9.7'), set(value))) });
    verifyCsr(parseCsr(csr(challenge(Buffer.from([0x0c, 0x02, 0x6f, 0x6b])), p256)));
    expectRefused(csr(challenge(Buffer.from([0x0f, 0x01, 0x00])), p256), 'ERR_CSR_MALFORMED', /universal tag 15 that is reserved/);
    expectRefused(csr(challenge(Buffer.from([0x24, 0x04, 0x04, 0x02, 0x6f, 0x6b])), p256), 'ERR_CSR_MALFORMED', /constructed encoding of universal tag 4 \(BER, not DER\)/);
    expectRefused(csr(challenge(Buffer.from([0x02, 0x02, 0x00, 0x05])), p256), 'ERR_CSR_MALFORMED', /INTEGER that is not minimally encoded/);
    const withFalse = replaceBytes(goodInfo, Buffer.from([0x01, 0x01, 0xff]), Buffer.from([0x01, 0x01, 0x00]));
    expectRefused(csr(withFalse, p256), 'ERR_CSR_MALFORMED', /critical must be absent or DER TRUE/);
  });

  it('refuses a signature valid only over a re-encoding of the received CertificationRequestInfo', () => {
    // Received: the subject with a long-form length; signed: the DER form of the same info.
    const body = replaceBytes(goodInfo.subarray(2), Buffer.from([0x02, 0x01, 0x00, 0x30, 0x00]), Buffer.from([0x02, 0x01, 0x00, 0x30, 0x81, 0x00]));
    const received = Buffer.concat([Buffer.from([0x30, 0x81, body.length]), body]);
    const forged = csr(received, p256, { signedBytes: goodInfo });
    // The signature is good over the canonical bytes and bad over the received ones: only a re-encoding would verify.
    const signature = sign('sha256', goodInfo, p256);
    assert.equal(verify('sha256', goodInfo, p256, signature), true);
    assert.equal(verify('sha256', received, p256, signature), false);
    expectRefused(forged, 'ERR_CSR_MALFORMED', /non-minimal DER length/);
  });
});

describe('strict CSRs: signature algorithm and value', () => {
  const rsaInfo = info(spkiDer(rsa));
  const ecInfo = info(spkiDer(p256));

  it('refuses RSA PKCS#1 v1.5 without NULL parameters and ECDSA with parameters', () => {
    expectRefused(csr(rsaInfo, rsa, { algorithm: sequence(oid(OID.sha256WithRSA)) }), 'ERR_CSR_MALFORMED', /must have NULL parameters \(RFC 4055\)/);
    expectRefused(csr(ecInfo, p256, { algorithm: sequence(oid(OID.ecdsaWithSHA256), nullValue()) }), 'ERR_CSR_MALFORMED', /must have no parameters \(RFC 5758\)/);
  });

  it('refuses RSASSA-PSS with a message that says what to use', () => {
    const pss = sequence(oid('1.2.840.113549.1.1.10'), sequence());
    expectRefused(csr(rsaInfo, rsa, { algorithm: pss }), 'ERR_CSR_SIGNATURE', /RSASSA-PSS, which meshca does not accept; sign it with sha256WithRSAEncryption/);
  });

  it('refuses a signature BIT STRING with unused bits, an RSA signature of the wrong size and a non-DER ECDSA value', () => {
    const unused = Buffer.from(csr(ecInfo, p256));
    const at = unused.indexOf(ECDSA_SHA256) + ECDSA_SHA256.length;
    unused[at + 2] = 1; // the BIT STRING's unused-bits byte
    expectRefused(unused, 'ERR_CSR_MALFORMED', /signature BIT STRING must be non-empty with 0 unused bits/);
    const short = sequence(rsaInfo, RSA_SHA256, bitString(sign('sha256', rsaInfo, rsa).subarray(1)));
    expectRefused(short, 'ERR_CSR_SIGNATURE', /CSR signature is 255 bytes; an RSA-2048 signature is 256/);
    const signature = sign('sha256', ecInfo, p256);
    // r with a superfluous leading zero: 30 len 02 len r ... -> not DER.
    const rLength = signature[3]!;
    const r = signature.subarray(4, 4 + rLength);
    const rest = signature.subarray(4 + rLength);
    const body = Buffer.concat([Buffer.from([0x02, rLength + 1, 0x00]), r, rest]);
    const nonDer = sequence(ecInfo, ECDSA_SHA256, bitString(Buffer.concat([Buffer.from([0x30, body.length]), body])));
    expectRefused(nonDer, 'ERR_CSR_SIGNATURE', /not a DER ECDSA-Sig-Value/);
  });

  it('the CA turns every refusal into CSR_ERROR with the reason', () => {
    const rootKey = generateKeyPairFor('ec-p256').privateKey;
    const root = parseCertificate(createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
    const authority = new CertificateAuthority({
      signer: new LocalSigner('self-signed', buildCaMaterial({ signingCert: root, privateKey: rootKey, chain: [], roots: [root] })),
      defaultTtlSeconds: 3600,
      maxTtlSeconds: 86400,
    });
    const exponent = Buffer.alloc(383, 0xab);
    exponent[0] = 0x7f;
    const bigExponent = csr(info(rsaSpki(modulusOf(rsa), exponent)), rsa);
    assert.throws(
      () => authority.checkCsr(encodePem('CERTIFICATE REQUEST', bigExponent)),
      (error: unknown) => error instanceof CaError && error.code === 'CSR_ERROR' && /^CSR error: CSR key has a 3063-bit RSA public exponent/.test(error.message),
    );
  });
});
