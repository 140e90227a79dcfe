/**
 * Public surface of the CA: the signing policy, and the choice of key source from configuration.
 * Key sources implement WorkloadSigner; choosing one is the only place that knows them all.
 *
 * | flag                           | env                                                   | default                          |
 * |--------------------------------|-------------------------------------------------------|----------------------------------|
 * | --ca-source                    | MESHCA_CA_SOURCE                                      | cacerts if ROOT_CA_DIR holds files, else self-signed |
 * | --root-ca-dir                  | ROOT_CA_DIR                                           | ./etc/cacerts                    |
 * | --state-dir                    |                                                       | ./.meshca                        |
 * | --ca-key-type                  | CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE (RSA size)        | rsa-2048                         |
 * |                                | CITADEL_SELF_SIGNED_CA_CERT_TTL                       | 3650d                            |
 * |                                | CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL          | 1h (0 disables rotation)         |
 * |                                | CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE | 20                               |
 * | --root-rotation-overlap        |                                                       | 1h                               |
 * | --ca-store                     |                                                       | file (or kubernetes)             |
 * | --ca-namespace                 | POD_NAMESPACE                                         | istio-system                     |
 * | --distribute-root-configmap    |                                                       | on when KUBERNETES_SERVICE_HOST is set |
 * | --vault-jwt-file               |                                                       | /var/run/secrets/kubernetes.io/serviceaccount/token |
 * | --vault-token-file             | (VAULT_TOKEN for the token itself)                    |                                  |
 * | --vault-intermediate-ttl       |                                                       | 720h                             |
 * | --vault-bundle-refresh         |                                                       | 5m                               |
 * | --vault-ca-chain-path          |                                                       | <mount of the Vault path>/ca_chain |
 * Vault also reads VAULT_ADDR, VAULT_TLS_ROOT_CERT, VAULT_NAMESPACE, VAULT_TOKEN, VAULT_AUTH_PATH, VAULT_ROLE,
 * VAULT_SIGN_CSR_PATH and VAULT_INTERMEDIATE_PATH. Kubernetes access uses --kubeconfig (registered by the
 * command), else KUBECONFIG, else in-cluster credentials.
 */
import type { Command } from 'commander';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.js';
import { parseKeySpec, type KeySpec } from '../pki/index.js';
import { ConfigError, readBoolean, readDuration, readEnum, readInteger, readString, type Env } from '../config/env.js';
import { loadKubeConfig } from '../config/kube.js';
import { cacertsDirHoldsFiles, openCacertsSigner } from './cacerts.js';
import { KubeSecretCaStore } from './kube-store.js';
import { ManagedLocalSigner } from './managed-signer.js';
import { fingerprint } from './material.js';
import { startRootDistribution, type RootDistribution } from './root-distribution.js';
import { DEFAULT_ROTATION_POLICY, openSelfSignedSigner, type RotationPolicy } from './rotation.js';
import { createSelfSignedRoot, FileCaStore, type CaStateStore } from './selfsigned.js';
import type { WorkloadSigner } from './signer.js';
import { DEFAULT_VAULT_JWT_FILE, openVaultSigner, readVaultConfig, VaultRoleSigner, type VaultConfig, type VaultFlags } from './vault.js';

export { CertificateAuthority, formatSeconds, type AuthorityOptions, type IssueRequest, type IssueResult } from './authority.js';
export { CaError, CaConfigError, WithheldChainError, type CaErrorCode } from './errors.js';
export { LocalSigner } from './local-signer.js';
export { ManagedLocalSigner } from './managed-signer.js';
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
} from './cacerts.js';
export { RootRotator, planRotation, rotationDueAt, openSelfSignedSigner, DEFAULT_ROTATION_POLICY, type RotationPolicy, type RotationStep } from './rotation.js';
export { KubeSecretCaStore, CA_SECRET_NAME, CA_SECRET_TYPE } from './kube-store.js';
export {
  startRootDistribution,
  ROOT_CONFIGMAP_NAME,
  ROOT_CONFIGMAP_KEY,
  ROOT_CONFIGMAP_LABELS,
  type RootDistribution,
  type RootDistributionOptions,
} from './root-distribution.js';
export { openVaultSigner, readVaultConfig, VaultRoleSigner, VaultIntermediateSource, type VaultConfig } from './vault.js';
export type { WorkloadSigner, WorkloadSignRequest, SignedChain, SignerStatus } from './signer.js';

