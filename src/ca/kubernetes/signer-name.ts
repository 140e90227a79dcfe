/**
 * Kubernetes signer names (`<domain>/<path>`), checked as the API server checks spec.signerName, so a name the
 * API would refuse is refused at start-up instead of never matching a request.
 */

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function isDnsSubdomain(text: string, maxLength: number): boolean {
  return text.length > 0 && text.length <= maxLength && text.split('.').every((label) => label.length <= 63 && DNS_LABEL.test(label));
}

/** Why `name` is not a valid signer name, or undefined when it is. */
export function signerNameProblem(name: string): string | undefined {
  if (name.length > 571) return 'longer than 571 characters';
  const parts = name.split('/');
  if (parts.length !== 2) return 'not of the form <domain>/<path> with exactly one "/"';
  const [domain, path] = parts as [string, string];
  if (!isDnsSubdomain(domain, 253) || !domain.includes('.')) {
    return `domain "${domain}" is not a DNS subdomain with at least two labels (lowercase letters, digits, "-", ".")`;
  }
  if (!isDnsSubdomain(path, 317)) return `path "${path}" is not made of DNS subdomain segments (lowercase letters, digits, "-", ".")`;
  if (domain === 'kubernetes.io' || domain.endsWith('.kubernetes.io')) return `the domain "${domain}" is reserved for Kubernetes' own signers`;
  return undefined;
}
