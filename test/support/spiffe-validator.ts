/**
 * What Envoy's SPIFFE certificate validator (envoy.tls.cert_validator.spiffe) does with the trust domains of a
 * SPIFFECertValidatorConfig, written for the tests on top of tools we did not write: the peer's trust domain is
 * read from the leaf's one SPIFFE URI SAN, and the chain must verify with `openssl verify -x509_strict` against
 * that trust domain's bundle alone. A peer of a trust domain with no bundle is refused.
 */
import { X509Certificate } from 'node:crypto';
import { opensslVerify } from './openssl.js';

export type SpiffeVerdict = { ok: true; id: string } | { ok: false; reason: string };

const pemOf = (der: Buffer): string => `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END CERTIFICATE-----\n`;

/** `trustDomains`: trust domain name (no scheme) -> PEM bundle, as in the validator config. `chain`: leaf first, DER. */
export function spiffeVerify(trustDomains: ReadonlyMap<string, string>, chain: readonly Buffer[]): SpiffeVerdict {
  if (chain.length === 0) return { ok: false, reason: 'no peer certificate' };
  const leaf = new X509Certificate(chain[0]!);
  const uris = (leaf.subjectAltName ?? '')
    .split(', ')
    .filter((entry) => entry.startsWith('URI:spiffe://'))
    .map((entry) => entry.slice('URI:'.length));
  if (uris.length !== 1) return { ok: false, reason: `peer has ${uris.length} SPIFFE IDs` };
  const id = uris[0]!;
  const trustDomain = new URL(id).host;
  const bundle = trustDomains.get(trustDomain);
  if (bundle === undefined) return { ok: false, reason: `no trust bundle for trust domain ${trustDomain}` };
  const verified = opensslVerify(pemOf(chain[0]!), chain.slice(1).map(pemOf).join(''), bundle);
  return verified.ok ? { ok: true, id } : { ok: false, reason: verified.output.trim() };
}
