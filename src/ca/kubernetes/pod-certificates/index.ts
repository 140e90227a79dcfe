/**
 * `--pod-certificate-signer NAME`: the CA signs Kubernetes PodCertificateRequests addressed to NAME, so a pod
 * can mount its SPIFFE certificate through a `podCertificate` projected volume. Off by default.
 */
import { bad, raw, type Env } from '../../../config/env.js';
import { flagOption, sourceOf, type FlagSpec } from '../../../config/flags.js';
import type { KubernetesPlugin } from '../types.js';
import { startPodCertificateSigner } from './signer.js';

export const POD_CERTIFICATE_SIGNER_FLAG: FlagSpec = {
  flags: '--pod-certificate-signer <name>',
  description:
    'sign Kubernetes PodCertificateRequests for this signer name (e.g. meshca.io/spiffe): pods mount their SPIFFE certificate through a podCertificate projected volume',
  env: ['MESHCA_POD_CERTIFICATE_SIGNER'],
  defaultText: 'off',
};

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Why `name` is not a signer name Kubernetes accepts (`<domain>/<path>`), or undefined when it is one. */
export function signerNameProblem(name: string): string | undefined {
  const parts = name.split('/');
  if (parts.length !== 2) return 'exactly one "/" between a domain and a path';
  const [domain, path] = parts as [string, string];
  const labels = domain.split('.');
  if (domain.length > 253 || labels.length < 2 || !labels.every((l) => l.length <= 63 && DNS_LABEL.test(l))) {
    return 'a lowercase DNS domain with at least one dot before the "/"';
  }
  if (domain === 'kubernetes.io' || domain.endsWith('.kubernetes.io')) return 'a domain of your own (kubernetes.io is reserved for Kubernetes)';
  const segments = path.split('.');
  if (path.length === 0 || path.length > 317 || !segments.every((s) => s.length <= 63 && DNS_LABEL.test(s))) {
    return 'a path of lowercase DNS labels after the "/"';
  }
  return undefined;
}

export const podCertificatesPlugin: KubernetesPlugin = {
  name: 'pod-certificates',
  options: () => [flagOption(POD_CERTIFICATE_SIGNER_FLAG)],
  configure(flags, env: Env) {
    const source = sourceOf(POD_CERTIFICATE_SIGNER_FLAG);
    const flag = flags.podCertificateSigner;
    const signerName = raw(typeof flag === 'string' ? flag : undefined, env, source);
    if (signerName === undefined) return undefined;
    const problem = signerNameProblem(signerName);
    if (problem) throw bad(source, signerName, `a Kubernetes signer name such as meshca.io/spiffe: ${problem}`);
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
      });
      return { close: () => signer.close() };
    };
  },
};
