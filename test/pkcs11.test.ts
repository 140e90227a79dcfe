/**
 * PKCS#11 against a real module, SoftHSM2, through the pkcs11js binding: a token made by the test, P-256 and
 * RSA-2048 key pairs generated inside it as sensitive and non-extractable, signatures made in the token and
 * checked with node:crypto against the public key read back from the token. Then the same token through
 * meshca's Pkcs11Key (src/ca/sources/pkcs11/): CA certificates signed in the token that openssl verifies, and
 * the one-line start-up errors. Nothing here is mocked.
 */
import assert from 'node:assert/strict';
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pkcs11js from 'pkcs11js';
import { CaConfigError } from '../src/ca/errors.js';
import { generatePkcs11KeyPair } from '../src/ca/sources/pkcs11/keygen.js';
import { openPkcs11Key, type Pkcs11Key, type Pkcs11KeyConfig } from '../src/ca/sources/pkcs11/pkcs11-key.js';
import { caCertificateTbs, certificateFromTbs, certificateToPem } from '../src/pki/index.js';
import { opensslVerify } from './support/openssl.js';
import { initSoftHsmToken, type SoftHsmToken } from './support/softhsm.js';

/** DER of the OIDs prime256v1 (1.2.840.10045.3.1.7) and secp384r1 (1.3.132.0.34): CKA_EC_PARAMS of P-256 and P-384 keys. */
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');
const P384_PARAMS = Buffer.from('06052b81040022', 'hex');
/** DER DigestInfo header for SHA-256 (RFC 8017, 9.2 note 1): CKM_RSA_PKCS signs header || digest. */
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

const message = Buffer.from('meshca: a stand-in for the DER of a TBSCertificate');

let token: SoftHsmToken;
/** SPKI DER of each key pair the binding suite generated, by label, as read from the token's public key objects. */
const generated = new Map<string, Buffer>();

before(() => {
  token = initSoftHsmToken('meshca-pkcs11-test');
});

after(() => {
  token?.remove();
});

