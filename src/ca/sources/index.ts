/**
 * The key sources, listed once. Adding one is a folder under sources/ (its flags, settings, open and close) and a
 * line in KEY_SOURCES; nothing else names a source. The settings shared by all sources are KEY_SOURCE_FLAGS.
 * Kubernetes access uses --kubeconfig (registered by the command), else KUBECONFIG, else in-cluster credentials.
 */
import { Option, type Command } from 'commander';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import type { Logger } from '../../log.js';
import { parseKeySpec, type KeySpec } from '../../pki/index.js';
import { ConfigError, raw, readBoolean, readEnum, readInteger, readString, type Env } from '../../config/env.js';
import { addEnvOnlyHelp, flagOption, readStateDir, sourceOf, STATE_DIR_FLAG, type FlagSpec } from '../../config/flags.js';
import { loadKubeConfig } from '../../kube/config.js';
import { startRootDistribution } from '../root-distribution.js';
import type { WorkloadSigner } from '../signer.js';
import { cacertsSource } from './cacerts/index.js';
import { selfSignedSource } from './self-signed/index.js';
import type { CommonKeySourceConfig, KeySourceConfig, KeySourceFlags, KeySourcePlugin } from './types.js';
import { vaultSource } from './vault/index.js';
import { pkcs11Source } from './pkcs11/index.js';

/** Every key source; the first is the one used when neither --ca-source nor a plugin's default chooses. */
export const KEY_SOURCES: readonly KeySourcePlugin[] = [selfSignedSource, cacertsSource, vaultSource, pkcs11Source];

export type { KeySourceConfig, KeySourceFlags, KeySourcePlugin, KeySourceContext, CaStore } from './types.js';
export { CA_STORES } from './types.js';
export { DEFAULT_ROOT_CA_DIR } from './cacerts/index.js';

/** The settings every key source shares. */
export const KEY_SOURCE_FLAGS = {
  caSource: {
    flags: '--ca-source <source>',
    description: `where the signing key comes from: ${KEY_SOURCES.map((s) => s.name).join(' | ')}`,
    env: ['MESHCA_CA_SOURCE'],
    defaultText: 'cacerts when ROOT_CA_DIR holds files, else self-signed',
  },
  stateDir: STATE_DIR_FLAG,
  caKeyType: {
    flags: '--ca-key-type <type>',
    description: 'key type of a new self-signed root or Vault intermediate: rsa-2048 | rsa-3072 | rsa-4096 | ec-p256 | ec-p384; CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE sets the RSA size',
    env: ['MESHCA_CA_KEY_TYPE', 'CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE'],
    defaultText: 'rsa-2048',
  },
  distributeRootConfigmap: {
    flags: '--distribute-root-configmap',
    description: 'keep ConfigMap istio-ca-root-cert with the trust bundle in every namespace',
    env: ['MESHCA_DISTRIBUTE_ROOT_CONFIGMAP'],
    defaultText: 'on when KUBERNETES_SERVICE_HOST is set',
  },
} as const satisfies Record<string, FlagSpec>;

const K = KEY_SOURCE_FLAGS;

