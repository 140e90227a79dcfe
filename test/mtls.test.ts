/**
 * Certificates meshca issues work for what they are for: a real mutual-TLS handshake (node:tls server and client)
 * with two workload certificates from the same root, where the client checks the server's SPIFFE URI SAN the way
 * a mesh peer does, and the server sees the client's SPIFFE ID.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type PeerCertificate, type TLSSocket } from 'node:tls';
import { describe, test } from 'node:test';
import { CertificateAuthority, createSelfSignedRoot, LocalSigner } from '../src/ca/index.js';
import { createCsr, exportPrivateKeyPem, generateKeyPairFor, WorkloadId, type KeySpec } from '../src/pki/index.js';

const TD = 'cluster.local';
const SERVER_ID = `spiffe://${TD}/ns/default/sa/server`;
const CLIENT_ID = `spiffe://${TD}/ns/default/sa/client`;

interface Workload {
  keyPem: string;
  /** Leaf and intermediates. */
  certPem: string;
  rootsPem: string;
}

async function newAuthority(keySpec: KeySpec): Promise<CertificateAuthority> {
  const root = await createSelfSignedRoot({ stateDir: '/nonexistent', trustDomain: TD, keySpec, ttlSeconds: 86400 });
  return new CertificateAuthority({ signer: new LocalSigner('self-signed', root.material), defaultTtlSeconds: 3600, maxTtlSeconds: 86400 });
}

async function issue(authority: CertificateAuthority, identity: string, keySpec: KeySpec): Promise<Workload> {
  const key = generateKeyPairFor(keySpec).privateKey;
  // The CSR asks for nothing in particular: the CA writes the identity it was told the caller proved.
  const issued = await authority.issue({ csrPem: createCsr({ privateKey: key }), identity: WorkloadId.parse(identity), requestedTtlSeconds: 600 });
  return { keyPem: exportPrivateKeyPem(key), certPem: issued.chain.slice(0, -1).join(''), rootsPem: issued.chain[issued.chain.length - 1]! };
}

/** A peer check like a mesh client's: the server must present exactly the expected SPIFFE ID. */
function expectSpiffeId(expected: string) {
  return (_host: string, cert: PeerCertificate): Error | undefined => {
    const uris = (cert.subjectaltname ?? '')
      .split(', ')
      .filter((entry) => entry.startsWith('URI:'))
      .map((entry) => entry.slice(4));
    return uris.length === 1 && uris[0] === expected ? undefined : new Error(`server identity ${uris.join(',') || '(none)'} is not ${expected}`);
  };
}

interface HandshakeResult {
  clientSawServer: string | undefined;
  serverSawClient: string | undefined;
  echoed: string;
}

async function handshake(server: Workload, client: Workload, expectedServerId: string): Promise<HandshakeResult> {
  let serverSawClient: string | undefined;
  const tlsServer = createServer({ key: server.keyPem, cert: server.certPem, ca: server.rootsPem, requestCert: true, rejectUnauthorized: true }, (socket: TLSSocket) => {
    serverSawClient = socket.getPeerCertificate().subjectaltname;
    socket.on('data', (data) => socket.end(`echo:${data.toString()}`));
  });
  tlsServer.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
  try {
    const port = (tlsServer.address() as AddressInfo).port;
    return await new Promise<HandshakeResult>((resolve, reject) => {
      const socket = connect({
        host: '127.0.0.1',
        port,
        key: client.keyPem,
        cert: client.certPem,
        ca: client.rootsPem,
        checkServerIdentity: expectSpiffeId(expectedServerId),
      });
      let echoed = '';
      socket.on('secureConnect', () => socket.write('ping'));
      socket.on('data', (data) => (echoed += data.toString()));
      socket.on('end', () => resolve({ clientSawServer: socket.getPeerCertificate().subjectaltname, serverSawClient, echoed }));
      socket.on('error', reject);
    });
  } finally {
    await new Promise((resolve) => tlsServer.close(resolve));
  }
}

describe('mutual TLS with meshca-issued workload certificates', () => {
  for (const [rootSpec, leafSpec] of [
    ['rsa-2048', 'ec-p256'],
    ['ec-p384', 'rsa-2048'],
  ] as const) {
    test(`handshake succeeds both ways (${rootSpec} root, ${leafSpec} leaves) and each side sees the other's SPIFFE ID`, async () => {
      const authority = await newAuthority(rootSpec);
      const server = await issue(authority, SERVER_ID, leafSpec);
      const client = await issue(authority, CLIENT_ID, leafSpec);
      const result = await handshake(server, client, SERVER_ID);
      assert.equal(result.echoed, 'echo:ping');
      assert.equal(result.clientSawServer, `URI:${SERVER_ID}`);
      assert.equal(result.serverSawClient, `URI:${CLIENT_ID}`);
    });
  }

  test('the client refuses a server presenting another SPIFFE ID', async () => {
    const authority = await newAuthority('ec-p256');
    const impostor = await issue(authority, `spiffe://${TD}/ns/default/sa/impostor`, 'ec-p256');
    const client = await issue(authority, CLIENT_ID, 'ec-p256');
    await assert.rejects(handshake(impostor, client, SERVER_ID), /server identity spiffe:\/\/cluster\.local\/ns\/default\/sa\/impostor is not/);
  });

  test('the server refuses a client certificate from another root', async () => {
    const authority = await newAuthority('ec-p256');
    const otherAuthority = await newAuthority('ec-p256');
    const server = await issue(authority, SERVER_ID, 'ec-p256');
    const stranger = await issue(otherAuthority, CLIENT_ID, 'ec-p256');
    // The stranger trusts our root, so only the server's check of the client certificate can stop it.
    const outcome = await handshake(server, { ...stranger, rootsPem: server.rootsPem }, SERVER_ID).catch((error: Error) => error);
    // With TLS 1.3 the client may finish its side before the server's alert arrives: then it simply gets nothing.
    if (outcome instanceof Error) {
      assert.match(outcome.message, /alert|ECONNRESET|socket hang up|unknown ca|certificate/i);
    } else {
      assert.equal(outcome.echoed, '', 'the server must not talk to an untrusted client');
      assert.equal(outcome.serverSawClient, undefined);
    }
  });
});
