/**
 * Whether a server certificate names the host a client dialled, by subjectAltName only. Node's own
 * `tls.checkServerIdentity` falls back to the subject CN when the certificate has no DNS SAN; every workload leaf
 * chains to the same mesh root as the CA's serving certificate, so a CN fallback would let a certificate whose CN a
 * workload managed to choose pass as the CA. Here a DNS host name must equal a DNS SAN (case-insensitively, a
 * trailing dot ignored) or match a wildcard SAN `*.rest` (the whole leftmost label, at least three labels, one
 * host label for the `*`, as RFC 6125 6.4.3 allows and Node accepts); an IP address must equal an IP SAN.
 * The CN is never read.
 */
import { isIP } from 'node:net';
import { parseCertificate } from './x509.js';

function normalise(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** RFC 6125 matching of one DNS SAN against a host name; no CN, no partial-label wildcards. */
export function dnsNameMatches(host: string, san: string): boolean {
  const hostName = normalise(host);
  const pattern = normalise(san);
  if (hostName === '' || pattern === '') return false;
  if (!pattern.includes('*')) return hostName === pattern;
  const patternLabels = pattern.split('.');
  const hostLabels = hostName.split('.');
  if (patternLabels[0] !== '*' || patternLabels.slice(1).some((label) => label === '' || label.includes('*'))) return false;
  if (patternLabels.length < 3 || hostLabels.length !== patternLabels.length) return false;
  if (hostLabels[0] === '' || hostLabels[0]!.startsWith('xn--')) return false;
  return hostLabels.slice(1).join('.') === patternLabels.slice(1).join('.');
}

function normaliseIp(address: string): string {
  const family = isIP(address);
  if (family === 4) return address;
  // Expand IPv6 to eight groups so that `::1` and `0:0:0:0:0:0:0:1` compare equal.
  const [head = '', tail = ''] = address.toLowerCase().split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = address.includes('::') ? (tail === '' ? [] : tail.split(':')) : [];
  const missing = 8 - headGroups.length - tailGroups.length;
  return [...headGroups, ...Array<string>(Math.max(0, missing)).fill('0'), ...tailGroups].map((g) => g.replace(/^0+(?=.)/, '')).join(':');
}

/**
 * Undefined when `certDer` names `host` in a subjectAltName, else an Error with a one-line reason. Meant as the
 * `checkServerIdentity` of a TLS connection, which runs only after the chain verified against the trusted roots.
 */
export function checkServerIdentityBySan(host: string, certDer: Buffer): Error | undefined {
  let sans: { dnsNames: string[]; ipAddresses: string[] };
  try {
    sans = parseCertificate(certDer).sans;
  } catch (error) {
    return new Error(`the server certificate cannot be read: ${(error as Error).message}`);
  }
  const bareHost = host.replace(/^\[|\]$/g, '');
  if (isIP(bareHost)) {
    if (sans.ipAddresses.some((ip) => isIP(ip) === isIP(bareHost) && normaliseIp(ip) === normaliseIp(bareHost))) return undefined;
  } else if (sans.dnsNames.some((san) => dnsNameMatches(bareHost, san))) {
    return undefined;
  }
  const named = [...sans.dnsNames.map((n) => `DNS:${n}`), ...sans.ipAddresses.map((n) => `IP:${n}`)];
  const error = new Error(
    `the server certificate does not name "${host}" in a subjectAltName (it names ${named.length > 0 ? named.join(', ') : 'no DNS name or IP'}; a subject CN is never accepted): dial the CA by one of its DNS names or set the server name to one`,
  ) as Error & { code: string; host: string };
  error.code = 'ERR_TLS_CERT_ALTNAME_INVALID';
  error.host = host;
  return error;
}