describe('PKCS#11: SoftHSM2 through pkcs11js', () => {
  let p11: pkcs11js.PKCS11;
  let session: Buffer;

  const attribute = (object: Buffer, type: number): Buffer => {
    const [value] = p11.C_GetAttributeValue(session, object, [{ type }]);
    assert.ok(value?.value, `attribute 0x${type.toString(16)} has a value`);
    return value.value;
  };
  const flag = (object: Buffer, type: number): boolean => attribute(object, type)[0] === 1;

  /** The private-key template: inside the token, behind the PIN, never readable, never exportable. */
  const privateTemplate = (label: string, id: Buffer, exportable = false): pkcs11js.Template => [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: !exportable },
    { type: pkcs11js.CKA_EXTRACTABLE, value: exportable },
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
  ];
  const publicTemplate = (label: string, id: Buffer, specific: pkcs11js.Template): pkcs11js.Template => [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_VERIFY, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
    ...specific,
  ];

  /** The public key as node:crypto sees it, from the token's attributes alone (JWK wants unpadded base64url). */
  const publicKeyOf = (publicHandle: Buffer, kind: 'ec' | 'rsa'): KeyObject => {
    const b64u = (bytes: Buffer): string => bytes.toString('base64url');
    if (kind === 'rsa') {
      const unsigned = (bytes: Buffer): Buffer => bytes.subarray(bytes.findIndex((b) => b !== 0));
      const n = unsigned(attribute(publicHandle, pkcs11js.CKA_MODULUS));
      const e = unsigned(attribute(publicHandle, pkcs11js.CKA_PUBLIC_EXPONENT));
      return createPublicKey({ key: { kty: 'RSA', n: b64u(n), e: b64u(e) }, format: 'jwk' });
    }
    // CKA_EC_POINT is the DER OCTET STRING around the uncompressed point 04 || X || Y (65 bytes for P-256).
    const der = attribute(publicHandle, pkcs11js.CKA_EC_POINT);
    const p384 = attribute(publicHandle, pkcs11js.CKA_EC_PARAMS).equals(P384_PARAMS);
    const size = p384 ? 48 : 32;
    assert.deepEqual([der[0], der[1]], [0x04, 1 + 2 * size], 'CKA_EC_POINT is an OCTET STRING around the point');
    const point = der.subarray(2);
    assert.equal(point[0], 0x04, 'the point is uncompressed');
    return createPublicKey({
      key: { kty: 'EC', crv: p384 ? 'P-384' : 'P-256', x: b64u(point.subarray(1, 1 + size)), y: b64u(point.subarray(1 + size)) },
      format: 'jwk',
    });
  };

  const generateEc = (label: string, id: string, params: Buffer, exportable = false): pkcs11js.KeyPair => {
    const pair = p11.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
      publicTemplate(label, Buffer.from(id, 'hex'), [
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_EC_PARAMS, value: params },
      ]),
      privateTemplate(label, Buffer.from(id, 'hex'), exportable),
    );
    generated.set(label, publicKeyOf(pair.publicKey, 'ec').export({ format: 'der', type: 'spki' }));
    return pair;
  };

  const sign = (mechanism: number, key: Buffer, data: Buffer): Buffer => {
    p11.C_SignInit(session, { mechanism }, key);
    return p11.C_Sign(session, data, Buffer.alloc(512));
  };

  const keys: Record<'ec' | 'rsa', { pair: pkcs11js.KeyPair; publicKey: KeyObject } | undefined> = { ec: undefined, rsa: undefined };
  const keyOf = (kind: 'ec' | 'rsa'): { pair: pkcs11js.KeyPair; publicKey: KeyObject } => {
    const found = keys[kind];
    assert.ok(found, `the ${kind} key pair was generated`);
    return found;
  };

  before(() => {
    p11 = new pkcs11js.PKCS11();
    p11.load(token.module);
    // OS locking: the async calls run on libuv's thread pool, so the module must expect several threads.
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === token.label);
    assert.ok(slot, `a slot holds the token ${token.label}`);
    session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_Login(session, pkcs11js.CKU_USER, token.pin);
  });

  after(() => {
    if (!p11) return;
    p11.C_CloseAllSessions(p11.C_GetSessionInfo(session).slotID);
    // Finalised before the Pkcs11Key suite: it initialises the module itself and must start logged out.
    p11.C_Finalize();
    p11.close();
  });

  test('generates a P-256 and an RSA-2048 key pair inside the token', () => {
    const ecPair = generateEc('ca-p256', '01', P256_PARAMS);
    keys.ec = { pair: ecPair, publicKey: publicKeyOf(ecPair.publicKey, 'ec') };
    assert.equal(keys.ec.publicKey.asymmetricKeyType, 'ec');
    assert.equal(keys.ec.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');

    const rsaPair = p11.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
      publicTemplate('ca-rsa2048', Buffer.from('02', 'hex'), [
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_MODULUS_BITS, value: 2048 },
        { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
      ]),
      privateTemplate('ca-rsa2048', Buffer.from('02', 'hex')),
    );
    keys.rsa = { pair: rsaPair, publicKey: publicKeyOf(rsaPair.publicKey, 'rsa') };
    generated.set('ca-rsa2048', keys.rsa.publicKey.export({ format: 'der', type: 'spki' }));
    assert.equal(keys.rsa.publicKey.asymmetricKeyType, 'rsa');
    assert.equal(keys.rsa.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
  });

  test('generates a P-384 key pair, and an extractable P-256 one that Pkcs11Key must refuse', () => {
    const p384 = generateEc('ca-p384', '03', P384_PARAMS);
    assert.equal(flag(p384.privateKey, pkcs11js.CKA_EXTRACTABLE), false);
    const exportable = generateEc('exportable', '04', P256_PARAMS, true);
    assert.equal(flag(exportable.privateKey, pkcs11js.CKA_EXTRACTABLE), true);
  });

  test('the private keys are sensitive and non-extractable, and their value cannot be read', () => {
    for (const kind of ['ec', 'rsa'] as const) {
      const { privateKey } = keyOf(kind).pair;
      assert.equal(flag(privateKey, pkcs11js.CKA_EXTRACTABLE), false, `${kind}: CKA_EXTRACTABLE`);
      assert.equal(flag(privateKey, pkcs11js.CKA_SENSITIVE), true, `${kind}: CKA_SENSITIVE`);
      assert.equal(flag(privateKey, pkcs11js.CKA_NEVER_EXTRACTABLE), true, `${kind}: CKA_NEVER_EXTRACTABLE`);
      assert.equal(flag(privateKey, pkcs11js.CKA_ALWAYS_SENSITIVE), true, `${kind}: CKA_ALWAYS_SENSITIVE`);
      const secret = kind === 'ec' ? pkcs11js.CKA_VALUE : pkcs11js.CKA_PRIVATE_EXPONENT;
      assert.throws(
        () => p11.C_GetAttributeValue(session, privateKey, [{ type: secret }]),
        (error: Error & { code?: number }) => error.code === pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
        `${kind}: reading the secret value is refused with CKR_ATTRIBUTE_SENSITIVE`,
      );
      // PKCS#11 allows CKA_EXTRACTABLE to go from true to false only.
      assert.throws(() => p11.C_SetAttributeValue(session, privateKey, [{ type: pkcs11js.CKA_EXTRACTABLE, value: true }]));
      assert.equal(flag(privateKey, pkcs11js.CKA_EXTRACTABLE), false, `${kind}: still not extractable`);
    }
  });

  test('the token offers the mechanisms meshca needs: CKM_ECDSA and CKM_RSA_PKCS over a digest made in Node.js', () => {
    const mechanisms = p11.C_GetMechanismList(p11.C_GetSessionInfo(session).slotID);
    assert.ok(mechanisms.includes(pkcs11js.CKM_ECDSA) && mechanisms.includes(pkcs11js.CKM_RSA_PKCS));
    // SoftHSM 2.6 (Debian 12's) has no CKM_ECDSA_SHA256 (C_SignInit gives CKR_MECHANISM_INVALID), and not every
    // HSM has every hash-and-sign mechanism: hashing in Node.js and signing the digest works everywhere.
  });

  test('P-256: the token signs a SHA-256 digest (CKM_ECDSA); node:crypto verifies', () => {
    const { pair, publicKey } = keyOf('ec');
    const signature = sign(pkcs11js.CKM_ECDSA, pair.privateKey, createHash('sha256').update(message).digest());
    // PKCS#11 gives r || s, 32 bytes each: what node:crypto calls ieee-p1363.
    assert.equal(signature.length, 64);
    assert.equal(verify('sha256', message, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature), true);
    assert.equal(verify('sha256', Buffer.from('another message'), { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature), false);
  });

  test('RSA-2048: the token signs with CKM_SHA256_RSA_PKCS and with CKM_RSA_PKCS over a DigestInfo; node:crypto verifies', () => {
    const { pair, publicKey } = keyOf('rsa');
    const digest = createHash('sha256').update(message).digest();
    const fromData = sign(pkcs11js.CKM_SHA256_RSA_PKCS, pair.privateKey, message);
    const fromDigest = sign(pkcs11js.CKM_RSA_PKCS, pair.privateKey, Buffer.concat([SHA256_DIGEST_INFO, digest]));
    // RSASSA-PKCS1-v1_5 is deterministic: the two ways must give the same bytes.
    assert.deepEqual(fromDigest, fromData);
    assert.equal(fromData.length, 256);
    assert.equal(verify('sha256', message, publicKey, fromData), true);
    assert.equal(verify('sha256', Buffer.from('another message'), publicKey, fromData), false);
  });

  test('C_SignAsync signs on the thread pool and gives a signature that verifies', async () => {
    const { pair, publicKey } = keyOf('ec');
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, pair.privateKey);
    const signature = await p11.C_SignAsync(session, createHash('sha256').update(message).digest(), Buffer.alloc(64));
    assert.equal(verify('sha256', message, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature), true);
  });
});

