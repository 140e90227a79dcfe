/** Signature algorithms: which hash and key each OID means, and the AlgorithmIdentifier a CA key signs with. */
import { type KeyObject } from 'node:crypto';
import { children, decodeOid, expectTag, nullValue, oid, readSingle, sequence, Tag } from './der.js';
import { PkiError } from './errors.js';
import { describeKey, type KeyDescription } from './keys.js';
import { OID } from './oids.js';

export interface SignatureAlgorithm {
  hash: 'sha256' | 'sha384' | 'sha512';
  keyKind: 'rsa' | 'ec';
}

const SIGNATURE_ALGORITHMS: Record<string, SignatureAlgorithm> = {
  [OID.sha256WithRSA]: { hash: 'sha256', keyKind: 'rsa' },
  [OID.sha384WithRSA]: { hash: 'sha384', keyKind: 'rsa' },
  [OID.sha512WithRSA]: { hash: 'sha512', keyKind: 'rsa' },
  [OID.ecdsaWithSHA256]: { hash: 'sha256', keyKind: 'ec' },
  [OID.ecdsaWithSHA384]: { hash: 'sha384', keyKind: 'ec' },
  [OID.ecdsaWithSHA512]: { hash: 'sha512', keyKind: 'ec' },
};

export function signatureAlgorithmFor(oidText: string): SignatureAlgorithm | undefined {
  return SIGNATURE_ALGORITHMS[oidText];
}

/** What a CA key signs with: SHA-256 for RSA and P-256, SHA-384 for P-384, SHA-512 for P-521. */
export interface SigningProfile {
  hash: 'sha256' | 'sha384' | 'sha512';
  /** DER AlgorithmIdentifier, precomputed once per key. */
  algorithmIdentifier: Buffer;
}

export function signingProfileFor(key: KeyObject): SigningProfile {
  const description = describeKey(key);
  if (description.kind === 'rsa') {
    return { hash: 'sha256', algorithmIdentifier: sequence(oid(OID.sha256WithRSA), nullValue()) };
  }
  switch (description.curve) {
    case 'P-256':
      return { hash: 'sha256', algorithmIdentifier: sequence(oid(OID.ecdsaWithSHA256)) };
    case 'P-384':
      return { hash: 'sha384', algorithmIdentifier: sequence(oid(OID.ecdsaWithSHA384)) };
    case 'P-521':
      return { hash: 'sha512', algorithmIdentifier: sequence(oid(OID.ecdsaWithSHA512)) };
  }
}

const CURVE_OIDS: Record<string, 'P-256' | 'P-384' | 'P-521'> = {
  [OID.prime256v1]: 'P-256',
  [OID.secp384r1]: 'P-384',
  [OID.secp521r1]: 'P-521',
};

/**
 * Describes a SubjectPublicKeyInfo without importing it (cheap: used to refuse weak or odd keys before any crypto).
 * Throws ERR_KEY_UNSUPPORTED for algorithms and curves meshca does not sign for.
 */
export function describeSpki(spkiDer: Buffer): KeyDescription {
  const [algorithm, keyBits] = children(expectTag(readSingle(spkiDer, 'SubjectPublicKeyInfo'), Tag.SEQUENCE, 'SubjectPublicKeyInfo'));
  const [algorithmOid, parameters] = children(expectTag(algorithm, Tag.SEQUENCE, 'key algorithm'));
  const algorithmText = decodeOid(expectTag(algorithmOid, Tag.OID, 'key algorithm').contents);
  const bits = expectTag(keyBits, Tag.BIT_STRING, 'public key').contents.subarray(1);
  if (algorithmText === OID.rsaEncryption) {
    const [modulus] = children(expectTag(readSingle(bits, 'RSAPublicKey'), Tag.SEQUENCE, 'RSA public key'));
    let n = expectTag(modulus, Tag.INTEGER, 'RSA modulus').contents;
    while (n.length > 1 && n[0] === 0) n = n.subarray(1);
    const topBits = n.length === 0 ? 0 : 8 - Math.clz32(n[0]!) + 24;
    return { kind: 'rsa', bits: (n.length - 1) * 8 + topBits };
  }
  if (algorithmText === OID.ecPublicKey) {
    if (!parameters || parameters.tag !== Tag.OID) {
      throw new PkiError('ERR_KEY_UNSUPPORTED', 'EC keys with explicit curve parameters are not supported');
    }
    const curveOid = decodeOid(parameters.contents);
    const curve = CURVE_OIDS[curveOid];
    if (!curve) throw new PkiError('ERR_KEY_UNSUPPORTED', `unsupported elliptic curve ${curveOid} (use P-256 or P-384)`);
    return { kind: 'ec', curve };
  }
  throw new PkiError('ERR_KEY_UNSUPPORTED', `unsupported public key algorithm ${algorithmText} (use RSA or ECDSA)`);
}

/** meshca's minimum strength for workload and CA keys: RSA >= 2048 bits, or ECDSA P-256/P-384/P-521. */
export function assertKeyStrength(description: KeyDescription, what: string): void {
  if (description.kind === 'rsa' && description.bits < 2048) {
    throw new PkiError('ERR_KEY_WEAK', `${what} is RSA-${description.bits}; at least RSA-2048 is required`);
  }
  if (description.kind === 'rsa' && description.bits > 8192) {
    throw new PkiError('ERR_KEY_UNSUPPORTED', `${what} is RSA-${description.bits}; at most RSA-8192 is accepted`);
  }
}
