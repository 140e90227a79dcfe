/**
 * Canonical SubjectPublicKeyInfo DER for the keys meshca handles: RSA { rsaEncryption, NULL } with a minimal
 * (n, e), and EC keys on a named curve as an uncompressed point. Written directly, so neither reading a CSR's key
 * nor exporting one of our own pays OpenSSL 3's encoder and decoder set-up (~150–250 µs a call on Node 20); the
 * bytes are those OpenSSL writes (test/pki.test.ts compares them).
 */
import { bitString, nullValue, oid, sequence, unsignedInteger } from './der.js';
import { OID } from './oids.js';

// AlgorithmIdentifier { rsaEncryption, NULL }: the only form of an RSA key's algorithm (RFC 3279 2.3.1).
export const RSA_ALGORITHM_IDENTIFIER = sequence(oid(OID.rsaEncryption), nullValue());

export interface EcCurveInfo {
  curve: 'P-256' | 'P-384' | 'P-521';
  oid: string;
  coordinateBytes: number;
  algorithmIdentifier: Buffer;
}

export const EC_CURVES: readonly EcCurveInfo[] = (
  [
    ['P-256', OID.prime256v1, 32],
    ['P-384', OID.secp384r1, 48],
    ['P-521', OID.secp521r1, 66],
  ] as const
).map(([curve, curveOid, coordinateBytes]) => ({
  curve,
  oid: curveOid,
  coordinateBytes,
  algorithmIdentifier: sequence(oid(OID.ecPublicKey), oid(curveOid)),
}));

export function rsaSpki(modulus: Buffer, exponent: Buffer): Buffer {
  return sequence(RSA_ALGORITHM_IDENTIFIER, bitString(sequence(unsignedInteger(modulus), unsignedInteger(exponent))));
}

/** `point`: 0x04 || X || Y, each coordinate `coordinateBytes` long. */
export function ecSpki(curve: EcCurveInfo, point: Buffer): Buffer {
  return sequence(curve.algorithmIdentifier, bitString(point));
}

/**
 * The SPKI of a public key from its JWK (a cheap export), or undefined for a key this encoder does not write
 * (another type or curve): the caller then asks OpenSSL.
 */
export function spkiFromJwk(jwk: { kty?: string; crv?: string; x?: string; y?: string; n?: string; e?: string }): Buffer | undefined {
  if (jwk.kty === 'RSA' && jwk.n && jwk.e) return rsaSpki(Buffer.from(jwk.n, 'base64url'), Buffer.from(jwk.e, 'base64url'));
  if (jwk.kty !== 'EC' || !jwk.x || !jwk.y) return undefined;
  const curve = EC_CURVES.find((c) => c.curve === jwk.crv);
  if (!curve) return undefined;
  const x = Buffer.from(jwk.x, 'base64url');
  const y = Buffer.from(jwk.y, 'base64url');
  if (x.length > curve.coordinateBytes || y.length > curve.coordinateBytes) return undefined;
  const point = Buffer.alloc(1 + 2 * curve.coordinateBytes);
  point[0] = 0x04;
  x.copy(point, 1 + curve.coordinateBytes - x.length);
  y.copy(point, 1 + 2 * curve.coordinateBytes - y.length);
  return ecSpki(curve, point);
}
