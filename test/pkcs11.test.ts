/**
 * PKCS#11 against a real module, SoftHSM2, through the pkcs11js binding: a token made by the test, P-256 and
 * RSA-2048 key pairs generated inside it as sensitive and non-extractable, signatures made in the token and
 * checked with node:crypto against the public key read back from the token. Nothing here is mocked.
 */
import assert from 'node:assert/strict';
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pkcs11js from 'pkcs11js';
import { initSoftHsmToken, type SoftHsmToken } from './support/softhsm.js';

/** DER of the OID prime256v1 (1.2.840.10045.3.1.7), the CKA_EC_PARAMS of a P-256 key. */
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');
/** DER DigestInfo header for SHA-256 (RFC 8017, 9.2 note 1): CKM_RSA_PKCS signs header || digest. */
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

const message = Buffer.from('meshca: a stand-in for the DER of a TBSCertificate');

describe('PKCS#11: SoftHSM2 through pkcs11js', () => {
  let token: SoftHsmToken;
  let p11: pkcs11js.PKCS11;
  let session: Buffer;

  const attribute = (object: Buffer, type: number): Buffer => {
    const [value] = p11.C_GetAttributeValue(session, object, [{ type }]);
    assert.ok(value?.value, `attribute 0x${type.toString(16)} has a value`);
    return value.value;
  };
  const flag = (object: Buffer, type: number): boolean => attribute(object, type)[0] === 1;

  /** The private-key template: inside the token, behind the PIN, never readable, never exportable. */
  const privateTemplate = (label: string, id: Buffer): pkcs11js.Template => [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
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
    assert.deepEqual([der[0], der[1]], [0x04, 65], 'CKA_EC_POINT is an OCTET STRING of 65 bytes');
    const point = der.subarray(2);
    assert.equal(point[0], 0x04, 'the point is uncompressed');
    return createPublicKey({
      key: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)) },
      format: 'jwk',
    });
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
    token = initSoftHsmToken('meshca-pkcs11-test');
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
    if (p11) {
      p11.C_CloseAllSessions(p11.C_GetSessionInfo(session).slotID);
      p11.C_Finalize();
      p11.close();
    }
    token?.remove();
  });

  test('generates a P-256 and an RSA-2048 key pair inside the token', () => {
    const ecPair = p11.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
      publicTemplate('ca-p256', Buffer.from('01', 'hex'), [
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_EC_PARAMS, value: P256_PARAMS },
      ]),
      privateTemplate('ca-p256', Buffer.from('01', 'hex')),
    );
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
    assert.equal(keys.rsa.publicKey.asymmetricKeyType, 'rsa');
    assert.equal(keys.rsa.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
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
