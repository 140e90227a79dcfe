/** Key pairs: generation, PEM in and out, and a description used by policy checks. */
import { createPrivateKey, createPublicKey, generateKeyPair, generateKeyPairSync, KeyObject, type JsonWebKey } from 'node:crypto';
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

/** What to generate: an RSA modulus size or an EC curve (OpenSSL's name). */
export type KeyAlgorithm = { type: 'rsa'; bits: number } | { type: 'ec'; curve: string };

function generationOptions(spec: KeySpec): KeyAlgorithm {
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

/*
 * Every generated pair comes out of the generator as a JWK and is imported from it. Node 20 ties a KeyObject that
 * crypto.generateKeyPair(Sync) returns to its generation job: when GC collects the job, its destructor locks the
 * key's mutex, and an export of the key (the JWK export of spkiDer, a PEM export) holds that mutex while it
 * allocates. A GC inside such an export that collects the job deadlocks the event loop: seen in the test suite
 * (ExportJWKEcKey -> GC -> ~KeyGenJob, the process stuck on a futex), and reproduced within seconds by generating
 * keys synchronously and exporting them as JWK. A key imported from bytes has a mutex of its own (~85 µs for P-256).
 */
const AS_JWK = { publicKeyEncoding: { format: 'jwk' }, privateKeyEncoding: { format: 'jwk' } } as const;

/** The generator's private key output (@types/node types it as a KeyObject whatever the encoding asked). */
function importGenerated(generated: unknown): KeyPair {
  if (generated === null || typeof generated !== 'object' || generated instanceof KeyObject || typeof (generated as JsonWebKey).kty !== 'string') {
    throw new PkiError('ERR_KEY_UNSUPPORTED', 'internal error: the key generator did not return a JWK');
  }
  const privateKey = createPrivateKey({ key: generated as JsonWebKey, format: 'jwk' });
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

/** Synchronous generation; fine for EC and for start-up. RSA takes ~0.3 s of CPU: use the async form on servers. */
export function generateKeyPairFor(spec: KeySpec): KeyPair {
  return generateKeyPairOf(generationOptions(spec));
}

/** Synchronous generation of `algorithm` (any curve OpenSSL knows, any RSA size), as generateKeyPairFor. */
export function generateKeyPairOf(algorithm: KeyAlgorithm): KeyPair {
  const pair =
    algorithm.type === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: algorithm.bits, publicExponent: 0x10001, ...AS_JWK })
      : generateKeyPairSync('ec', { namedCurve: algorithm.curve, ...AS_JWK });
  return importGenerated(pair.privateKey);
}

/** Generation on libuv's thread pool, off the event loop. */
export async function generateKeyPairForAsync(spec: KeySpec): Promise<KeyPair> {
  return generateKeyPairOffLoop(generationOptions(spec));
}

/** Generation of `algorithm` on libuv's thread pool, off the event loop (the agent's workload keys). */
export async function generateKeyPairOffLoop(algorithm: KeyAlgorithm): Promise<KeyPair> {
  const pair =
    algorithm.type === 'rsa'
      ? await generateKeyPairAsync('rsa', { modulusLength: algorithm.bits, publicExponent: 0x10001, ...AS_JWK })
      : await generateKeyPairAsync('ec', { namedCurve: algorithm.curve, ...AS_JWK });
  return importGenerated(pair.privateKey);
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
