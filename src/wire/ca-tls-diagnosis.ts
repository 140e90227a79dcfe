/**
 * Why a TLS connection to the CA fails, in one line a person can act on. grpc-js reports a failed handshake as
 * UNAVAILABLE with OpenSSL's text ("unable to verify the first certificate. Resolution note: ..."), which names
 * neither the file nor the setting to change. After such a failure the caller asks `diagnoseCaTls`: it makes one
 * TLS handshake of its own to the same address with the same roots and server name, reads what the CA presented and
 * says which check failed and how to fix it. The probe never sends a request, so never a token.
 */
import { isIP } from 'node:net';
import * as tls from 'node:tls';
import { parseCertificate } from '../pki/x509.js';
import { checkServerIdentityBySan } from '../pki/server-identity.js';

export interface CaTlsTarget {
  /** The CA address as dialled: host:port, [v6]:port, optionally with a dns:/// prefix. */
  address: string;
  /** The name verified instead of the host (ISTIOD_SAN, --server-name). */
  serverName?: string;
  /** The PEM roots the CA must chain to, and where they came from. */
  rootsPem: Buffer;
  rootsFile: string;
  /** How the user names the roots setting and the server-name setting, e.g. '--ca-root-cert' and 'ISTIOD_SAN'. */
  rootsSetting: string;
  serverNameSetting: string;
  addressSetting: string;
}

/** Host and port of a gRPC target, or undefined for forms the probe does not dial (unix:, several addresses). */
export function parseCaAddress(address: string): { host: string; port: number } | undefined {
  const bare = address.replace(/^dns:(\/\/[^/]*\/)?/, '');
  const match = /^(?:\[([^\]]+)\]|([^:[\]/]+)):(\d{1,5})$/.exec(bare);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (match[1] ?? match[2])!, port };
}

const UNTRUSTED_CHAIN = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
]);

const ROOT_HINT = "kubectl -n istio-system get cm istio-ca-root-cert -o jsonpath='{.data.root-cert\\.pem}'";

/** The explanation for what the CA presented, or undefined when its certificate passes both checks. */
export function explainCaCertificate(target: CaTlsTarget, chainError: string | undefined, leafDer: Buffer): string | undefined {
  let issuer = '';
  let notAfter: Date | undefined;
  let notBefore: Date | undefined;
  try {
    const leaf = parseCertificate(leafDer);
    issuer = leaf.issuer;
    notAfter = leaf.notAfter;
    notBefore = leaf.notBefore;
  } catch {
    // The chain error below still says enough.
  }
  const at = `the CA at ${target.address}`;
  if (chainError === 'CERT_HAS_EXPIRED') {
    return `${at} presented a certificate that expired${notAfter ? ` at ${notAfter.toISOString()}` : ''}: renew the CA's serving certificate (or correct this machine's clock)`;
  }
  if (chainError === 'CERT_NOT_YET_VALID') {
    return `${at} presented a certificate not valid until${notBefore ? ` ${notBefore.toISOString()}` : ' later'}: correct the clock of this machine or of the CA`;
  }
  if (chainError !== undefined) {
    const issuedBy = issuer ? ` (issued by "${issuer}")` : '';
    const setting = target.rootsSetting;
    if (UNTRUSTED_CHAIN.has(chainError)) return `${at} presented a certificate${issuedBy} that is not signed by the root in ${target.rootsFile} (${setting}): point ${setting} at the mesh root (${ROOT_HINT})`;
    return `${at} presented a certificate${issuedBy} that does not verify (${chainError}) against ${target.rootsFile} (${setting}): point ${setting} at the mesh root (${ROOT_HINT})`;
  }
  const parsed = parseCaAddress(target.address);
  const name = target.serverName ?? parsed?.host ?? target.address;
  const mismatch = checkServerIdentityBySan(name, leafDer);
  if (!mismatch) return undefined;
  let names = 'no DNS name or IP';
  try {
    const sans = parseCertificate(leafDer).sans;
    const all = [...sans.dnsNames, ...sans.ipAddresses];
    if (all.length > 0) names = `${all.length > 1 ? 'names' : 'name'} ${all.slice(0, 8).join(', ')}${all.length > 8 ? ', ...' : ''}`;
  } catch {
    return `${at}: ${mismatch.message}`;
  }
  return `${at} presented a certificate not valid for the name "${name}" (it has ${names}; a subject CN is never accepted): set ${target.serverNameSetting} to one of its names or fix ${target.addressSetting}`;
}

/**
 * Whether a failed call's status details come from the channel (no connection was made: a refused handshake among
 * others) rather than from the CA. Only these are worth a diagnosing handshake; a status the CA sent is its own word.
 */
export function isConnectionFailure(details: string): boolean {
  return /No connection established/i.test(details);
}

/**
 * One TLS handshake to the CA that reports the first failed check as a line to show the user, or undefined when
 * the handshake is fine or cannot be made (nothing listening, a timeout: the caller's own message covers those).
 */
export function diagnoseCaTls(target: CaTlsTarget, timeoutMs = 3000): Promise<string | undefined> {
  const parsed = parseCaAddress(target.address);
  if (!parsed) return Promise.resolve(undefined);
  const sniName = target.serverName ?? parsed.host;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (value: string | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(value);
    };
    const socket = tls.connect({
      host: parsed.host,
      port: parsed.port,
      ca: target.rootsPem,
      // Node warns (DEP0123) about an IP address as SNI; an IP is checked against the IP SANs below anyway.
      ...(isIP(sniName) ? {} : { servername: sniName }),
      ALPNProtocols: ['h2'],
      // The probe reads the certificate whatever it is; it sends nothing over the connection.
      rejectUnauthorized: false,
      // The name is checked below by SAN only; here authorizationError is about the chain alone.
      checkServerIdentity: () => undefined,
    });
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    timer.unref();
    socket.once('secureConnect', () => {
      const error = socket.authorizationError as unknown;
      const code = error === null || error === undefined ? undefined : typeof error === 'string' ? error : ((error as { code?: string }).code ?? String(error));
      const leaf = socket.getPeerCertificate();
      if (!leaf || !leaf.raw) {
        finish(`the CA at ${target.address} presented no certificate: check that ${target.addressSetting} names the CA's TLS port`);
        return;
      }
      finish(explainCaCertificate(target, code, leaf.raw));
    });
    socket.once('error', () => finish(undefined));
  });
}
