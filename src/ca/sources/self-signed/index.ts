/**
 * `--ca-source self-signed`: a root CA meshca creates and keeps (in --state-dir or the Kubernetes Secret
 * istio-ca-secret), rotated before it expires. Its settings are SELF_SIGNED_FLAGS (istiod's CITADEL_* names).
 */
import { ConfigError, readDuration, readEnum, readInteger, readString } from '../../../config/env.js';
import { flagOption, sourceOf, type FlagSpec } from '../../../config/flags.js';
import { KubeSecretCaStore } from '../../kube-store.js';
import { fingerprint } from '../../material.js';
import { createSelfSignedRoot, FileCaStore, type CaStateStore } from '../../selfsigned.js';
import { CA_STORES, type KeySourcePlugin } from '../types.js';
import { DEFAULT_ROTATION_POLICY, openSelfSignedSigner, type RotationPolicy } from './rotation.js';

export const SELF_SIGNED_FLAGS = {
  caStore: {
    flags: '--ca-store <store>',
    description: 'where the self-signed root is kept: file (--state-dir) | kubernetes (Secret istio-ca-secret, shared by replicas)',
    env: ['MESHCA_CA_STORE'],
    defaultText: 'file',
  },
  caNamespace: { flags: '--ca-namespace <namespace>', description: 'namespace of the istio-ca-secret Secret', env: ['POD_NAMESPACE'], defaultText: 'istio-system' },
  rootRotationOverlap: {
    flags: '--root-rotation-overlap <duration>',
    description: 'how long a new self-signed root is published before it signs',
    env: ['MESHCA_ROOT_ROTATION_OVERLAP'],
    defaultText: '1h',
  },
  selfSignedCaCertTtl: { flags: '--self-signed-ca-cert-ttl <duration>', description: 'lifetime of a new self-signed root', env: ['CITADEL_SELF_SIGNED_CA_CERT_TTL'], defaultText: '3650d' },
  rootCertCheckInterval: {
    flags: '--root-cert-check-interval <duration>',
    description: 'how often the self-signed root is checked for rotation, 0 turns rotation off',
    env: ['CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL'],
    defaultText: '1h',
  },
  rootCertGracePeriodPercentile: {
    flags: '--root-cert-grace-period-percentile <percent>',
    description: 'rotate the self-signed root when this percentage of its lifetime is left',
    env: ['CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE'],
    defaultText: '20',
  },
} as const satisfies Record<string, FlagSpec>;

const S = SELF_SIGNED_FLAGS;

export const selfSignedSource: KeySourcePlugin = {
  name: 'self-signed',

  options: () => Object.values(SELF_SIGNED_FLAGS).map(flagOption),

  readConfig(flags, env, common, chosen) {
    const ttlSeconds = readDuration(flags.selfSignedCaCertTtl, env, sourceOf(S.selfSignedCaCertTtl), 3650 * 86400, { min: 10 });
    const rotation: RotationPolicy = {
      checkIntervalSeconds: readDuration(flags.rootCertCheckInterval, env, sourceOf(S.rootCertCheckInterval), DEFAULT_ROTATION_POLICY.checkIntervalSeconds, { min: 0 }),
      gracePeriodPercentile: readInteger(
        flags.rootCertGracePeriodPercentile,
        env,
        sourceOf(S.rootCertGracePeriodPercentile),
        DEFAULT_ROTATION_POLICY.gracePeriodPercentile,
        { min: 1, max: 99 },
      ),
      overlapSeconds: readDuration(flags.rootRotationOverlap, env, sourceOf(S.rootRotationOverlap), DEFAULT_ROTATION_POLICY.overlapSeconds, { min: 0 }),
    };
    const graceSeconds = (ttlSeconds * rotation.gracePeriodPercentile) / 100;
    if (chosen && rotation.checkIntervalSeconds > 0 && rotation.overlapSeconds >= graceSeconds) {
      throw new ConfigError(
        `--root-rotation-overlap (${rotation.overlapSeconds}s) must be shorter than the rotation grace period (${Math.floor(graceSeconds)}s = CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE ${rotation.gracePeriodPercentile}% of CITADEL_SELF_SIGNED_CA_CERT_TTL), or the old root expires before the new one signs`,
      );
    }
    const store = readEnum(flags.caStore, env, sourceOf(S.caStore), CA_STORES, 'file');
    const caNamespace = readString(flags.caNamespace, env, sourceOf(S.caNamespace), 'istio-system');
    return { rotation, store, caNamespace, selfSigned: { keySpec: common.keySpec, ttlSeconds } };
  },

  needsKubernetes: (config) => config.store === 'kubernetes',

  async open(config, { logger, kube, now }) {
    const store: CaStateStore =
      config.store === 'kubernetes' ? new KubeSecretCaStore({ kubeConfig: kube(), namespace: config.caNamespace, logger }) : new FileCaStore(config.stateDir);
    const result = await openSelfSignedSigner({
      store,
      policy: config.rotation,
      logger,
      ...(now ? { now } : {}),
      createRoot: async () => {
        const root = await createSelfSignedRoot({
          stateDir: config.stateDir,
          trustDomain: config.trustDomain,
          keySpec: config.selfSigned.keySpec,
          ttlSeconds: config.selfSigned.ttlSeconds,
          ...(now ? { now } : {}),
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
    return result.signer;
  },
};
