/**
 * The SPIFFE bundle endpoint (SPIFFE Federation, section 4): this CA's own bundle, as its JSON document, at
 * `GET /` over HTTPS, for other trust domains to poll. Two ways for them to authenticate it:
 *   - https_web: a Web PKI certificate the admin provides (--bundle-endpoint-cert/-key), reloaded when the files
 *     change (a renewed cert-manager Secret), so peers need only their system roots and the URL;
 *   - https_spiffe: an X.509-SVID the CA issues to itself from its own signer (--bundle-endpoint-spiffe-id), served
 *     with its intermediates (not the root), renewed at half-life and on every CA material change; peers check it
 *     against this trust domain's bundle they already hold.
 *
 * The endpoint is public by design and small: it reads no request body, answers only `GET /` (and HEAD), and
 * bounds what a client can hold (header and request timeouts, a TLS handshake timeout, a connection limit).
 */
import { readFile } from 'node:fs/promises';
import { unwatchFile, watchFile } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { Counter, type Registry } from 'prom-client';
import type { Logger } from '../../log.js';
import { certificatesFromPem, formatSpiffeBundle, parseCertificate, parseSpiffeId } from '../../pki/index.js';
import { formatHostPort, listenError, type ListenAddressText } from '../../util/listen.js';
import { TLS_CIPHERS, TLS_MIN_VERSION } from '../../util/tls-policy.js';
import { OwnCertificate, type OwnCertificateState } from '../own-certificate.js';
import type { WorkloadSigner } from '../signer.js';
import type { OwnBundle } from './types.js';

/** How peers authenticate this endpoint (the parsed --bundle-endpoint-* flags). */
export type BundleEndpointProfileConfig =
  | { kind: 'https_web'; certFile: string; keyFile: string }
  | { kind: 'https_spiffe'; spiffeId: string };

/** `bundleEndpoint` of the CA configuration; absent when --bundle-endpoint-addr is not set. */
export interface BundleEndpointConfig {
  address: ListenAddressText;
  profile: BundleEndpointProfileConfig;
  /** `spiffe_refresh_hint` of the bundle served (give it to `ownBundle`). */
  refreshHintSeconds: number;
}

/** The https_spiffe endpoint's default SVID path: no workload can be issued it (workload IDs are /ns/<ns>/sa/<sa>). */
export const DEFAULT_BUNDLE_ENDPOINT_PATH = '/meshca/bundle-endpoint';

/**
 * Why `id` cannot be the endpoint's SVID, or undefined. It must be in the CA's trust domain (the CA issues it, and
 * peers check it against this trust domain's bundle) and must not be a workload ID: any pod with that service
 * account could otherwise be issued the same ID and serve a bundle in the CA's name.
 */
export function bundleEndpointIdProblem(id: string, trustDomain: string): string | undefined {
  let parsed;
  try {
    parsed = parseSpiffeId(id);
  } catch (error) {
    return `a SPIFFE ID (${(error as Error).message})`;
  }
  if (parsed.trustDomain !== trustDomain) return `a SPIFFE ID in this CA's trust domain "${trustDomain}" (the CA issues the endpoint's SVID)`;
  if (parsed.path === '' || /^\/ns\/[^/]+\/sa\/[^/]+$/.test(parsed.path)) {
    return `an ID no workload can be issued, such as spiffe://${trustDomain}${DEFAULT_BUNDLE_ENDPOINT_PATH} (a pod with a workload ID could otherwise serve a bundle in the CA's name)`;
  }
  return undefined;
}

export interface BundleEndpointOptions {
  config: BundleEndpointConfig;
  /** What is served: `ownBundle(signer, trustDomain, { refreshHintSeconds: config.refreshHintSeconds })`. */
  bundle: OwnBundle;
  /** https_spiffe: issues the endpoint's SVID. */
  signer: WorkloadSigner;
  /** https_spiffe: the SVID's lifetime (the CA uses --server-cert-ttl); renewed at half of it. */
  svidTtlSeconds: number;
  logger: Logger;
  /** Gets meshca_bundle_endpoint_requests_total. */
  registry?: Registry;
  /** The clock the SVID is issued at; default Date.now. */
  now?: () => number;
  /** https_web: how often the certificate and key files are checked for a change; default 5 s. */
  reloadIntervalMs?: number;
}

