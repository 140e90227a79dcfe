/**
 * `meshca ca --cluster-trust-bundle`: publishes the CA's roots as a signer-linked ClusterTrustBundle, for pods
 * that mount a `clusterTrustBundle` projected volume by signer name. Off by default.
 */
import { bad, readBoolean, readString } from '../../../config/env.js';
import { flagOption, sourceOf, type FlagSpec } from '../../../config/flags.js';
import { signerNameProblem } from '../signer-name.js';
import type { KubernetesPlugin } from '../types.js';
import { startClusterTrustBundlePublisher } from './publisher.js';

export const DEFAULT_TRUST_BUNDLE_SIGNER = 'meshca.io/spiffe';

export const CLUSTER_TRUST_BUNDLE_FLAGS = {
  clusterTrustBundle: {
    flags: '--cluster-trust-bundle',
    description: 'publish the trust bundle as ClusterTrustBundle <signer with ":" for "/">:roots (certificates.k8s.io)',
    env: ['MESHCA_CLUSTER_TRUST_BUNDLE'],
    defaultText: 'false',
  },
  clusterTrustBundleSigner: {
    flags: '--cluster-trust-bundle-signer <signer-name>',
    description: 'spec.signerName of the published ClusterTrustBundle (pods select it by this name)',
    env: ['MESHCA_CLUSTER_TRUST_BUNDLE_SIGNER'],
    defaultText: DEFAULT_TRUST_BUNDLE_SIGNER,
  },
} as const satisfies Record<string, FlagSpec>;

const F = CLUSTER_TRUST_BUNDLE_FLAGS;

export const clusterTrustBundlePlugin: KubernetesPlugin = {
  name: 'cluster-trust-bundle',
  options: () => [flagOption(F.clusterTrustBundle), flagOption(F.clusterTrustBundleSigner)],
  configure(flags, env) {
    const source = sourceOf(F.clusterTrustBundleSigner);
    const signerName = readString(flags.clusterTrustBundleSigner as string | undefined, env, source, DEFAULT_TRUST_BUNDLE_SIGNER);
    const problem = signerNameProblem(signerName);
    if (problem) throw bad(source, signerName, `a Kubernetes signer name such as ${DEFAULT_TRUST_BUNDLE_SIGNER} (${problem})`);
    if (!readBoolean(flags.clusterTrustBundle as boolean | string | undefined, env, sourceOf(F.clusterTrustBundle), false)) return undefined;
    return async (context) => {
      const publisher = await startClusterTrustBundlePublisher({ kubeConfig: context.kubeConfig, bundle: context.signer, signerName, logger: context.logger });
      return { close: () => publisher.close() };
    };
  },
};
