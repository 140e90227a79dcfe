/**
 * `meshca ca --csr-signer NAME`: signs certificates.k8s.io/v1 CertificateSigningRequests addressed to NAME (the
 * external signer istiod uses with EXTERNAL_CA=ISTIOD_RA_KUBERNETES_API and K8S_SIGNER=NAME). Off by default.
 */
import { bad, readList, readOptionalString } from '../../../config/env.js';
import { flagOption, sourceOf, type FlagSpec } from '../../../config/flags.js';
import type { KubernetesPlugin } from '../types.js';
import { startCsrSigner } from './controller.js';
import { signerNameProblem } from '../signer-name.js';

/** The signer name the docs and deploy/kubernetes/ca-rbac.yaml use. */
export const EXAMPLE_CSR_SIGNER_NAME = 'meshca.io/workloads';

/** Istiod's service account in its default namespace: the requester of ISTIOD_RA_KUBERNETES_API. */
export const DEFAULT_CSR_REQUESTERS: readonly string[] = ['system:serviceaccount:istio-system:istiod'];

export const CSR_SIGNER_FLAGS = {
  csrSigner: {
    flags: '--csr-signer <signer-name>',
    description: 'sign approved CertificateSigningRequests for this signer name (istiod K8S_SIGNER); off when unset',
    env: ['MESHCA_CSR_SIGNER'],
    defaultText: 'off',
  },
  csrSignerRequesters: {
    flags: '--csr-signer-requesters <users>',
    description: 'users (spec.username) whose CertificateSigningRequests are signed, comma-separated',
    env: ['MESHCA_CSR_SIGNER_REQUESTERS'],
    defaultText: DEFAULT_CSR_REQUESTERS.join(','),
  },
} as const satisfies Record<string, FlagSpec>;

export const csrSignerPlugin: KubernetesPlugin = {
  name: 'csr-signer',
  options: () => [flagOption(CSR_SIGNER_FLAGS.csrSigner), flagOption(CSR_SIGNER_FLAGS.csrSignerRequesters)],
  configure(flags, env) {
    const source = sourceOf(CSR_SIGNER_FLAGS.csrSigner);
    const signerName = readOptionalString(flags.csrSigner as string | undefined, env, source);
    if (signerName === undefined) return undefined;
    const problem = signerNameProblem(signerName);
    if (problem) throw bad(source, signerName, `a Kubernetes signer name such as ${EXAMPLE_CSR_SIGNER_NAME} (${problem})`);
    const requesters = readList(flags.csrSignerRequesters as string | undefined, env, sourceOf(CSR_SIGNER_FLAGS.csrSignerRequesters), DEFAULT_CSR_REQUESTERS);
    if (requesters.length === 0) throw bad(sourceOf(CSR_SIGNER_FLAGS.csrSignerRequesters), '', 'at least one user name, e.g. system:serviceaccount:istio-system:istiod');
    return (context) => Promise.resolve(startCsrSigner(context, { signerName, requesters }));
  },
};
