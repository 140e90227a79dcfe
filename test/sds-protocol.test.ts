/**
 * The xDS rules of the agent's SDS server, each checked on its own over a real Unix socket with grpc-js, the
 * client played step by step like Envoy, against an in-process agent (agent-e2e.test.ts runs the same SotW rules
 * against the real binaries).
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { certificateToPem, createCaCertificate, generateKeyPairFor } from '../src/pki/index.js';
import {
  decodeSecret,
  defineSotwRuleTests,
  eventually,
  metricsText,
  metricValue,
  namesIn,
  RawDeltaStream,
  RawSotwStream,
  SECRET_TYPE_URL,
  startTestAgent,
  tokenMetadata,
  type TestAgent,
} from './agent-helpers.js';

const TOKEN = 'token-frontend';

function selfSignedPem(name: string): string {
  const { privateKey } = generateKeyPairFor('ec-p256');
  return certificateToPem(createCaCertificate({ subject: { commonName: name }, subjectKey: privateKey, notAfter: new Date(Date.now() + 86400_000) }));
}

describe('SDS state-of-the-world rules (in-process agent)', () => {
  let t: TestAgent;
  let extraName: string;

  before(async () => {
    t = await startTestAgent({ flags: { fileResourceDirs: tmpdir() } });
    t.ca.addWorkload(TOKEN, 'shop', 'frontend');
    const extraRoot = path.join(t.dir, 'extra-root.pem');
    writeFileSync(extraRoot, selfSignedPem('extra'));
    extraName = `file-root:${extraRoot}`;
  });
  after(async () => t.close());

  defineSotwRuleTests(() => ({
    client: t.client,
    token: TOKEN,
    spiffeId: 'spiffe://cluster.local/ns/shop/sa/frontend',
    extraName,
    nacks: async () => metricValue(await metricsText(t.agent), 'meshca_sds_nacks_total', { api: 'sotw' }),
    records: () => t.records,
  }));

  it('counts connected streams', async () => {
    const stream = new RawSotwStream(t.client, TOKEN);
    stream.subscribe(['default']);
    await stream.next();
    assert.ok(metricValue(await metricsText(t.agent), 'meshca_sds_connected_streams', { api: 'sotw' }) >= 1);
    stream.close();
    await eventually(async () => t.agent.sds.openStreams === 0, 'streams to close');
  });
});

describe('FetchSecrets and DeltaSecrets', () => {
  let t: TestAgent;
  before(async () => {
    t = await startTestAgent();
    t.ca.addWorkload(TOKEN, 'shop', 'frontend');
  });
  after(async () => t.close());

  it('FetchSecrets returns the named secrets, and UNAUTHENTICATED without a token', async () => {
    const fetchSecrets = (token: string | undefined) =>
      new Promise<{ error: grpc.ServiceError | null; names: string[] }>((resolve) => {
        t.client.FetchSecrets({ type_url: SECRET_TYPE_URL, resource_names: ['default', 'ROOTCA'] }, tokenMetadata(token), (error, response) =>
          resolve({ error, names: response ? namesIn(response) : [] }),
        );
      });
    const ok = await fetchSecrets(TOKEN);
    assert.equal(ok.error, null);
    assert.deepEqual(ok.names, ['default', 'ROOTCA']);
    const refused = await fetchSecrets(undefined);
    assert.equal(refused.error?.code, grpc.status.UNAUTHENTICATED);
    assert.match(refused.error!.details, /istio_sds_credentials_header-bin/);
  });

  it('DeltaSecrets sends subscribed names as Resources, stays quiet on ACK and reports unknown names as removed', async () => {
    const stream = new RawDeltaStream(t.client, TOKEN);
    stream.send({ node: { id: 'test' }, resource_names_subscribe: ['default'] });
    const first = await stream.next();
    assert.notEqual(first.nonce, '');
    assert.deepEqual(first.resources.map((r) => r.name), ['default']);
    assert.notEqual(first.resources[0]!.version, '');
    assert.equal(decodeSecret(first.resources[0]!.resource!).spiffeId, 'spiffe://cluster.local/ns/shop/sa/frontend');
    stream.send({ response_nonce: first.nonce }); // ACK
    stream.send({ resource_names_subscribe: ['nope'] }); // sentinel
    const second = await stream.next();
    assert.deepEqual(second.resources, []);
    assert.deepEqual(second.removed_resources, ['nope']);
    stream.close();
  });

  it('DeltaSecrets does not resend what the client lists in initial_resource_versions', async () => {
    const first = new RawDeltaStream(t.client, TOKEN);
    first.send({ resource_names_subscribe: ['default'] });
    const got = await first.next();
    first.close();
    const reconnect = new RawDeltaStream(t.client, TOKEN);
    reconnect.send({
      resource_names_subscribe: ['default'],
      initial_resource_versions: { default: got.resources[0]!.version },
    });
    reconnect.send({ resource_names_subscribe: ['ROOTCA'] }); // sentinel
    const next = await reconnect.next();
    assert.deepEqual(next.resources.map((r) => r.name), ['ROOTCA']);
    reconnect.close();
  });

  it('DeltaSecrets NACK is counted and the rejected version is not resent', async () => {
    const stream = new RawDeltaStream(t.client, TOKEN);
    stream.send({ resource_names_subscribe: ['default'] });
    const first = await stream.next();
    stream.send({ response_nonce: first.nonce, error_detail: { code: grpc.status.INTERNAL, message: 'bad key (test)' } });
    stream.send({ resource_names_subscribe: ['ROOTCA'] });
    const next = await stream.next();
    assert.deepEqual(next.resources.map((r) => r.name), ['ROOTCA']);
    assert.equal(metricValue(await metricsText(t.agent), 'meshca_sds_nacks_total', { api: 'delta' }), 1);
    stream.close();
  });
});
