/**
 * The SDS client's key check (what Envoy does before it applies a secret: the private key must be the leaf's), over
 * a real gRPC stream on a Unix socket from an SDS server written here. The client remembers the public key of each
 * private key it has read (the benchmark's load client gets each key on many streams, with several leaves); a
 * remembered key with another leaf, or another key with a leaf seen before, must still be refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { connectSds, SecretWatch, workloadTokenMetadata, type SecretUpdate } from '../src/agent/sds-client.js';
import { certificateToPem, createCaCertificate, generateKeyPairFor } from '../src/pki/index.js';
import { encodeSecretAny, SECRET_TYPE_URL, sdsService, type DiscoveryRequest, type DiscoveryResponse, type Init, type SdsHandlers } from '../src/wire/protos.js';
import { eventually } from './support/eventually.js';

const dir = mkdtempSync(path.join(tmpdir(), 'meshca-sds-keys-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function keyAndLeaf(name: string): { keyPem: string; leafPem: string } {
  const { privateKey } = generateKeyPairFor('ec-p256');
  const der = createCaCertificate({ subject: { organization: name }, subjectKey: privateKey, notAfter: new Date(Date.now() + 3600_000) });
  return { keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), leafPem: certificateToPem(der) };
}

test('a key that is not its leaf\'s is refused (NACK) even next to pairs that matched before', async () => {
  const a = keyAndLeaf('a');
  const b = keyAndLeaf('b');
  // What the server sends, one response after each answer of the client; expected: applied, or the NACK's reason.
  const script: { keyPem: string; leafPem: string; expect: 'update' | 'nack' | 'ack' }[] = [
    { keyPem: a.keyPem, leafPem: a.leafPem, expect: 'update' },
    { keyPem: b.keyPem, leafPem: a.leafPem, expect: 'nack' },
    { keyPem: a.keyPem, leafPem: a.leafPem, expect: 'ack' }, // the same content again: accepted, nothing new to apply
    { keyPem: a.keyPem, leafPem: b.leafPem, expect: 'nack' },
    { keyPem: b.keyPem, leafPem: b.leafPem, expect: 'update' },
    { keyPem: b.keyPem, leafPem: a.leafPem, expect: 'nack' },
  ];
  const answers: { nonce: string; nacked: boolean }[] = [];
  const server = new grpc.Server();
  const handlers: Partial<SdsHandlers> = {
    StreamSecrets: (call: grpc.ServerDuplexStream<DiscoveryRequest, Init<DiscoveryResponse>>) => {
      let sent = 0;
      const sendNext = (): void => {
        const step = script[sent];
        if (!step) return;
        sent++;
        const secret = encodeSecretAny({
          name: 'default',
          tls_certificate: { certificate_chain: { inline_string: step.leafPem }, private_key: { inline_string: step.keyPem } },
        });
        call.write({ version_info: `v${sent}`, resources: [secret], type_url: SECRET_TYPE_URL, nonce: `n${sent}` });
      };
      call.on('data', (request: DiscoveryRequest) => {
        if (request.response_nonce) answers.push({ nonce: request.response_nonce, nacked: request.error_detail != null });
        sendNext();
      });
    },
  };
  server.addService(sdsService, handlers as SdsHandlers);
  const socket = path.join(dir, 'sds.sock');
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve())));
  const updates: SecretUpdate[] = [];
  const nacks: string[] = [];
  const client = connectSds(socket);
  const watch = new SecretWatch(client, { name: 'default', metadata: () => workloadTokenMetadata(undefined), reconnect: false }, {
    onUpdate: (update) => updates.push(update),
    onNack: (message) => nacks.push(message),
  });
  try {
    await eventually(() => (answers.length === script.length ? true : undefined), 10_000, 'an answer to every response');
    assert.deepEqual(
      answers.map((answer) => answer.nacked),
      script.map((step) => step.expect === 'nack'),
      'NACKed exactly the mismatched pairs',
    );
    assert.ok(nacks.every((message) => /does not match the certificate/.test(message)), nacks.join('; '));
    assert.deepEqual(
      updates.map((update) => update.versionInfo),
      ['v1', 'v5'],
      'applied the two matching pairs, once each',
    );
  } finally {
    watch.close();
    client.close();
    server.forceShutdown();
  }
});