export interface BundleEndpoint {
  /** host:port actually bound (the real port when 0 was asked for). */
  address: string;
  port: number;
  /** https_spiffe: the SVID being served; undefined with https_web. */
  svid(): OwnCertificateState | undefined;
  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void>;
}

export const BUNDLE_ENDPOINT_REQUESTS_METRIC = 'meshca_bundle_endpoint_requests_total';
type Result = 'ok' | 'not_found' | 'method_not_allowed';

/** A bundle GET is one small response: anything slower than this is a client holding the connection. */
const REQUEST_TIMEOUT_MS = 10_000;
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
const MAX_CONNECTIONS = 256;
const MAX_HEADER_BYTES = 8 * 1024;
const DEFAULT_RELOAD_INTERVAL_MS = 5_000;
const RELOAD_DEBOUNCE_MS = 100;

function requestCounter(registry: Registry | undefined): Counter<'result'> | undefined {
  if (!registry) return undefined;
  const existing = registry.getSingleMetric(BUNDLE_ENDPOINT_REQUESTS_METRIC);
  if (existing instanceof Counter) return existing as Counter<'result'>;
  const counter = new Counter({
    name: BUNDLE_ENDPOINT_REQUESTS_METRIC,
    help: 'Requests to the SPIFFE bundle endpoint (--bundle-endpoint-addr), by result (ok, not_found, method_not_allowed).',
    labelNames: ['result'],
    registers: [registry],
  });
  for (const result of ['ok', 'not_found', 'method_not_allowed'] as const) counter.inc({ result }, 0);
  return counter;
}

function secureContextOf(certChainPem: string, keyPem: string): SecureContextOptions {
  return { cert: certChainPem, key: keyPem, minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS };
}

/** The admin's certificate and key (https_web), checked to belong together before use. */
async function readWebCertificate(certFile: string, keyFile: string): Promise<{ context: SecureContextOptions; subject: string; notAfter: Date }> {
  const [certPem, keyPem] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  const first = certificatesFromPem(certPem)[0];
  if (!first) throw new Error(`${certFile} (--bundle-endpoint-cert) holds no PEM certificate`);
  const leaf = parseCertificate(first);
  const context = secureContextOf(certPem, keyPem);
  try {
    createSecureContext(context);
  } catch (error) {
    throw new Error(`${certFile} and ${keyFile} (--bundle-endpoint-cert/--bundle-endpoint-key) do not make a TLS certificate: ${(error as Error).message}; give the certificate chain and its own private key`);
  }
  return { context, subject: leaf.subject, notAfter: leaf.notAfter };
}

/** Follows the admin's files: a change (checked every `intervalMs`) that makes a good certificate replaces the served one. */
function followWebCertificate(server: Server, profile: { certFile: string; keyFile: string }, intervalMs: number, logger: Logger): () => void {
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  const reload = async (): Promise<void> => {
    try {
      const loaded = await readWebCertificate(profile.certFile, profile.keyFile);
      if (closed) return;
      server.setSecureContext(loaded.context);
      logger.info({ certFile: profile.certFile, subject: loaded.subject, notAfter: loaded.notAfter.toISOString() }, 'bundle endpoint certificate reloaded');
    } catch (error) {
      // Often the middle of an update (the certificate written, not yet the key): the next change retries.
      logger.warn({ certFile: profile.certFile, keyFile: profile.keyFile, err: (error as Error).message }, 'bundle endpoint certificate not reloaded; still serving the previous one');
    }
  };
  const changed = (): void => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => void reload(), RELOAD_DEBOUNCE_MS);
    timer.unref();
  };
  // Stat polling follows symlinks, so it also sees a Kubernetes Secret volume swapping its `..data` link.
  for (const file of [profile.certFile, profile.keyFile]) watchFile(file, { persistent: false, interval: intervalMs }, changed);
  return () => {
    closed = true;
    if (timer) clearTimeout(timer);
    for (const file of [profile.certFile, profile.keyFile]) unwatchFile(file, changed);
  };
}