export const CA_SOURCES = ['self-signed', 'cacerts', 'vault'] as const;
export type CaSource = (typeof CA_SOURCES)[number];

export const CA_STORES = ['file', 'kubernetes'] as const;
export type CaStore = (typeof CA_STORES)[number];

export const DEFAULT_ROOT_CA_DIR = './etc/cacerts';

/** Flags of the key-source choice, as commander hands them over. */
export interface KeySourceFlags extends VaultFlags {
  caSource?: string;
  stateDir?: string;
  caKeyType?: string;
  trustDomain?: string;
  rootCaDir?: string;
  caStore?: string;
  caNamespace?: string;
  rootRotationOverlap?: string;
  distributeRootConfigmap?: boolean;
  /** Registered by the command (`meshca ca` takes it repeatable as [clusterID=]path). */
  kubeconfig?: string | readonly string[];
  clusterId?: string;
}

export interface KeySourceConfig {
  source: CaSource;
  stateDir: string;
  trustDomain: string;
  selfSigned: { keySpec: KeySpec; ttlSeconds: number };
  /** ROOT_CA_DIR, for `cacerts`. */
  rootCaDir: string;
  /** Where the self-signed root is kept. */
  store: CaStore;
  /** Namespace of the `istio-ca-secret` Secret. */
  caNamespace: string;
  rotation: RotationPolicy;
  /** Keep ConfigMap istio-ca-root-cert current in every namespace. */
  distributeRootConfigMap: boolean;
  /** The local cluster's kubeconfig; undefined means KUBECONFIG, else in-cluster. */
  kubeconfigPath?: string;
  /** Present when source is `vault`. */
  vault?: VaultConfig;
}

/** Registers the key-source flags on a command (`meshca ca`, `meshca dev`). */
export function addKeySourceOptions(command: Command): Command {
  command
    .option('--ca-source <source>', 'where the signing key comes from: self-signed | cacerts | vault (env MESHCA_CA_SOURCE; default: cacerts when ROOT_CA_DIR holds files, else self-signed)')
    .option('--state-dir <dir>', 'directory for the self-signed root and other state', './.meshca')
    .option('--ca-key-type <type>', 'key type of a new self-signed root or Vault intermediate: rsa-2048 | rsa-3072 | rsa-4096 | ec-p256 | ec-p384 (env CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE sets the RSA size)')
    .option('--root-ca-dir <dir>', `plugged-in CA directory, Istio cacerts or cert-manager layout, reloaded live (env ROOT_CA_DIR, default ${DEFAULT_ROOT_CA_DIR})`)
    .option('--ca-store <store>', 'where the self-signed root is kept: file (--state-dir) | kubernetes (Secret istio-ca-secret, shared by replicas)')
    .option('--ca-namespace <namespace>', 'namespace of the istio-ca-secret Secret (env POD_NAMESPACE, default istio-system)')
    .option('--root-rotation-overlap <duration>', 'how long a new self-signed root is published before it signs (default 1h)')
    .option('--distribute-root-configmap', 'keep ConfigMap istio-ca-root-cert with the trust bundle in every namespace (default: on when KUBERNETES_SERVICE_HOST is set)')
    .option('--no-distribute-root-configmap', 'do not write the istio-ca-root-cert ConfigMaps')
    .option('--vault-jwt-file <file>', `service-account JWT for Vault Kubernetes auth (VAULT_ROLE) (default ${DEFAULT_VAULT_JWT_FILE})`)
    .option('--vault-token-file <file>', 'file holding the Vault token, re-read after a 403 (instead of VAULT_TOKEN)')
    .option('--vault-intermediate-ttl <duration>', 'lifetime requested for the Vault-signed intermediate; renewed at 2/3 (default 720h)')
    .option('--vault-bundle-refresh <duration>', 'how often the trust bundle is re-read from Vault (default 5m)')
    .option('--vault-ca-chain-path <path>', 'Vault path of the CA chain (default: <mount of VAULT_SIGN_CSR_PATH / VAULT_INTERMEDIATE_PATH>/ca_chain)');
  // --kubeconfig is the command's own flag (meshca ca registers it, repeatable, after this); it is read here too.
  return command;
}

