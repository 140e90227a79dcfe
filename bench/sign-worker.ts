/** PROTOTYPE (bench only): one signing thread of WorkerPoolSigner. Builds and signs leaves with the latest material. */
import { parentPort } from 'node:worker_threads';
import { LeafIssuer } from '../src/pki/issue.js';
import { certificateToPem } from '../src/pki/pem.js';
import { parseCertificate } from '../src/pki/x509.js';
import type { SignWorkerMaterial, SignWorkerReply, SignWorkerRequest } from './worker-pool-signer.js';

const port = parentPort!;
let issuer: LeafIssuer | undefined;

port.on('message', (message: SignWorkerMaterial | SignWorkerRequest) => {
  if (message.type === 'material') {
    issuer = new LeafIssuer({ certificate: parseCertificate(Buffer.from(message.signingCertDer)), privateKey: message.privateKey });
    return;
  }
  let reply: SignWorkerReply;
  try {
    if (!issuer) throw new Error('no signing material yet');
    const leaf = issuer.issue({
      spkiDer: Buffer.from(message.spkiDer),
      uris: message.uris,
      ...(message.dnsNames ? { dnsNames: message.dnsNames } : {}),
      ttlSeconds: message.ttlSeconds,
    });
    reply = { type: 'signed', id: message.id, leafPem: certificateToPem(leaf.der), leafDer: leaf.der, serialHex: leaf.serialHex, notAfterMs: leaf.notAfter.getTime() };
  } catch (error) {
    reply = { type: 'failed', id: message.id, message: (error as Error).message };
  }
  port.postMessage(reply);
});
