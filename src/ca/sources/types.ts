/**
 * What a key source plugin is: its name (`--ca-source <name>`), its flags, how it reads its settings and how it
 * opens a WorkloadSigner whose `close()` stops all of its own background work. Plugins are listed once, in
 * sources/index.ts; adding a source is one folder under sources/ plus one line there.
 */
import type { Option } from 'commander';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import type { Env } from '../../config/env.js';
import type { EnvOnlySpec } from '../../config/flags.js';
import type { Logger } from '../../log.js';
import type { KeySpec } from '../../pki/index.js';
import type { WorkloadSigner } from '../signer.js';
import type { RotationPolicy } from './self-signed/rotation.js';
import type { Pkcs11Flags, Pkcs11SourceConfig } from './pkcs11/config.js';
import type { VaultConfig, VaultFlags } from './vault/vault.js';

export const CA_STORES = ['file', 'kubernetes'] as const;
export type CaStore = (typeof CA_STORES)[number];

/** Flags of the key-source choice, as commander hands them over (all sources' flags in one object). */
export interface KeySourceFlags extends VaultFlags, Pkcs11Flags {
  caSource?: string;
  stateDir?: string;
  caKeyType?: string;
  trustDomain?: string;
  rootCaDir?: string;
  caStore?: string;
  caNamespace?: string;
  rootRotationOverlap?: string;
  selfSignedCaCertTtl?: string;
  rootCertCheckInterval?: string;
  rootCertGracePeriodPercentile?: string;
  distributeRootConfigmap?: boolean;
  /** Registered by the command (`meshca ca` takes it repeatable as [clusterID=]path). */
  kubeconfig?: string | readonly string[];
  clusterId?: string;
}

export interface KeySourceConfig {
  /** The chosen plugin's name. */
  source: string;
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
  /** Present when source is `pkcs11`. */
  pkcs11?: Pkcs11SourceConfig;
}

/** The settings every source shares, read before the plugins' own. */
export type CommonKeySourceConfig = Pick<KeySourceConfig, 'stateDir' | 'trustDomain' | 'distributeRootConfigMap' | 'kubeconfigPath'> & {
  keySpec: KeySpec;
};

export interface KeySourceContext {
  logger: Logger;
  /** Gets the key sources' metrics (meshca_cacerts_reload_errors_total). */
  registry?: Registry;
  /** The local cluster's Kubernetes client configuration; loaded before `open` only when `needsKubernetes` says so. */
  kube(): KubeConfig;
  /** The clock (epoch ms) the source judges and creates certificates by; default Date.now (tests inject a fake one). */
  now?: () => number;
}

export interface KeySourcePlugin {
  /** `--ca-source` value, the status' `source`, /debug/ca's `keySource`. */
  readonly name: string;
  /** The source's own flags, registered on `meshca ca` and `meshca dev`. */
  options(): Option[];
  /** The source's variables without a flag, listed in `--help` after the options. */
  readonly envOnly?: readonly EnvOnlySpec[];
  /**
   * Reads the source's settings. Called for every source, chosen or not (a bad value is reported whatever the
   * choice); `chosen` tells whether this source signs, for settings that only then must be present and valid.
   */
  readConfig(flags: KeySourceFlags, env: Env, common: CommonKeySourceConfig, chosen: boolean): Partial<KeySourceConfig>;
  /** Whether, with no --ca-source, the configuration selects this source (the first plugin is the fallback). */
  chosenByDefault?(config: Partial<KeySourceConfig>): boolean;
  /** Whether opening needs the Kubernetes client (checked before any key material is created). */
  needsKubernetes?(config: KeySourceConfig): boolean;
  /** Opens the source: the signer's close() stops everything the source started. */
  open(config: KeySourceConfig, context: KeySourceContext): Promise<WorkloadSigner>;
}