function hasBody(request: IncomingMessage): boolean {
  const length = request.headers['content-length'];
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** Starts the endpoint; rejects with one line when the certificate cannot be had or the address cannot be bound. */
export async function startBundleEndpoint(options: BundleEndpointOptions): Promise<BundleEndpoint> {
  const { config, bundle, logger } = options;
  const counter = requestCounter(options.registry);
  let document = formatSpiffeBundle(bundle.current());
  const unsubscribe = bundle.onChange(() => {
    document = formatSpiffeBundle(bundle.current());
  });
  const cleanups: (() => void)[] = [unsubscribe];
  const cleanUp = (): void => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  };

  let svid: OwnCertificate | undefined;
  let context: SecureContextOptions;
  try {
    if (config.profile.kind === 'https_spiffe') {
      const own = new OwnCertificate({
        signer: options.signer,
        uris: [config.profile.spiffeId],
        ttlSeconds: options.svidTtlSeconds,
        logger,
        label: 'bundle endpoint SVID',
        ...(options.now ? { now: options.now } : {}),
      });
      svid = own;
      cleanups.push(() => own.close());
      const material = await own.start();
      context = secureContextOf(material.certChainPem, material.keyPem);
    } else {
      const loaded = await readWebCertificate(config.profile.certFile, config.profile.keyFile);
      logger.info({ certFile: config.profile.certFile, subject: loaded.subject, notAfter: loaded.notAfter.toISOString() }, 'bundle endpoint certificate loaded');
      context = loaded.context;
    }
  } catch (error) {
    cleanUp();
    throw error;
  }

  const answer = (request: IncomingMessage, response: ServerResponse, result: Result, status: number, headers: Record<string, string>, body: string): void => {
    counter?.inc({ result });
    // A body is never read: the connection closes after the answer instead of reading past it.
    if (hasBody(request)) response.setHeader('connection', 'close');
    response.writeHead(status, { ...headers, 'content-length': String(Buffer.byteLength(body)), 'cache-control': 'no-store' });
    response.end(request.method === 'HEAD' ? undefined : body);
  };
  const server = createServer(
    {
      ...context,
      handshakeTimeout: REQUEST_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
      headersTimeout: REQUEST_TIMEOUT_MS,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      maxHeaderSize: MAX_HEADER_BYTES,
    },
    (request, response) => {
      const path = (request.url ?? '').split('?')[0];
      if (path !== '/') {
        answer(request, response, 'not_found', 404, { 'content-type': 'text/plain; charset=utf-8' }, 'not found: the SPIFFE bundle is at /\n');
      } else if (request.method !== 'GET' && request.method !== 'HEAD') {
        answer(request, response, 'method_not_allowed', 405, { 'content-type': 'text/plain; charset=utf-8', allow: 'GET, HEAD' }, 'method not allowed: GET / for the SPIFFE bundle\n');
      } else {
        answer(request, response, 'ok', 200, { 'content-type': 'application/json' }, document);
      }
    },
  );
  server.maxConnections = MAX_CONNECTIONS;
  // A failed handshake or a malformed request closes its connection; nothing to log for a public endpoint.
  server.on('tlsClientError', (_error: Error, socket: Socket) => socket.destroy());

  if (svid) {
    const own = svid;
    cleanups.push(own.onRenew((material) => server.setSecureContext(secureContextOf(material.certChainPem, material.keyPem))));
  } else if (config.profile.kind === 'https_web') {
    cleanups.push(followWebCertificate(server, config.profile, options.reloadIntervalMs ?? DEFAULT_RELOAD_INTERVAL_MS, logger));
  }

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.address.port, config.address.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    cleanUp();
    throw listenError(config.address, 'the SPIFFE bundle endpoint', '--bundle-endpoint-addr', error);
  }
  const port = (server.address() as AddressInfo).port;
  const address = formatHostPort(config.address.host, port);
  logger.info(
    { bundleEndpoint: `https://${address}/`, profile: config.profile.kind, ...(config.profile.kind === 'https_spiffe' ? { spiffeId: config.profile.spiffeId } : {}), sequence: bundle.current().sequence },
    'SPIFFE bundle endpoint listening',
  );

  let closing: Promise<void> | undefined;
  return {
    address,
    port,
    svid: () => svid?.current(),
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        cleanUp();
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
