/**
 * Public surface of the CA: issuance (CertificateAuthority: policy, signing, final check), the key sources
 * (sources/: one folder per source, listed once in sources/index.ts) and the shared material helpers.
 */
export { CertificateAuthority, formatSeconds, type AuthorityOptions, type IssueRequest, type IssueResult } from './authority.js';
export { CaError, CaConfigError, CsrParseError, WithheldChainError, type CaErrorCode } from './errors.js';
export { LocalSigner } from './local-signer.js';
export { ManagedLocalSigner } from './managed-signer.js';
export { OwnCertificate, type OwnCertificateOptions, type OwnCertificateState, type OwnTlsMaterial } from './own-certificate.js';
export { buildCaMaterial, fingerprint, type CaMaterial } from './material.js';
export {
  loadOrCreateSelfSignedCa,
  createSelfSignedRoot,
  SELF_SIGNED_FILES,
  FileCaStore,
  CaStateConflictError,
  type CaStateStore,
  type StoredCaState,
} from './selfsigned.js';
export {
  addKeySourceOptions,
  readKeySourceConfig,
  KEY_SOURCE_FLAGS,
  openSigner,
  KEY_SOURCES,
  CA_STORES,
  DEFAULT_ROOT_CA_DIR,
  type OpenSignerOptions,
  type KeySourceConfig,
  type KeySourceFlags,
  type KeySourcePlugin,
  type KeySourceContext,
  type CaStore,
} from './sources/index.js';
export {
  openCacertsSigner,
  loadCacerts,
  validateCacerts,
  readCacertsSnapshot,
  cacertsDirHoldsFiles,
  CacertsError,
  ISTIO_CACERTS_FILES,
  TLS_CACERTS_FILES,
  CACERTS_RELOAD_ERRORS_METRIC,
  type CacertsProblem,
  type CacertsLayout,
} from './sources/cacerts/cacerts.js';
export { RootRotator, planRotation, rotationDueAt, openSelfSignedSigner, DEFAULT_ROTATION_POLICY, type RotationPolicy, type RotationStep } from './sources/self-signed/rotation.js';
export { KubeSecretCaStore, CA_SECRET_NAME, CA_SECRET_TYPE } from './kube-store.js';
export {
  startRootDistribution,
  ROOT_CONFIGMAP_NAME,
  ROOT_CONFIGMAP_KEY,
  ROOT_CONFIGMAP_LABELS,
  type RootDistribution,
  type RootDistributionOptions,
} from './root-distribution.js';
export { openVaultSigner, readVaultConfig, VaultRoleSigner, VaultIntermediateSource, type VaultConfig } from './sources/vault/vault.js';
export type { WorkloadSigner, WorkloadSignRequest, SignedChain, SignerStatus } from './signer.js';

