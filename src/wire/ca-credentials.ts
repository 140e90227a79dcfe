/**
 * TLS credentials for every client of the CA's gRPC API (the node agent, `meshca request`): the server must chain
 * to the given roots and name the dialled host (or the configured server name) in a DNS or IP subjectAltName; its
 * subject CN is never accepted (see pki/server-identity.ts). The check runs during the handshake, so a server that
 * fails it never receives a call, and so never the caller's bearer token.
 */
import * as grpc from '@grpc/grpc-js';
import { checkServerIdentityBySan } from '../pki/server-identity.js';

export function caChannelCredentials(rootCertPem: Buffer): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(rootCertPem, null, null, {
    checkServerIdentity: (host, cert) => checkServerIdentityBySan(host, cert.raw),
  });
}
