/**
 * SECURITY.md, bounds: oversize request headers get a prompt, precise status from the real `meshca ca` over TLS,
 * never a deadline, and the next good request succeeds. Each call has a 10 s deadline; no speed is asserted.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { IstioCaClient } from '../src/wire/protos.js';
import { caClient, opensslKeyAndCsr, startCa, type CallResult, type RunningCa } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { makeTempDir } from './support/process.js';

function call(client: IstioCaClient, csr: string, headers: Record<string, string>): Promise<CallResult> {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(headers)) metadata.set(key, value);
  return new Promise((resolve) => {
    client.CreateCertificate({ csr, validity_duration: '0' }, metadata, { deadline: Date.now() + 10_000 }, (error, response) => {
      if (error) resolve({ ok: false, code: error.code, details: error.details });
      else resolve({ ok: true, chain: response!.cert_chain });
    });
  });
}

function forgedJwt(headerBytes: number): string {
  const header = Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: randomBytes(Math.ceil(headerBytes * 0.75)).toString('base64url') })).toString('base64url');
  return `${header}.${Buffer.from('{"iss":"x"}').toString('base64url')}.c2ln`;
}

describe('oversize request headers fail fast with a precise status', () => {
  const temp = makeTempDir('meshca-oversize-');
  let kube: KubeStandin;
  let ca: RunningCa;
  let client: IstioCaClient;
  let csr: string;
  let goodToken: string;

  before(async () => {
    kube = await startKubeStandin();
    ca = await startCa(path.join(temp.dir, 'state'), ['--kubeconfig', kube.kubeconfigPath]);
    client = caClient(ca.grpcAddress, ca.rootPem);
    csr = opensslKeyAndCsr(temp.dir, 'good').csrPem;
    goodToken = await kube.mintToken({ namespace: 'default', serviceAccount: 'oversize', ttlSeconds: 3600 });
  });

  after(async () => {
    client?.close();
    await ca?.proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  async function expectRefused(headers: Record<string, string>, codes: grpc.status[], details: RegExp): Promise<void> {
    const reviews = kube.state.tokenReviewCount;
    const result = await call(client, csr, headers);
    if (result.ok) assert.fail('expected a refusal, got a certificate');
    assert.notEqual(result.code, grpc.status.DEADLINE_EXCEEDED, result.details);
    assert.ok(codes.includes(result.code), `${grpc.status[result.code]}: ${result.details}`);
    assert.match(result.details, details);
    assert.equal(kube.state.tokenReviewCount, reviews, 'nothing was sent to the API server');
    const next = await call(client, csr, { authorization: `Bearer ${goodToken}` });
    assert.ok(next.ok, `the next good request failed: ${JSON.stringify(next)}`);
    assert.equal(ca.proc.child.exitCode, null);
  }

  test('a forged JWT with a 60 KiB header', async () => {
    // Random base64url barely compresses: either the CA sees it (UNAUTHENTICATED, the 16 KiB limit) or HTTP/2
    // refuses the header field (RST_STREAM COMPRESSION_ERROR, INTERNAL); both are prompt.
    await expectRefused({ authorization: `Bearer ${forgedJwt(60 * 1024)}` }, [grpc.status.UNAUTHENTICATED, grpc.status.INTERNAL], /bearer tokens of at most 16 KiB are accepted|RST_STREAM/);
    await expectRefused({ authorization: `Bearer ${forgedJwt(45 * 1024)}` }, [grpc.status.UNAUTHENTICATED], /^request authenticate failure: the authorization header is \d+ KiB; bearer tokens of at most 16 KiB are accepted$/);
  });

  test('a token one byte over 16 KiB', async () => {
    const value = `Bearer ${'a'.repeat(16 * 1024 + 1 - 'Bearer '.length)}`;
    assert.equal(value.length, 16 * 1024 + 1);
    await expectRefused({ authorization: value }, [grpc.status.UNAUTHENTICATED], /^request authenticate failure: the authorization header is 17 KiB; bearer tokens of at most 16 KiB are accepted$/);
  });

  test('many metadata keys: refused by the CA past 64, by HTTP/2 past 128', async () => {
    const keys = (n: number): Record<string, string> => ({ authorization: `Bearer ${goodToken}`, ...Object.fromEntries(Array.from({ length: n }, (_, i) => [`x-k${i}`, 'v'])) });
    await expectRefused(keys(80), [grpc.status.INVALID_ARGUMENT], /^the request has \d+ metadata entries \(headers\); at most 64 are accepted$/);
    await expectRefused(keys(300), [grpc.status.RESOURCE_EXHAUSTED, grpc.status.INVALID_ARGUMENT], /./);
  });

  test('large metadata in total, and a large clusterid', async () => {
    const big = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`x-pad${i}`, randomBytes(3000).toString('base64url')]));
    await expectRefused({ authorization: `Bearer ${goodToken}`, ...big }, [grpc.status.INVALID_ARGUMENT], /^the request metadata \(headers\) is \d+ KiB; at most 32 KiB are accepted$/);
    await expectRefused({ authorization: `Bearer ${goodToken}`, clusterid: 'c'.repeat(4096) }, [grpc.status.INVALID_ARGUMENT], /^the clusterid header is 4 KiB; cluster IDs of at most 1024 bytes are accepted$/);
  });

  test('a status message quoting hostile input stays short', async () => {
    // A 60 KiB PEM label is quoted in the CSR error; the message is cut so that the grpc-message trailer stays small.
    const label = 'X'.repeat(60 * 1024);
    const result = await call(client, `-----BEGIN ${label}-----\nAAAA\n-----END ${label}-----\n`.slice(0, 64 * 1024 - 1), { authorization: `Bearer ${goodToken}` });
    if (result.ok) assert.fail('expected a refusal');
    assert.equal(grpc.status[result.code], 'INVALID_ARGUMENT', result.details);
    assert.ok(result.details.length <= 4096, `details of ${result.details.length} characters`);
  });
});