/** Registers the key-source flags on a command (`meshca ca`, `meshca dev`): the shared ones, then each source's. */
export function addKeySourceOptions(command: Command): Command {
  const options = [
    flagOption(K.caSource),
    flagOption(K.stateDir),
    flagOption(K.caKeyType),
    ...KEY_SOURCES.flatMap((source) => source.options()),
    flagOption(K.distributeRootConfigmap),
    new Option('--no-distribute-root-configmap', 'do not write the istio-ca-root-cert ConfigMaps (MESHCA_DISTRIBUTE_ROOT_CONFIGMAP=false)'),
  ];
  for (const option of options) command.addOption(option);
  addEnvOnlyHelp(command, 'Environment variables of the key source without a flag', KEY_SOURCES.flatMap((s) => s.envOnly ?? []));
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

function readKeySpec(flags: KeySourceFlags, env: Env): KeySpec {
  const source = sourceOf(K.caKeyType);
  const type = raw(flags.caKeyType, env, source);
  if (type !== undefined) {
    try {
      return parseKeySpec(type);
    } catch (error) {
      throw new ConfigError(`invalid ${flags.caKeyType !== undefined ? source.flag : source.env}="${type}": ${(error as Error).message}`);
    }
  }
  const bits = readInteger(undefined, env, { env: 'CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE' }, 2048, { min: 2048, max: 4096 });
  if (![2048, 3072, 4096].includes(bits)) throw new ConfigError(`invalid CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE="${bits}": expected 2048, 3072 or 4096`);
  return parseKeySpec(`rsa-${bits}`);
}

export function readKeySourceConfig(flags: KeySourceFlags, env: Env): KeySourceConfig {
  const kubeconfigPath = localKubeconfig(flags, env);
  const common: CommonKeySourceConfig = {
    stateDir: readStateDir(flags.stateDir, env),
    trustDomain: readString(flags.trustDomain, env, { flag: '--trust-domain', env: 'TRUST_DOMAIN' }, 'cluster.local'),
    keySpec: readKeySpec(flags, env),
    distributeRootConfigMap: readBoolean(flags.distributeRootConfigmap, env, sourceOf(K.distributeRootConfigmap), Boolean(env.KUBERNETES_SERVICE_HOST)),
    ...(kubeconfigPath ? { kubeconfigPath } : {}),
  };
  // The choice can depend on the sources' settings (ROOT_CA_DIR holding files selects cacerts).
  const unchosen = Object.assign({}, ...KEY_SOURCES.map((s) => s.readConfig(flags, env, common, false))) as Partial<KeySourceConfig>;
  const fallback = KEY_SOURCES.find((s) => s.chosenByDefault?.(unchosen)) ?? KEY_SOURCES[0]!;
  const name = readEnum(flags.caSource, env, sourceOf(K.caSource), KEY_SOURCES.map((s) => s.name), fallback.name);
  const settings = Object.assign({}, ...KEY_SOURCES.map((s) => s.readConfig(flags, env, common, s.name === name))) as Partial<KeySourceConfig>;
  const { keySpec: _keySpec, ...shared } = common;
  return { ...settings, ...shared, source: name } as KeySourceConfig;
}

export interface OpenSignerOptions {
  /** Gets the key sources' metrics (meshca_cacerts_reload_errors_total). */
  registry?: Registry;
  env?: Env;
  /** The clock (epoch ms) the key source reads (expiry, rotation, new roots); default Date.now. For tests. */
  now?: () => number;
}

function pluginNamed(name: string): KeySourcePlugin {
  const plugin = KEY_SOURCES.find((s) => s.name === name);
  if (!plugin) throw new ConfigError(`unknown key source "${name}": expected one of ${KEY_SOURCES.map((s) => s.name).join(', ')}`);
  return plugin;
}

/** Opens the configured key source and starts its background work (reload, rotation, root distribution);
 * `signer.close()` stops all of it. Throws CaConfigError / ConfigError with one human line on failure. */
export async function openSigner(config: KeySourceConfig, logger: Logger, options: OpenSignerOptions = {}): Promise<WorkloadSigner> {
  const env = options.env ?? process.env;
  const plugin = pluginNamed(config.source);
  // Loaded (with the Kubernetes client) only for a source or root distribution that needs it, and before any key
  // material is created, so a bad kubeconfig fails first.
  const kubeConfig: KubeConfig | undefined =
    config.distributeRootConfigMap || plugin.needsKubernetes?.(config) ? await loadKubeConfig(config.kubeconfigPath, env) : undefined;
  const kube = (): KubeConfig => {
    if (!kubeConfig) throw new Error(`key source ${plugin.name} uses Kubernetes without declaring it in needsKubernetes`);
    return kubeConfig;
  };
  const signer = await plugin.open(config, { logger, kube, ...(options.registry ? { registry: options.registry } : {}), ...(options.now ? { now: options.now } : {}) });
  if (!kubeConfig || !config.distributeRootConfigMap) return signer;
  try {
    const distribution = startRootDistribution({ kubeConfig, bundle: signer, logger });
    return withCleanup(signer, () => distribution.close());
  } catch (error) {
    await signer.close();
    throw error;
  }
}

/** The same signer, whose close() first stops `cleanup` (work started on top of the source, such as root distribution). */
function withCleanup(signer: WorkloadSigner, cleanup: () => Promise<void>): WorkloadSigner {
  let closing: Promise<void> | undefined;
  return {
    get source() {
      return signer.source;
    },
    sign: (request) => signer.sign(request),
    trustBundlePem: () => signer.trustBundlePem(),
    maxNotAfter: () => signer.maxNotAfter(),
    status: () => signer.status(),
    onChange: (listener) => signer.onChange(listener),
    inProcessMaterial: () => signer.inProcessMaterial?.() ?? null,
    close: () =>
      (closing ??= (async () => {
        await cleanup().catch(() => undefined);
        await signer.close();
      })()),
  };
}