/** The local cluster's kubeconfig from `--kubeconfig` values: a bare path, or `<local cluster id>=path`. */
function localKubeconfig(flags: KeySourceFlags, env: Env): string | undefined {
  const values = typeof flags.kubeconfig === 'string' ? [flags.kubeconfig] : [...(flags.kubeconfig ?? [])];
  const clusterId = readString(flags.clusterId, env, { flag: '--cluster-id', env: 'CLUSTER_ID' }, 'Kubernetes');
  for (const value of values) {
    const match = /^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$/.exec(value);
    if (!match) return value;
    if (match[1] === clusterId) return match[2];
  }
  return undefined;
}

export function readKeySourceConfig(flags: KeySourceFlags, env: Env): KeySourceConfig {
  const rootCaDir = readString(flags.rootCaDir, env, { flag: '--root-ca-dir', env: 'ROOT_CA_DIR' }, DEFAULT_ROOT_CA_DIR);
  // A directory holding even part of a CA set selects cacerts, so that a broken set is reported instead of
  // silently replaced by a self-signed root.
  const defaultSource: CaSource = cacertsDirHoldsFiles(rootCaDir) ? 'cacerts' : 'self-signed';
  const source = readEnum(flags.caSource, env, { flag: '--ca-source', env: 'MESHCA_CA_SOURCE' }, CA_SOURCES, defaultSource);
  const trustDomain = readString(flags.trustDomain, env, { flag: '--trust-domain', env: 'TRUST_DOMAIN' }, 'cluster.local');
  let keySpec: KeySpec;
  if (flags.caKeyType) {
    try {
      keySpec = parseKeySpec(flags.caKeyType);
    } catch (error) {
      throw new ConfigError(`invalid --ca-key-type="${flags.caKeyType}": ${(error as Error).message}`);
    }
  } else {
    const bits = readInteger(undefined, env, { env: 'CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE' }, 2048, { min: 2048, max: 4096 });
    if (![2048, 3072, 4096].includes(bits)) throw new ConfigError(`invalid CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE="${bits}": expected 2048, 3072 or 4096`);
    keySpec = parseKeySpec(`rsa-${bits}`);
  }
  const ttlSeconds = readDuration(undefined, env, { env: 'CITADEL_SELF_SIGNED_CA_CERT_TTL' }, 3650 * 86400, { min: 10 });
  const rotation: RotationPolicy = {
    checkIntervalSeconds: readDuration(
      undefined,
      env,
      { env: 'CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL' },
      DEFAULT_ROTATION_POLICY.checkIntervalSeconds,
      { min: 0 },
    ),
    gracePeriodPercentile: readInteger(
      undefined,
      env,
      { env: 'CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE' },
      DEFAULT_ROTATION_POLICY.gracePeriodPercentile,
      { min: 1, max: 99 },
    ),
    overlapSeconds: readDuration(flags.rootRotationOverlap, env, { flag: '--root-rotation-overlap' }, DEFAULT_ROTATION_POLICY.overlapSeconds, { min: 0 }),
  };
  const graceSeconds = (ttlSeconds * rotation.gracePeriodPercentile) / 100;
  if (source === 'self-signed' && rotation.checkIntervalSeconds > 0 && rotation.overlapSeconds >= graceSeconds) {
    throw new ConfigError(
      `--root-rotation-overlap (${rotation.overlapSeconds}s) must be shorter than the rotation grace period (${Math.floor(graceSeconds)}s = CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE ${rotation.gracePeriodPercentile}% of CITADEL_SELF_SIGNED_CA_CERT_TTL), or the old root expires before the new one signs`,
    );
  }
  const store = readEnum(flags.caStore, env, { flag: '--ca-store' }, CA_STORES, 'file');
  const caNamespace = readString(flags.caNamespace, env, { flag: '--ca-namespace', env: 'POD_NAMESPACE' }, 'istio-system');
  const distributeRootConfigMap = readBoolean(flags.distributeRootConfigmap, env, { flag: '--distribute-root-configmap' }, Boolean(env.KUBERNETES_SERVICE_HOST));
  const kubeconfigPath = localKubeconfig(flags, env);
  return {
    source,
    stateDir: flags.stateDir ?? './.meshca',
    trustDomain,
    selfSigned: { keySpec, ttlSeconds },
    rootCaDir,
    store,
    caNamespace,
    rotation,
    distributeRootConfigMap,
    ...(kubeconfigPath ? { kubeconfigPath } : {}),
    ...(source === 'vault' ? { vault: readVaultConfig(flags, env) } : {}),
  };
}

