/**
 * A CA certificate (a root, or an intermediate below a root) signed by a key inside a PKCS#11 token: the
 * TBSCertificate is built here with caCertificateTbs, the token signs it, and the signature is checked with the
 * token key's public half before the certificate is returned, so a module that signs wrongly fails here and not
 * later in every relying party. Used by `meshca cacerts root|intermediate --pkcs11-*`.
 */
import { verify } from 'node:crypto';
import { caCertificateTbs, certificateFromTbs, certificatePublicKey, spkiDer, type CaCertificateOptions, type SigningMaterial } from '../../../pki/index.js';
import { CaConfigError } from '../../errors.js';
import type { Pkcs11Key } from './pkcs11-key.js';

/** As createCaCertificate's options, with the issuer's certificate only: its key is `signer`, in the token. */
export type TokenCaCertificateOptions = Omit<CaCertificateOptions, 'issuer'> & { issuer?: Pick<SigningMaterial, 'certificate'> };

const describeSigner = (signer: Pkcs11Key): string => `the token key ${JSON.stringify(signer.facts.label)} (id ${signer.facts.idHex || 'none'})`;

/**
 * Builds the certificate and has `signer` sign it: without `issuer` a self-signed root whose `subjectKey` must be
 * the signer's own public key; with `issuer` a certificate under that issuer, whose key the signer must hold.
 */
export async function signCaCertificateInToken(options: TokenCaCertificateOptions, signer: Pkcs11Key): Promise<Buffer> {
  const signerSpki = spkiDer(signer.publicKey);
  if (options.issuer) {
    if (!signerSpki.equals(options.issuer.certificate.spkiDer)) {
      throw new CaConfigError(`${describeSigner(signer)} does not belong to the issuer certificate ${options.issuer.certificate.subject}`);
    }
  } else if (!signerSpki.equals(spkiDer(options.subjectKey))) {
    throw new CaConfigError(`a self-signed root must be signed by its own key, not by ${describeSigner(signer)}`);
  }
  const { tbs, profile } = caCertificateTbs(options, signer.publicKey);
  const signature = await signer.sign(profile.hash, tbs);
  const verifyKey = options.issuer ? certificatePublicKey(options.issuer.certificate) : signer.publicKey;
  if (!verify(profile.hash, tbs, verifyKey, signature)) {
    throw new Error(`PKCS#11: the signature ${describeSigner(signer)} made does not verify with its public key; the module signed wrongly`);
  }
  return certificateFromTbs(tbs, profile.algorithmIdentifier, signature);
}
