/**
 * Long fuzz run against the real `meshca ca` over gRPC/TLS: random and mutated CSRs (asking for other
 * identities, DNS names, CA:true), random TTLs and metadata (including ImpersonatedIdentity), valid and mutated
 * bearer tokens. Whatever is sent, the CA answers with a certificate for exactly the identity the token proves
 * and the CSR's key, chaining to the root it publishes, or with a client-error status; it never answers INTERNAL
 * or UNKNOWN and never dies.
 */
import assert from 'node:assert/strict';
import { X509Certificate, type KeyObject } from 'node:crypto';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { createCsr, encodePem, generateKeyPairFor, parseCertificate, parseCsr } from '../../src/pki/index.js';
import type { IstioCaClient } from '../../src/wire/protos.js';
import { caClient, createCertificate, startCa, type RunningCa } from '../ca-helpers.js';
import { startKubeStandin, type KubeStandin } from '../standins/kube.js';
import { makeTempDir } from '../support/process.js';
import { FUZZ_SECONDS, longBudget } from './budget.js';
import { mutate } from './properties.js';

/** `arbitrary` in one case out of four, undefined otherwise: most requests stay close to valid ones. */
function sometimes<T>(arbitrary: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> {
  return fc.oneof({ arbitrary: fc.constant(undefined), weight: 3 }, { arbitrary, weight: 1 });
}

const CLIENT_ERRORS = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.RESOURCE_EXHAUSTED]);

describe('fuzzing meshca ca over gRPC', () => {
  const temp = makeTempDir('meshca-fuzz-grpc-');
  let kube: KubeStandin;
  let ca: RunningCa;
  let client: IstioCaClient;
  const callers: { token: string; identity: string }[] = [];
  let keys: KeyObject[];

  before(async () => {
    kube = await startKubeStandin();
    ca = await startCa(path.join(temp.dir, 'state'), ['--kubeconfig', kube.kubeconfigPath, '--max-csr-per-identity-per-minute', '0']);
    client = caClient(ca.grpcAddress, ca.rootPem);
    for (const serviceAccount of ['fuzz-a', 'fuzz-b', 'fuzz-c']) {
      callers.push({ token: await kube.mintToken({ namespace: 'default', serviceAccount, ttlSeconds: 7200 }), identity: `spiffe://cluster.local/ns/default/sa/${serviceAccount}` });
    }
    keys = [generateKeyPairFor('ec-p256').privateKey, generateKeyPairFor('rsa-2048').privateKey];
  });

  after(async () => {
    client?.close();
    await ca?.proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  test(`random and mutated requests for ${FUZZ_SECONDS}s: only the proven identity, only the CSR key, never INTERNAL`, { timeout: longBudget.testTimeoutMs }, async (t) => {
    const root = new X509Certificate(ca.rootPem);
    const mutation = fc.array(fc.tuple(fc.constantFrom('flip', 'set', 'insert', 'delete', 'truncate', 'length'), fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 4 })), {
      minLength: 1,
      maxLength: 3,
    }) as fc.Arbitrary<Parameters<typeof mutate>[1]>;
    const san = fc.oneof(
      fc.constantFrom('spiffe://cluster.local/ns/kube-system/sa/admin', 'spiffe://cluster.local/ns/default/sa/fuzz-b', 'spiffe://evil.example/ns/default/sa/fuzz-a'),
      fc.string({ maxLength: 30 }),
    );
    let requests = 0;
    let issued = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.nat(callers.length - 1),
        sometimes(fc.array(fc.tuple(fc.nat(), fc.constantFrom('A', 'b', '.', '-', '_')), { minLength: 1, maxLength: 2 })),
        fc.nat(keys.length - 1),
        fc.array(san, { maxLength: 3 }),
        fc.boolean(),
        sometimes(mutation),
        fc.oneof({ arbitrary: fc.constantFrom(0, -1, 3600, 86400, 90 * 86400, 91 * 86400), weight: 4 }, { arbitrary: fc.integer(), weight: 1 }),
        sometimes(fc.dictionary(fc.constantFrom('ImpersonatedIdentity', 'CertSigner', 'WorkloadName', 'x'), fc.oneof(fc.string({ maxLength: 40 }), san))),
        async (callerIndex, tokenEdits, keyIndex, uris, requestCa, csrMutations, ttl, metadata) => {
          const caller = callers[callerIndex]!;
          let token = caller.token;
          for (const [position, char] of tokenEdits ?? []) {
            const at = position % token.length;
            token = token.slice(0, at) + char + token.slice(at + 1);
          }
          let csr: string;
          try {
            csr = createCsr({ privateKey: keys[keyIndex]!, uris, requestCa });
          } catch {
            return;
          }
          if (csrMutations) csr = encodePem('CERTIFICATE REQUEST', mutate(Buffer.from(csr.replace(/-----[^-]+-----|\s/g, ''), 'base64'), csrMutations));
          requests++;
          const result = await createCertificate(client, { csr, token, validitySeconds: ttl, ...(metadata ? { metadata } : {}) });
          if (!result.ok) {
            assert.ok(CLIENT_ERRORS.has(result.code), `${grpc.status[result.code]}: ${result.details}`);
            return;
          }
          issued++;
          const leaf = parseCertificate(Buffer.from(result.chain[0]!.replace(/-----[^-]+-----|\s/g, ''), 'base64'));
          // An edited token that still authenticates can only be the same token (e.g. an edit in padding bits).
          assert.deepEqual(leaf.sans.uris, [caller.identity]);
          assert.deepEqual(leaf.sans.dnsNames, []);
          assert.ok(leaf.spkiDer.equals(parseCsr(createCsr({ privateKey: keys[keyIndex]! })).spkiDer), 'the leaf certifies the requester key');
          assert.ok(new X509Certificate(result.chain[0]!).verify(root.publicKey), 'the leaf chains to the published root');
          assert.equal(result.chain[result.chain.length - 1], ca.rootPem);
        },
      ),
      { numRuns: longBudget.numRuns, interruptAfterTimeLimit: longBudget.timeLimitMs! },
    );
    t.diagnostic(`${requests} requests, ${issued} certificates issued`);
    assert.equal(ca.proc.child.exitCode, null, 'the CA is still running');
    assert.ok(issued > 0 && issued < requests, 'both outcomes were exercised');
  });
});