export interface OpenSignerOptions {
  /** Gets the key sources' metrics (meshca_cacerts_reload_errors_total). */
  registry?: Registry;
  env?: Env;
}

/** Opens the configured key source and starts its background work (reload, rotation, root distribution);
 * `signer.close()` stops all of it. Throws CaConfigError / ConfigError with one human line on failure. */
export async function openSigner(config: KeySourceConfig, logger: Logger, options: OpenSignerOptions = {}): Promise<WorkloadSigner> {
  const env = options.env ?? process.env;
  let kubeConfig: KubeConfig | undefined;
  const kube = (): KubeConfig => (kubeConfig ??= loadKubeConfig(config.kubeconfigPath, env));
  // Fail on a bad kubeconfig before any key material is created.
  if (config.distributeRootConfigMap || (config.source === 'self-signed' && config.store === 'kubernetes')) kube();

  let signer: WorkloadSigner;
  switch (config.source) {
    case 'self-signed': {
      const store: CaStateStore =
        config.store === 'kubernetes' ? new KubeSecretCaStore({ kubeConfig: kube(), namespace: config.caNamespace, logger }) : new FileCaStore(config.stateDir);
      const result = await openSelfSignedSigner({
        store,
        policy: config.rotation,
        logger,
        createRoot: async () => {
          const root = await createSelfSignedRoot({
            stateDir: config.stateDir,
            trustDomain: config.trustDomain,
            keySpec: config.selfSigned.keySpec,
            ttlSeconds: config.selfSigned.ttlSeconds,
          });
          return { certPem: root.certPem, keyPem: root.keyPem };
        },
      });
      const status = result.signer.status();
      logger.info(
        {
          source: 'self-signed',
          store: store.description,
          created: result.created,
          serial: status.signingCertSerial,
          notAfter: status.signingCertNotAfter,
          roots: result.signer.current().roots.map(fingerprint),
          rotation: config.rotation.checkIntervalSeconds > 0 ? config.rotation : 'off',
        },
        result.created ? 'created a new self-signed root CA' : 'loaded the self-signed root CA',
      );
      signer = result.signer;
      break;
    }
    case 'cacerts':
      signer = await openCacertsSigner({ dir: config.rootCaDir, logger, ...(options.registry ? { registry: options.registry } : {}) });
      break;
    case 'vault': {
      if (!config.vault) throw new ConfigError('--ca-source vault needs VAULT_ADDR and VAULT_SIGN_CSR_PATH or VAULT_INTERMEDIATE_PATH');
      signer = await openVaultSigner(config.vault, { logger, keySpec: config.selfSigned.keySpec, trustDomain: config.trustDomain, stateDir: config.stateDir });
      break;
    }
  }

  if (config.distributeRootConfigMap) {
    let distribution: RootDistribution;
    try {
      distribution = startRootDistribution({ kubeConfig: kube(), bundle: signer, logger });
    } catch (error) {
      await signer.close();
      throw error;
    }
    const stop = (): Promise<void> => distribution.close();
    if (signer instanceof ManagedLocalSigner || signer instanceof VaultRoleSigner) signer.addCleanup(stop);
  }
  return signer;
}
