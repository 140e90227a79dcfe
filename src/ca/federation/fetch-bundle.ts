/**
 * One fetch of another trust domain's bundle from its SPIFFE bundle endpoint (SPIFFE Federation, section 5), over
 * real HTTPS with the endpoint's profile:
 *   - https_web: the server is checked like any web server, against the default roots (Node.js's bundled Mozilla
 *     list, plus NODE_EXTRA_CA_CERTS) or the roots of `caFile`, and must be named by the URL's host;
 *   - https_spiffe: the server must present an X.509-SVID that chains to the trust domain's bundle in use (the only
 *     roots trusted) and whose only URI SAN is the configured endpoint ID; its DNS name is not checked.
 * Bounded: a deadline for the whole exchange, status 200 only (redirects are not followed), and a body of at most
 * MAX_BUNDLE_BYTES (reading stops beyond). The body must parse as a bundle of that trust domain.
 */
import { readFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import * as https from 'node:https';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import { bundlePem, MAX_BUNDLE_BYTES, parseCertificate, parseSpiffeBundle, type SpiffeBundle } from '../../pki/index.js';
import type { EndpointProfile } from './types.js';

/** Why a refresh failed, as the `reason` label of meshca_federated_bundle_refresh_errors_total. */
export type RefreshErrorReason = 'network' | 'timeout' | 'tls' | 'status' | 'too_large' | 'invalid' | 'sequence' | 'file';

export class BundleRefreshError extends Error {
  constructor(
    readonly reason: RefreshErrorReason,
    message: string,
  ) {
    super(message);
    this.name = 'BundleRefreshError';
  }
}

export const DEFAULT_FETCH_TIMEOUT_MS = 10_000;

export interface FetchOptions {
  timeoutMs?: number;
  maxBytes?: number;
  /** Aborts the fetch (the CA is closing). */
  signal?: AbortSignal;
  /** How the caller's user names a CA file, for the hint after a refused certificate (default: --federate's syntax). */
  caFileHint?: string;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED']);

/** The https_spiffe server check: the leaf's URI SANs must be exactly the endpoint ID. */
function endpointIdCheck(endpointId: string): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    let uris: readonly string[];
    try {
      uris = parseCertificate(cert.raw).sans.uris;
    } catch (error) {
      return new BundleRefreshError('tls', `the endpoint's certificate does not parse: ${(error as Error).message}`);
    }
    if (uris.length === 1 && uris[0] === endpointId) return undefined;
    const presented = uris.length === 0 ? 'no URI SAN' : uris.join(', ');
    return new BundleRefreshError('tls', `the endpoint presented ${presented}, not the configured endpoint-id ${endpointId}`);
  };
}

async function tlsOptions(profile: EndpointProfile, current: SpiffeBundle | undefined, host: string): Promise<https.RequestOptions> {
  const servername = isIP(host) === 0 ? { servername: host } : {};
  if (profile.kind === 'https_web') {
    if (profile.caFile === undefined) return { ...servername };
    let ca: string;
    try {
      ca = await readFile(profile.caFile, 'utf8');
    } catch (error) {
      throw new BundleRefreshError('file', `cannot read ca-file ${profile.caFile}: ${(error as Error).message}`);
    }
    return { ...servername, ca };
  }
  if (!current) throw new BundleRefreshError('tls', 'no bundle of the trust domain to authenticate its https_spiffe endpoint with');
  return { ...servername, ca: bundlePem(current), checkServerIdentity: endpointIdCheck(profile.endpointId) };
}

/** What to do about a certificate the client did not accept, by profile. */
function tlsHint(trustDomain: string, profile: EndpointProfile, caFileHint: string): string {
  if (profile.kind === 'https_spiffe') {
    return `the endpoint's certificate must chain to the bundle of ${trustDomain} in use; if that trust domain replaced its roots, give its new bundle with meshca bundle set ${trustDomain} --file <bundle>`;
  }
  return profile.caFile === undefined
    ? `the endpoint's certificate must chain to a public root and name the URL's host; for a private CA add ${caFileHint}`
    : `the endpoint's certificate must chain to a root in ${profile.caFile} and name the URL's host`;
}

function classify(error: Error & { code?: string }, connected: boolean, hint: () => string): BundleRefreshError {
  if (error instanceof BundleRefreshError) return error;
  if (error.code !== undefined && NETWORK_CODES.has(error.code)) return new BundleRefreshError('network', `cannot reach it: ${error.message}`);
  if (!connected) return new BundleRefreshError('tls', `TLS: ${error.message}: ${hint()}`);
  return new BundleRefreshError('network', error.message);
}

/**
 * Fetches and parses the bundle of `trustDomain` from `url`. `current` is the trust domain's bundle in use (the
 * roots of an https_spiffe endpoint). Throws BundleRefreshError with the reason and a one-line message.
 */
export async function fetchBundle(trustDomain: string, url: URL, profile: EndpointProfile, current: SpiffeBundle | undefined, options: FetchOptions = {}): Promise<SpiffeBundle> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
  const maxBytes = options.maxBytes ?? MAX_BUNDLE_BYTES;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const tls = await tlsOptions(profile, current, host);
  const hint = (): string => tlsHint(trustDomain, profile, options.caFileHint ?? ',ca-file=<pem>');
  const body = await new Promise<Buffer>((resolve, reject) => {
    let connected = false;
    let settled = false;
    const finish = (error: BundleRefreshError | undefined, value?: Buffer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (error) {
        request.destroy();
        reject(error);
      } else resolve(value!);
    };
    const request = https.request(url, { method: 'GET', headers: { accept: 'application/json' }, agent: false, rejectUnauthorized: true, ...tls }, (response: IncomingMessage) => {
      if (response.statusCode !== 200) {
        const redirect = response.statusCode !== undefined && response.statusCode >= 300 && response.statusCode < 400;
        finish(new BundleRefreshError('status', `HTTP ${response.statusCode ?? '?'}${redirect ? ' (redirects are not followed: give the final URL)' : ''}, expected 200`));
        return;
      }
      const declared = Number(response.headers['content-length']);
      if (Number.isFinite(declared) && declared > maxBytes) {
        finish(new BundleRefreshError('too_large', `the body is ${declared} bytes, more than the ${maxBytes} a bundle may have`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) finish(new BundleRefreshError('too_large', `the body is more than the ${maxBytes} bytes a bundle may have`));
        else chunks.push(chunk);
      });
      response.on('end', () => finish(undefined, Buffer.concat(chunks)));
      response.on('error', (error) => finish(classify(error, true, hint)));
    });
    request.on('socket', (socket) => socket.once('secureConnect', () => (connected = true)));
    request.on('error', (error: Error & { code?: string }) => finish(classify(error, connected, hint)));
    const timer = setTimeout(() => finish(new BundleRefreshError('timeout', `no complete answer within ${timeoutMs / 1000}s`)), timeoutMs);
    const onAbort = (): void => finish(new BundleRefreshError('network', 'the fetch was cancelled'));
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
    request.end();
  });
  try {
    return parseSpiffeBundle(trustDomain, body);
  } catch (error) {
    throw new BundleRefreshError('invalid', (error as Error).message);
  }
}
