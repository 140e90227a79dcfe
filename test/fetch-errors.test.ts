/**
 * `meshca fetch` says what went wrong in one line: no agent on the socket, or an agent that does not answer in
 * time (what was asked, with which token, the last update it had to reject). The "agent" that never sends a usable
 * secret is a real SDS server on a Unix socket in this process: it answers the first request with a secret whose
 * certificate chain holds no certificate (which fetch must reject), then stays silent.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { encodeSecretAny, SECRET_TYPE_URL, sdsService, type DiscoveryRequest, type DiscoveryResponse, type Init } from '../src/wire/protos.js';
import { makeTempDir, runMeshca } from './support/process.js';

describe('meshca fetch errors', () => {
  const temp = makeTempDir('meshca-fetch-errors-');
  const socket = path.join(temp.dir, 'sds.sock');
  const server = new grpc.Server();
  let requests = 0;

  before(async () => {
    server.addService(sdsService, {
      StreamSecrets: (call: grpc.ServerDuplexStream<DiscoveryRequest, Init<DiscoveryResponse>>) => {
        call.on('data', (request: DiscoveryRequest) => {
          requests++;
          if (request.response_nonce !== '') return; // The NACK: no answer to it, ever.
          const broken = encodeSecretAny({
            name: 'default',
            tls_certificate: { certificate_chain: { inline_string: 'no certificate here' }, private_key: { inline_string: 'none' } },
          });
          call.write({ version_info: 'v1', nonce: 'n1', type_url: SECRET_TYPE_URL, resources: [broken] });
        });
        call.on('error', () => undefined);
      },
      DeltaSecrets: (call: grpc.ServerDuplexStream<unknown, unknown>) => call.end(),
      FetchSecrets: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED }),
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve())),
    );
  });

  after(() => {
    server.forceShutdown();
    temp.cleanup();
  });

  it('a missing socket, and an agent that sends nothing usable in time, are each one line with the likely fix', async () => {
    const tokenFile = path.join(temp.dir, 'token');
    writeFileSync(tokenFile, 'header.payload.signature');
    const missing = path.join(temp.dir, 'no-agent.sock');
    const [absent, silent] = await Promise.all([
      runMeshca(['fetch', '--sds-socket', missing, '--timeout', '5s']),
      runMeshca(['fetch', '--sds-socket', socket, '--token-file', tokenFile, '--timeout', '1s']),
    ]);
    assert.equal(absent.code, 1);
    assert.equal(absent.stderr, `meshca: no agent listens on the SDS socket ${missing} (it does not exist): start \`meshca agent\` or point --sds-socket at its socket\n`);
    assert.equal(silent.code, 1);
    const lines = silent.stderr.trimEnd().split('\n');
    assert.equal(lines[0], 'default: rejected an update: Failed to load certificate chain: no certificate');
    assert.equal(
      lines[1],
      `meshca: the agent at ${socket} sent no default within 1s (asked with the token in ${tokenFile}); the last update was rejected: default: Failed to load certificate chain: no certificate: it is likely still waiting for the CA or for proof of the token (see the agent's log, e.g. 'CA request failed'); retry with a longer --timeout`,
    );
    assert.equal(lines.length, 2);
    assert.ok(requests >= 2, 'the request and its NACK reached the server');
  });
});
