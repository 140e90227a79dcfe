/**
 * What the agent sends to the CA, seen by a stand-in CA on real gRPC over TLS: the workload's token as
 * `authorization: Bearer`, `clusterid` from ISTIO_META_CLUSTER_ID, CA_HEADER_* headers, Struct metadata
 * `CertSigner` from ISTIO_META_CERT_SIGNER, `validity_duration` from SECRET_TTL, TLS verified against
 * --ca-root-cert with the server name ISTIOD_SAN; and retries with backoff on UNAVAILABLE.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { readAgentConfig, startAgent, type RunningAgent } from '../src/agent/index.js';
import { connectSds } from '../src/agent/sds-client.js';
import {
  certificateToPem,
  createCaCertificate,
  exportPrivateKeyPem,
  LeafIssuer,
  parseCertificate,
  parseCsr,
  verifyCsr,
  generateKeyPairFor,
} from '../src/pki/index.js';
import { istioCaService, structToObject, type IstioCertificateRequest, type SdsClient } from '../src/wire/protos.js';
import { decodeSecret, memoryLogger, metricValue, RawSotwStream, tempDir, wireToken } from './agent-helpers.js';

const SERVER_NAME = 'ca.meshca-test.svc';

interface SeenCall {
  request: IstioCertificateRequest;
  metadata: Record<string, string>;
}

describe('the agent as a CA client', () => {
  const { dir, cleanup } = tempDir('meshca-ca-client-');
  const seen: SeenCall[] = [];
  let failNext = 0;
  let server: grpc.Server;
  let agent: RunningAgent;
  let client: SdsClient;

  before(async () => {
    const { privateKey: rootKey } = generateKeyPairFor('ec-p256');
    const root = parseCertificate(createCaCertificate({ subject: { commonName: 'stand-in root' }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
    const issuer = new LeafIssuer({ certificate: root, privateKey: rootKey });
    const rootPem = certificateToPem(root.der);
    const { privateKey: serverKey, publicKey: serverPublic } = generateKeyPairFor('ec-p256');
    const serverCert = issuer.issue({ spkiDer: serverPublic.export({ type: 'spki', format: 'der' }), uris: [], dnsNames: [SERVER_NAME], ttlSeconds: 3600 });

    server = new grpc.Server();
    server.addService(istioCaService, {
      CreateCertificate: (call: grpc.ServerUnaryCall<IstioCertificateRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const metadata: Record<string, string> = {};
        for (const [key, value] of Object.entries(call.metadata.getMap())) metadata[key] = String(value);
        seen.push({ request: call.request, metadata });
        if (failNext > 0) {
          failNext--;
          callback({ code: grpc.status.UNAVAILABLE, details: 'stand-in CA is warming up' });
          return;
        }
        const csr = parseCsr(call.request.csr);
        verifyCsr(csr);
        const leaf = issuer.issue({ spkiDer: csr.spkiDer, uris: ['spiffe://cluster.local/ns/shop/sa/client-test'], ttlSeconds: Number(call.request.validity_duration) });
        callback(null, { cert_chain: [certificateToPem(leaf.der), rootPem] });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        '127.0.0.1:0',
        grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(exportPrivateKeyPem(serverKey)), cert_chain: Buffer.from(certificateToPem(serverCert.der)) }]),
        (error, bound) => (error ? reject(error) : resolve(bound)),
      ),
    );
    const rootFile = path.join(dir, 'root-cert.pem');
    writeFileSync(rootFile, rootPem);
    const config = readAgentConfig(
      { sdsSocket: path.join(dir, 'socket'), statusAddr: '127.0.0.1:0', caAddr: `127.0.0.1:${port}`, caRootCert: rootFile },
      {
        ISTIOD_SAN: SERVER_NAME,
        SECRET_TTL: '1h',
        ISTIO_META_CERT_SIGNER: 'istio-system/workloads',
        ISTIO_META_CLUSTER_ID: 'Kubernetes',
        CA_HEADER_X_TENANT: 'blue',
        ECC_SIGNATURE_ALGORITHM: 'ECDSA',
      },
    );
    agent = await startAgent(config, memoryLogger().log);
    client = connectSds(agent.socketPath);
  });

  after(async () => {
    client?.close();
    await agent?.close();
    server?.forceShutdown();
    cleanup();
  });

  it('sends the token, cluster id, extra headers, CertSigner and SECRET_TTL, over TLS checked against ISTIOD_SAN', async () => {
    const stream = new RawSotwStream(client, 'workload-token-1');
    stream.subscribe(['default']);
    const secret = decodeSecret((await stream.next()).resources[0]!);
    stream.close();
    assert.equal(secret.spiffeId, 'spiffe://cluster.local/ns/shop/sa/client-test');
    const call = seen.at(-1)!;
    assert.equal(call.metadata.authorization, `Bearer ${wireToken('workload-token-1')}`);
    assert.equal(call.metadata.clusterid, 'Kubernetes');
    assert.equal(call.metadata['x_tenant'], 'blue');
    assert.equal(call.request.validity_duration, '3600');
    assert.deepEqual(structToObject(call.request.metadata), { CertSigner: 'istio-system/workloads' });
    assert.match(call.request.csr, /BEGIN CERTIFICATE REQUEST/);
    const lifetime = secret.leaf!.notAfter.getTime() - Date.now();
    assert.ok(lifetime > 3500_000 && lifetime <= 3600_000);
  });

  it('retries UNAVAILABLE with backoff and counts the retries', async () => {
    failNext = 2;
    const before = seen.length;
    const stream = new RawSotwStream(client, 'workload-token-2');
    stream.subscribe(['default']);
    assert.equal(decodeSecret((await stream.next()).resources[0]!).spiffeId, 'spiffe://cluster.local/ns/shop/sa/client-test');
    stream.close();
    assert.equal(seen.length - before, 3, 'two failures, then success');
    const metrics = await (await fetch(`${agent.statusUrl}/metrics`)).text();
    assert.equal(metricValue(metrics, 'istio_agent_num_outgoing_retries', { request_type: 'csr' }), 2);
    assert.equal(metricValue(metrics, 'istio_agent_num_failed_outgoing_requests', { request_type: 'csr', error_code: 'UNAVAILABLE' }), 2);
    assert.ok(metricValue(metrics, 'istio_agent_outgoing_latency', { request_type: 'csr' }) > 0);
  });
});
