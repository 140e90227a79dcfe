/** Key pairs: generation, PEM in and out, and a description used by policy checks. */
import { createPrivateKey, createPublicKey, generateKeyPair, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { PkiError } from './errors.js';
import { spkiFromJwk } from './spki.js';

export type KeySpec = 'rsa-2048' | 'rsa-3072' | 'rsa-4096' | 'ec-p256' | 'ec-p384';
export const KEY_SPECS: readonly KeySpec[] = ['rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256', 'ec-p384'];

export interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export type KeyDescription = { kind: 'rsa'; bits: number } | { kind: 'ec'; curve: 'P-256' | 'P-384' | 'P-521' };

const generateKeyPairAsync = promisify(generateKeyPair);

function generationOptions(spec: KeySpec): { type: 'rsa'; bits: number } | { type: 'ec'; curve: string } {
  switch (spec) {
    case 'rsa-2048':
      return { type: 'rsa', bits: 2048 };
    case 'rsa-3072':
      return { type: 'rsa', bits: 3072 };
    case 'rsa-4096':
      return { type: 'rsa', bits: 4096 };
    case 'ec-p256':
      return { type: 'ec', curve: 'prime256v1' };
    case 'ec-p384':
      return { type: 'ec', curve: 'secp384r1' };
  }
}

export function parseKeySpec(text: string): KeySpec {
  const normalized = text.trim().toLowerCase();
  if ((KEY_SPECS as readonly string[]).includes(normalized)) return normalized as KeySpec;
  throw new PkiError('ERR_KEY_UNSUPPORTED', `unknown key type "${text}" (use one of ${KEY_SPECS.join(', ')})`);
}

/** Synchronous generation; fine for EC and for start-up. RSA takes ~0.3 s of CPU: use the async form on servers. */
export function generateKeyPairFor(spec: KeySpec): KeyPair {
  const options = generationOptions(spec);
  return options.type === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: options.bits, publicExponent: 0x10001 })
    : generateKeyPairSync('ec', { namedCurve: options.curve });
}

/** Generation on libuv's thread pool, off the event loop. */
export async function generateKeyPairForAsync(spec: KeySpec): Promise<KeyPair> {
  const options = generationOptions(spec);
  return options.type === 'rsa'
    ? generateKeyPairAsync('rsa', { modulusLength: options.bits, publicExponent: 0x10001 })
    : generateKeyPairAsync('ec', { namedCurve: options.curve });
}

const CURVES: Record<string, 'P-256' | 'P-384' | 'P-521'> = {
  prime256v1: 'P-256',
  secp384r1: 'P-384',
  secp521r1: 'P-521',
};

export function describeKey(key: KeyObject): KeyDescription {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa' && details?.modulusLength) return { kind: 'rsa', bits: details.modulusLength };
  if (key.asymmetricKeyType === 'ec' && details?.namedCurve && CURVES[details.namedCurve]) {
    return { kind: 'ec', curve: CURVES[details.namedCurve]! };
  }
  throw new PkiError(
    'ERR_KEY_UNSUPPORTED',
    `unsupported key type ${key.asymmetricKeyType ?? 'unknown'}${details?.namedCurve ? ` (${details.namedCurve})` : ''}`,
  );
}

export function keyLabel(key: KeyObject): string {
  const d = describeKey(key);
  return d.kind === 'rsa' ? `RSA-${d.bits}` : `ECDSA ${d.curve}`;
}

/**
 * Private key PEM: PKCS#1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") by default, as Istio writes them,
 * or PKCS#8 ("PRIVATE KEY") when `pkcs8` is set (Istio's PKCS8_KEY).
 */
export function exportPrivateKeyPem(key: KeyObject, options: { pkcs8?: boolean } = {}): string {
  if (options.pkcs8) return key.export({ format: 'pem', type: 'pkcs8' }) as string;
  const type = key.asymmetricKeyType === 'rsa' ? 'pkcs1' : key.asymmetricKeyType === 'ec' ? 'sec1' : 'pkcs8';
  return key.export({ format: 'pem', type }) as string;
}

export function loadPrivateKey(pem: string | Buffer, what = 'private key'): KeyObject {
  try {
    const key = createPrivateKey({ key: pem, format: 'pem' });
    describeKey(key);
    return key;
  } catch (error) {
    if (error instanceof PkiError) throw error;
    throw new PkiError('ERR_PEM', `${what} is not a readable unencrypted PEM private key`, { cause: error });
  }
}

export function spkiDer(key: KeyObject): Buffer {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  // RSA and named-curve EC keys: written from the JWK export (~10 µs) instead of OpenSSL's SPKI encoder (~240 µs).
  const type = publicKey.asymmetricKeyType;
  const written = type === 'rsa' || type === 'ec' ? spkiFromJwk(publicKey.export({ format: 'jwk' })) : undefined;
  return written ?? publicKey.export({ format: 'der', type: 'spki' });
}

/** True when the private key belongs to the public key (compared by SPKI encoding). */
export function keysMatch(privateKey: KeyObject, publicKey: KeyObject): boolean {
  return spkiDer(privateKey).equals(spkiDer(publicKey));
}
