/**
 * Signatures and verifications that do not hold up the event loop when they are costly: on libuv's thread pool (the
 * callback forms of `crypto.sign` and `crypto.verify`) for RSA signing (~0.3-1 ms at 2048 bits, more for bigger
 * keys) and for EC curves without OpenSSL's fast P-256 code (P-384: ~1 ms to sign or verify); inline for P-256
 * (~35 us to sign, ~70-150 us to verify) and RSA verification (~20 us), where the hand-off costs more CPU than it
 * frees. Measured in the whole server (bench/NOTES.md, "Off the event loop"): an RSA-2048 CA served ~45% more
 * certificates per second with its signatures on the pool; a P-256 CA served the same with every operation there,
 * at ~15% more CPU per certificate.
 */
import { sign, verify, type KeyObject } from 'node:crypto';

const P256 = 'prime256v1';

/** Whether operations with `key` go to the thread pool, per key (its details are read once). */
const decisions = new WeakMap<KeyObject, { sign: boolean; verify: boolean }>();

function decisionFor(key: KeyObject): { sign: boolean; verify: boolean } {
  let decision = decisions.get(key);
  if (!decision) {
    const type = key.asymmetricKeyType;
    const fastCurve = type === 'ec' && key.asymmetricKeyDetails?.namedCurve === P256;
    decision = { sign: !fastCurve && (type === 'rsa' || type === 'rsa-pss' || type === 'ec'), verify: type === 'ec' && !fastCurve };
    decisions.set(key, decision);
  }
  return decision;
}

/** `crypto.sign(hash, data, key)`, on the thread pool when that signature is costly for this key. */
export function signWithoutBlocking(hash: string, data: Buffer, key: KeyObject): Promise<Buffer> {
  if (!decisionFor(key).sign) return Promise.resolve(sign(hash, data, key));
  return new Promise((resolve, reject) => {
    sign(hash, data, key, (error, signature) => (error ? reject(error) : resolve(signature)));
  });
}

/**
 * `crypto.verify(hash, data, key, signature)`, on the thread pool when that verification is costly for this key;
 * false for a signature that does not verify or cannot be read.
 */
export function verifyWithoutBlocking(hash: string, data: Buffer, key: KeyObject, signature: Buffer): Promise<boolean> {
  if (!decisionFor(key).verify) {
    try {
      return Promise.resolve(verify(hash, data, key, signature));
    } catch {
      return Promise.resolve(false);
    }
  }
  return new Promise((resolve) => {
    try {
      verify(hash, data, key, signature, (error, valid) => resolve(!error && valid));
    } catch {
      resolve(false);
    }
  });
}
