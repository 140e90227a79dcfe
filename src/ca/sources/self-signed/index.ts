/**
 * `--ca-source self-signed`: a root CA meshca creates and keeps (in --state-dir or the Kubernetes Secret
 * istio-ca-secret), rotated before it expires.
 *
 * | flag                    | env                                                   | default                      |
 * |-------------------------|-------------------------------------------------------|------------------------------|
 * | --ca-store              |                                                       | file (or kubernetes)         |
 * | --ca-namespace          | POD_NAMESPACE                                         | istio-system                 |
 * | --root-rotation-overlap |                                                       | 1h                           |
 * |                         | CITADEL_SELF_SIGNED_CA_CERT_TTL                       | 3650d                        |
 * |                         | CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL          | 1h (0 disables rotation)     |
 * |                         | CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE | 20                           |
 */
import { Option } from 'commander';
import { ConfigError, readDuration, readEnum, readInteger, readString } from '../../../config/env.js';
import { KubeSecretCaStore } from '../../kube-store.js';
import { fingerprint } from '../../material.js';
import { createSelfSignedRoot, FileCaStore, type CaStateStore } from '../../selfsigned.js';
import { CA_STORES, type KeySourcePlugin } from '../types.js';
import { DEFAULT_ROTATION_POLICY, openSelfSignedSigner, type RotationPolicy } from './rotation.js';

export const selfSignedSource: KeySourcePlugin = {
  name: 'self-signed',

  options: () => [
    new Option('--ca-store <store>', 'where the self-signed root is kept: file (--state-dir) | kubernetes (Secret istio-ca-secret, shared by replicas)'),
    new Option('--ca-namespace <namespace>', 'namespace of the istio-ca-secret Secret (env POD_NAMESPACE, default istio-system)'),
    new Option('--root-rotation-overlap <duration>', 'how long a new self-signed root is published before it signs (default 1h)'),
  ],

  readConfig(flags, env, common, chosen) {
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
    if (chosen && rotation.checkIntervalSeconds > 0 && rotation.overlapSeconds >= graceSeconds) {
      throw new ConfigError(
        `--root-rotation-overlap (${rotation.overlapSeconds}s) must be shorter than the rotation grace period (${Math.floor(graceSeconds)}s = CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE ${rotation.gracePeriodPercentile}% of CITADEL_SELF_SIGNED_CA_CERT_TTL), or the old root expires before the new one signs`,
      );
    }
    const store = readEnum(flags.caStore, env, { flag: '--ca-store' }, CA_STORES, 'file');
    const caNamespace = readString(flags.caNamespace, env, { flag: '--ca-namespace', env: 'POD_NAMESPACE' }, 'istio-system');
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
