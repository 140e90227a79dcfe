/** Public surface of the PKI core. Nothing here knows about gRPC, HTTP or Kubernetes. */
export { PkiError, isPkiError, type PkiErrorCode } from './errors.js';
export { decodePem, decodeSinglePem, encodePem, certificateToPem, certificatesFromPem, type PemBlock } from './pem.js';
export {
  KEY_SPECS,
  parseKeySpec,
  generateKeyPairFor,
  generateKeyPairForAsync,
  generateKeyPairOffLoop,
  generateKeyPairOf,
  type KeyAlgorithm,
  describeKey,
  keyLabel,
  exportPrivateKeyPem,
  loadPrivateKey,
  keysMatch,
  spkiDer,
  type KeySpec,
  type KeyPair,
  type KeyDescription,
} from './keys.js';
export { isSingleDerSequence } from './der.js';
export { describeSpki, assertKeyStrength, signingProfileFor } from './algorithms.js';
export { createCsr, parseCsr, verifyCsr, verifyCsrWithoutBlocking, CSR_PEM_LABELS, type ParsedCsr, type CreateCsrOptions } from './csr.js';
export {
  parseSpiffeId,
  isSpiffeId,
  WorkloadId,
  isNamespaceName,
  isServiceAccountName,
  validateTrustDomain,
  inTrustDomain,
  type AcceptedIdentity,
  type SpiffeId,
  type WorkloadIdentity,
} from './spiffe.js';
export {
  parseCertificate,
  certificatePublicKey,
  isCaCertificate,
  formatName,
  type ParsedCertificate,
  type Extension,
  type SubjectAltNames,
} from './x509.js';
export {
  LeafIssuer,
  LeafTemplate,
  createCaCertificate,
  caCertificateTbs,
  certificateFromTbs,
  assertSigningMaterial,
  assertCaSigningKey,
  encodeName,
  randomSerial,
  subjectKeyIdFromSpki,
  CLOCK_SKEW_GRACE_MS,
  type SigningMaterial,
  type LeafRequest,
  type IssuedLeaf,
  type LeafTbs,
  type CaCertificateOptions,
  type NameAttributes,
} from './issue.js';
export { verifyChain, verifyPemChain, describeCertificate, signatureVerifies, type VerifyChainOptions } from './chain.js';
export {
  parseSpiffeBundle,
  spiffeBundleOf,
  formatSpiffeBundle,
  bundlePem,
  sameAuthorities,
  MAX_BUNDLE_BYTES,
  type SpiffeBundle,
} from './spiffe-bundle.js';
export { signWithoutBlocking, verifyWithoutBlocking } from './off-thread.js';
