/**
 * Kubernetes signer names (`<domain>/<path>`, exactly one "/"), checked by the rules the API server applies to
 * spec.signerName of CertificateSigningRequests, ClusterTrustBundles and PodCertificateRequests, so a name the
 * API would refuse is refused when meshca starts rather than at every write.
 */

const DNS_1123_LABEL = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;

/** Dot-separated DNS-1123 labels of at most 63 characters each, `maxLength` in all. */
function dnsSubdomain(text: string, maxLength: number): boolean {
  return text.length > 0 && text.length <= maxLength && text.split('.').every((label) => DNS_1123_LABEL.test(label));
}

/** What is wrong with `name` as a signer name, or undefined when the API server would take it. */
export function signerNameProblem(name: string): string | undefined {
  const parts = name.split('/');
  if (parts.length !== 2) return 'it must be <domain>/<path> with exactly one "/"';
  const [domain, path] = parts as [string, string];
  if (!dnsSubdomain(domain, 253) || !domain.includes('.')) {
    return `the domain "${domain}" must be a DNS name with at least two labels (lowercase letters, digits, "-", ".")`;
  }
  if (!dnsSubdomain(path, 253 + 63 + 1)) return `the path "${path}" must be dot-separated DNS names (lowercase letters, digits, "-", ".")`;
  if (name.length > 571) return 'it is longer than 571 characters';
  if (domain === 'kubernetes.io' || domain.endsWith('.kubernetes.io')) return `the domain "${domain}" is reserved for Kubernetes' own signers`;
  return undefined;
}
