/**
 * `--pod-certificate-signer NAME`: the CA signs Kubernetes PodCertificateRequests addressed to NAME, so a pod
 * can mount its SPIFFE certificate through a `podCertificate` projected volume. Off by default.
 */
import { bad, raw, type Env } from '../../../config/env.js';
import { flagOption, sourceOf, type FlagSpec } from '../../../config/flags.js';
import { signerNameProblem } from '../signer-name.js';
import type { KubernetesPlugin } from '../types.js';
import { startPodCertificateSigner } from './signer.js';

export const POD_CERTIFICATE_SIGNER_FLAG: FlagSpec = {
  flags: '--pod-certificate-signer <name>',
  description:
    'sign Kubernetes PodCertificateRequests for this signer name (e.g. meshca.io/spiffe): pods mount their SPIFFE certificate through a podCertificate projected volume',
  env: ['MESHCA_POD_CERTIFICATE_SIGNER'],
  defaultText: 'off',
};

export const podCertificatesPlugin: KubernetesPlugin = {
  name: 'pod-certificates',
  options: () => [flagOption(POD_CERTIFICATE_SIGNER_FLAG)],
  configure(flags, env: Env) {
    const source = sourceOf(POD_CERTIFICATE_SIGNER_FLAG);
    const flag = flags.podCertificateSigner;
    const signerName = raw(typeof flag === 'string' ? flag : undefined, env, source);
    if (signerName === undefined) return undefined;
    const problem = signerNameProblem(signerName);
    if (problem) throw bad(source, signerName, `a Kubernetes signer name such as meshca.io/spiffe (${problem})`);
    return async (context) => {
      if (!context.pods) throw new Error('pod certificates: no pod cache was given to the plugin (a bug in meshca)');
      const signer = startPodCertificateSigner({
        kubeConfig: context.kubeConfig,
        signerName,
        authority: context.authority,
        trustDomain: context.trustDomain,
        pods: context.pods,
        logger: context.logger,
        ...(context.now ? { now: context.now } : {}),
        ...(context.recordIssued ? { recordIssued: context.recordIssued } : {}),
      });
      return { close: () => signer.close() };
    };
  },
};
