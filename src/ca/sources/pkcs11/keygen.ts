/**
 * Makes a CA key pair inside a PKCS#11 token: a token object, private (behind the PIN), sensitive and never
 * extractable, so the private key exists only in the token from its first moment. For `meshca cacerts ...
 * --pkcs11-*` and the tests; the key is then used through openPkcs11Key.
 */
import type * as Pkcs11Js from 'pkcs11js';
import { oid } from '../../../pki/der.js';
import type { KeySpec } from '../../../pki/index.js';
import { OID } from '../../../pki/oids.js';
import { CaConfigError } from '../../errors.js';
import { openTokenSession, type Pkcs11KeyConfig } from './pkcs11-key.js';

export interface NewPkcs11Key extends Pick<Pkcs11KeyConfig, 'modulePath' | 'tokenLabel' | 'pinFile' | 'pinEnv'> {
  keyLabel: string;
  keyIdHex: string;
  spec: KeySpec;
}

/** Generates the pair; refuses when a key with the label or the id is in the token already. */
export async function generatePkcs11KeyPair(options: NewPkcs11Key, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (!/^([0-9a-f]{2})+$/i.test(options.keyIdHex)) throw new CaConfigError(`PKCS#11: the key id must be hex bytes, not ${JSON.stringify(options.keyIdHex)}`);
  const token = await openTokenSession(options, env, true);
  const { binding, p11, session } = token;
  try {
    const id = Buffer.from(options.keyIdHex, 'hex');
    for (const naming of [{ type: binding.CKA_LABEL, value: options.keyLabel }, { type: binding.CKA_ID, value: id }]) {
      p11.C_FindObjectsInit(session, [{ type: binding.CKA_CLASS, value: binding.CKO_PRIVATE_KEY }, naming]);
      const existing = p11.C_FindObjects(session, 1);
      p11.C_FindObjectsFinal(session);
      if (existing.length > 0) {
        const what = naming.type === binding.CKA_LABEL ? `label ${JSON.stringify(options.keyLabel)}` : `id ${options.keyIdHex}`;
        throw new CaConfigError(`PKCS#11: token ${JSON.stringify(options.tokenLabel)} already holds a private key with ${what}; choose another or delete it`);
      }
    }
    const rsa = options.spec.startsWith('rsa-');
    const shared = (objectClass: number): Pkcs11Js.Template => [
      { type: binding.CKA_CLASS, value: objectClass },
      { type: binding.CKA_KEY_TYPE, value: rsa ? binding.CKK_RSA : binding.CKK_EC },
      { type: binding.CKA_TOKEN, value: true },
      { type: binding.CKA_LABEL, value: options.keyLabel },
      { type: binding.CKA_ID, value: id },
    ];
    const publicTemplate: Pkcs11Js.Template = [...shared(binding.CKO_PUBLIC_KEY), { type: binding.CKA_VERIFY, value: true }];
    if (rsa) {
      publicTemplate.push({ type: binding.CKA_MODULUS_BITS, value: Number(options.spec.slice(4)) }, { type: binding.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) });
    } else {
      publicTemplate.push({ type: binding.CKA_EC_PARAMS, value: oid(options.spec === 'ec-p384' ? OID.secp384r1 : OID.prime256v1) });
    }
    const privateTemplate: Pkcs11Js.Template = [
      ...shared(binding.CKO_PRIVATE_KEY),
      { type: binding.CKA_PRIVATE, value: true },
      { type: binding.CKA_SENSITIVE, value: true },
      { type: binding.CKA_EXTRACTABLE, value: false },
      { type: binding.CKA_SIGN, value: true },
    ];
    const mechanism = rsa ? binding.CKM_RSA_PKCS_KEY_PAIR_GEN : binding.CKM_EC_KEY_PAIR_GEN;
    // Async: an RSA pair takes the token a second or more, which the event loop must not wait out.
    await p11.C_GenerateKeyPairAsync(session, { mechanism }, publicTemplate, privateTemplate);
  } finally {
    token.release();
  }
}