describe('Pkcs11Key (src/ca/sources/pkcs11): the same token through meshca', () => {
  const PIN_ENV = 'MESHCA_TEST_PKCS11_PIN';
  const config = (options: Partial<Pkcs11KeyConfig>): Pkcs11KeyConfig => ({
    modulePath: token.module,
    tokenLabel: token.label,
    pinEnv: PIN_ENV,
    ...options,
  });
  const withKey = async (options: Partial<Pkcs11KeyConfig>, use: (key: Pkcs11Key) => Promise<void>): Promise<void> => {
    const key = await openPkcs11Key(config(options), { [PIN_ENV]: token.pin });
    try {
      await use(key);
    } finally {
      key.close();
    }
  };
  const oneLine = (pattern: RegExp) => (error: unknown): boolean => {
    assert.ok(error instanceof CaConfigError, `a CaConfigError, not ${String(error)}`);
    assert.doesNotMatch(error.message, /\n/);
    assert.match(error.message, pattern);
    return true;
  };

  test('start-up errors are one line: wrong PIN, no PIN, unknown token, unknown key, unloadable module, extractable key', async () => {
    // First, while nothing in this process is logged in: PKCS#11 logs in per application, not per key.
    const wrongPin = path.join(token.dir, 'wrong.pin');
    writeFileSync(wrongPin, '000000\n', { mode: 0o600 });
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'ca-p256', pinEnv: undefined, pinFile: wrongPin })), oneLine(/login to token "meshca-pkcs11-test" failed: wrong PIN$/));
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'ca-p256' }), {}), oneLine(/MESHCA_TEST_PKCS11_PIN is not set or empty/));
    const env = { [PIN_ENV]: token.pin };
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'ca-p256', tokenLabel: 'no-such-token' }), env), oneLine(/no token labelled "no-such-token"/));
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'no-such-key' }), env), oneLine(/no private key with label "no-such-key" in token "meshca-pkcs11-test"/));
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'ca-p256', keyIdHex: '02' }), env), oneLine(/no private key with label "ca-p256" and id 02/));
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'ca-p256', modulePath: path.join(token.dir, 'libnothing.so') }), env), oneLine(/cannot load the module .*libnothing\.so/));
    await assert.rejects(openPkcs11Key(config({ keyLabel: 'exportable' }), env), oneLine(/is extractable, so its private part can leave the token/));
  });

  test('the PIN can come from a file', async () => {
    const pinFile = path.join(token.dir, 'user.pin');
    writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 });
    const key = await openPkcs11Key(config({ keyLabel: 'ca-p256', pinEnv: undefined, pinFile }), {});
    key.close();
  });

  const cases = [
    { name: 'P-256 by label', options: { keyLabel: 'ca-p256' }, label: 'ca-p256', kind: 'ec', curve: 'P-256' },
    { name: 'P-384 by label and id', options: { keyLabel: 'ca-p384', keyIdHex: '03' }, label: 'ca-p384', kind: 'ec', curve: 'P-384' },
    { name: 'RSA-2048 by id', options: { keyIdHex: '02' }, label: 'ca-rsa2048', kind: 'rsa', curve: undefined },
  ] as const;
  for (const { name, options, label, kind, curve } of cases) {
    test(`${name}: a self-signed CA certificate signed in the token, verified by openssl`, async () => {
      await withKey(options, async (key) => {
        assert.deepEqual({ kind: key.facts.kind, curve: key.facts.curve, label: key.facts.label }, { kind, curve, label });
        assert.equal(key.facts.extractable, false);
        assert.equal(key.facts.sensitive, true);
        const spki = generated.get(label);
        assert.ok(spki, `the binding suite generated ${label}`);
        assert.deepEqual(key.publicKey.export({ format: 'der', type: 'spki' }), spki, 'the public key is the one the token generated');

        const { tbs, profile } = caCertificateTbs({ subject: { organization: 'meshca', commonName: `HSM ${label}` }, subjectKey: key.publicKey, notAfter: new Date(Date.now() + 86_400_000), pathLen: 1 }, key.publicKey);
        const signature = await key.sign(profile.hash, tbs);
        // X.509's encoding (DER Ecdsa-Sig-Value for ECDSA), which node:crypto takes by default.
        assert.equal(verify(profile.hash, tbs, key.publicKey, signature), true);
        const pem = certificateToPem(certificateFromTbs(tbs, profile.algorithmIdentifier, signature));
        const result = opensslVerify(pem, '', pem);
        assert.ok(result.ok, result.output);
      });
    });
  }

  test('generatePkcs11KeyPair makes a sensitive, non-extractable key in the token, once per label and id', async () => {
    const made = { modulePath: token.module, tokenLabel: token.label, pinEnv: PIN_ENV, keyLabel: 'made-by-meshca', keyIdHex: '0a0b', spec: 'ec-p256' } as const;
    const env = { [PIN_ENV]: token.pin };
    await generatePkcs11KeyPair(made, env);
    await withKey({ keyLabel: 'made-by-meshca', keyIdHex: '0a0b' }, async (key) => {
      assert.deepEqual(key.facts, { kind: 'ec', curve: 'P-256', label: 'made-by-meshca', idHex: '0a0b', extractable: false, sensitive: true });
      const signature = await key.sign('sha256', Buffer.from('made'));
      assert.equal(verify('sha256', Buffer.from('made'), key.publicKey, signature), true);
    });
    await assert.rejects(generatePkcs11KeyPair(made, env), oneLine(/already holds a private key with label "made-by-meshca"/));
    await assert.rejects(generatePkcs11KeyPair({ ...made, keyLabel: 'other' }, env), oneLine(/already holds a private key with id 0a0b/));
  });

  test('concurrent signatures share a few sessions and all verify', async () => {
    await withKey({ keyLabel: 'ca-p256', maxSessions: 3 }, async (key) => {
      const messages = Array.from({ length: 40 }, (_, i) => Buffer.from(`message ${i}`));
      const signatures = await Promise.all(messages.map((data) => key.sign('sha256', data)));
      signatures.forEach((signature, i) => assert.equal(verify('sha256', messages[i]!, key.publicKey, signature), true, `signature ${i}`));
    });
  });

  test('close() lets the signatures in the token finish, fails the waiting ones, then finalises the module', async () => {
    const key = await openPkcs11Key(config({ keyLabel: 'ca-p256', maxSessions: 2 }), { [PIN_ENV]: token.pin });
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => {
        const signing = key.sign('sha256', Buffer.from(`message ${i}`));
        if (i === 5) key.close();
        return signing;
      }),
    );
    const fulfilled = results.filter((r) => r.status === 'fulfilled');
    const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(fulfilled.length, 2, 'the two signatures holding a session finish');
    assert.equal(rejected.length, 4);
    for (const { reason } of rejected) assert.match(String(reason), /was closed/);
    await assert.rejects(key.sign('sha256', Buffer.from('late')), /is closed/);
    // Finalised and loaded again from scratch: a fresh open logs in and signs.
    await withKey({ keyLabel: 'ca-p256' }, async (again) => {
      assert.equal(verify('sha256', Buffer.from('again'), again.publicKey, await again.sign('sha256', Buffer.from('again'))), true);
    });
  });
});
