/**
 * A stand-in for another trust domain's SPIFFE bundle endpoint (test code only): a real HTTPS server that answers
 * every GET with a document the test sets (any status, any body, even garbage), presenting a Web PKI certificate
 * (https_web) or an X.509-SVID (https_spiffe) the test can switch at any time. Also builds the certificates and
 * bundle documents, with @peculiar/x509 and node:crypto, independent of meshca's own PKI code.
 */
import { createPublicKey } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { CA_KEY_USAGE, certPem, generateKeyPair, issueCert, privateKeyPem, x509, type CaMaterial } from './pki.js';
import { SocketTracker } from './http-util.js';

export interface ServerIdentity {
  certPem: string;
  keyPem: string;
}

export interface Answer {
  status?: number;
  body: string | Buffer;
  headers?: Record<string, string>;
  /** Send without content-length (chunked), so only counting the bytes read can bound it. */
  chunked?: boolean;
  /** Send the headers and then nothing more: a client needs its own deadline. */
  stall?: boolean;
}

export interface BundleEndpoint {
  url: URL;
  /** GET requests answered so far. */
  readonly requests: number;
  serve(answer: Answer): void;
  /** The certificate the server presents from the next handshake on. */
  present(identity: ServerIdentity): void;
  close(): Promise<void>;
}

export async function startBundleEndpoint(identity: ServerIdentity, path = '/bundle'): Promise<BundleEndpoint> {
  let answer: Answer = { status: 503, body: 'not set yet' };
  let requests = 0;
  const server: Server = createServer({ cert: identity.certPem, key: identity.keyPem }, (request, response) => {
    requests += 1;
    const body = typeof answer.body === 'string' ? Buffer.from(answer.body) : answer.body;
    const length = answer.chunked ? {} : { 'content-length': String(body.length) };
    response.writeHead(answer.status ?? 200, { 'content-type': 'application/json', ...length, ...answer.headers });
    if (answer.stall) {
      response.flushHeaders();
      return;
    }
    response.end(request.method === 'HEAD' ? undefined : body);
  });
  // Each fetch opens its own connection (no keep-alive): a new identity applies to the next fetch.
  server.keepAliveTimeout = 1;
  const sockets = new SocketTracker(server, () => false);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: new URL(`https://127.0.0.1:${port}${path}`),
    get requests() {
      return requests;
    },
    serve(next) {
      answer = next;
    },
    present(next) {
      server.setSecureContext({ cert: next.certPem, key: next.keyPem });
    },
    async close() {
      sockets.destroyAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const HOUR = 3600_000;

/** A root CA of a trust domain, with the trust domain's SPIFFE ID as URI SAN (as SPIRE's and meshca's roots have). */
export async function makeTrustDomainRoot(trustDomain: string, name = 'root'): Promise<CaMaterial> {
  const keys = await generateKeyPair('ec');
  const now = Date.now();
  const cert = await issueCert(
    {
      subject: `O=${trustDomain}, CN=${name}`,
      publicKey: keys.publicKey,
      notBefore: new Date(now - HOUR),
      notAfter: new Date(now + 24 * HOUR),
      ca: {},
      keyUsage: CA_KEY_USAGE,
      sans: [{ type: 'url', value: `spiffe://${trustDomain}` }],
    },
    undefined,
    keys,
  );
  return { cert, pem: certPem(cert), keys };
}

/** An X.509-SVID for a server (no DNS name: https_spiffe does not check one). */
export async function makeSvid(issuer: CaMaterial, spiffeId: string): Promise<ServerIdentity> {
  const keys = await generateKeyPair('ec');
  const now = Date.now();
  const cert = await issueCert(
    {
      subject: '',
      publicKey: keys.publicKey,
      notBefore: new Date(now - HOUR),
      notAfter: new Date(now + 24 * HOUR),
      keyUsage: x509.KeyUsageFlags.digitalSignature,
      extKeyUsage: [x509.ExtendedKeyUsage.serverAuth],
      sans: [{ type: 'url', value: spiffeId }],
    },
    issuer,
  );
  return { certPem: `${certPem(cert)}\n${issuer.pem}\n`, keyPem: `${await privateKeyPem(keys.privateKey)}\n` };
}

/** A SPIFFE bundle document (JWK Set of x509-svid keys) holding `authorities`. */
export function bundleDocument(authorities: readonly CaMaterial[], fields: { sequence?: number; refreshHint?: number } = {}): string {
  const keys = authorities.map((authority) => {
    const der = Buffer.from(authority.cert.rawData);
    const jwk = createPublicKey({ key: Buffer.from(authority.cert.publicKey.rawData), format: 'der', type: 'spki' }).export({ format: 'jwk' });
    return { use: 'x509-svid', ...jwk, x5c: [der.toString('base64')] };
  });
  return JSON.stringify({
    keys,
    ...(fields.sequence !== undefined ? { spiffe_sequence: fields.sequence } : {}),
    ...(fields.refreshHint !== undefined ? { spiffe_refresh_hint: fields.refreshHint } : {}),
  });
}
