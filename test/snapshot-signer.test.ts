/**
 * What a `meshca ca --workers` worker signs with: a snapshot of the primary's signer, carried over the IPC
 * channel's structured clone. It must sign exactly as the primary would, refuse a snapshot whose key does not
 * belong to its certificate, keep working when the material expired while running (the authority, not the
 * worker, refuses to sign then), and forward when the primary signs remotely.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { deserialize, serialize } from 'node:v8';
import { buildCaMaterial, CaError, LocalSigner, type SignedChain, type WorkloadSignRequest } from '../src/ca/index.js';
import { SnapshotSigner, takeSignerSnapshot, type SignerSnapshot } from '../src/ca/snapshot-signer.js';
import { createCaCertificate, generateKeyPairFor, parseCertificate, parseCsr } from '../src/pki/index.js';
import { opensslKeyAndCsr } from './ca-helpers.js';
import { opensslVerifyResponseChain } from './support/openssl.js';

const IDENTITY = 'spiffe://cluster.local/ns/default/sa/snapshot';
const HOUR = 3600_000;

function localSigner(options: { notBefore?: Date; notAfter?: Date } = {}): LocalSigner {
  const notAfter = options.notAfter ?? new Date(Date.now() + 24 * HOUR);
  const rootKey = generateKeyPairFor('ec-p256').privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: 'snapshot root' }, subjectKey: rootKey, notAfter, ...(options.notBefore ? { notBefore: options.notBefore } : {}) }));
  const signingKey = generateKeyPairFor('ec-p256').privateKey;
  const signing = parseCertificate(
    createCaCertificate({
      subject: { organization: 'snapshot signing' },
      subjectKey: signingKey,
      issuer: { certificate: root, privateKey: rootKey },
      notAfter,
      ...(options.notBefore ? { notBefore: options.notBefore } : {}),
    }),
  );
  return new LocalSigner('cacerts', buildCaMaterial({ signingCert: signing, privateKey: signingKey, chain: [root], roots: [root], now: options.notBefore ?? new Date() }));
}

/** What a worker receives: the snapshot after the IPC channel's structured clone (Buffers arrive as Uint8Arrays). */
function overTheChannel(snapshot: SignerSnapshot): SignerSnapshot {
  return deserialize(serialize(snapshot)) as SignerSnapshot;
}

const noPrimary = (): Promise<SignedChain> => Promise.reject(new Error('no primary in this test'));

describe('SnapshotSigner', () => {
  const temp = mkdtempSync(path.join(tmpdir(), 'meshca-snapshot-'));
  const csr = opensslKeyAndCsr(temp, 'workload');
  const request: WorkloadSignRequest = { csrPem: csr.csrPem, spkiDer: parseCsr(csr.csrPem).spkiDer, uris: [IDENTITY], ttlSeconds: 600 };
  after(() => rmSync(temp, { recursive: true, force: true }));

  test('signs in the worker what the primary would: same issuer, same bundle, verified by openssl', async () => {
    const primary = localSigner();
    const worker = new SnapshotSigner(overTheChannel(takeSignerSnapshot(primary)), noPrimary);
    assert.ok(worker.inProcessMaterial(), 'a snapshot of a local signer carries the material');
    const signed = await worker.sign(request);
    const verified = opensslVerifyResponseChain(signed.chain);
    assert.equal(verified.ok, true, `openssl verify: ${verified.output}`);
    assert.equal(worker.trustBundlePem(), primary.trustBundlePem(), 'the same trust bundle');
    assert.deepEqual(worker.status(), primary.status(), 'the same status for /debug/ca');
    assert.equal(signed.chain[1], (await primary.sign(request)).chain[1], 'the same signing certificate in the chain');
  });

  test('a snapshot whose key is not the certificate\'s is refused; a bad update leaves the old material signing', async () => {
    const primary = localSigner();
    const other = localSigner();
    const damaged = overTheChannel(takeSignerSnapshot(primary));
    damaged.material!.privateKeyPkcs8Der = overTheChannel(takeSignerSnapshot(other)).material!.privateKeyPkcs8Der;
    assert.throws(() => new SnapshotSigner(damaged, noPrimary), /does not match|does not belong|key/i, 'a mismatched key never signs');

    const worker = new SnapshotSigner(overTheChannel(takeSignerSnapshot(primary)), noPrimary);
    let changes = 0;
    worker.onChange(() => changes++);
    assert.throws(() => worker.replace(damaged), /key/i);
    assert.equal(changes, 0, 'listeners hear nothing of a refused update');
    assert.equal(opensslVerifyResponseChain((await worker.sign(request)).chain).ok, true, 'still signing with the previous material');
    worker.replace(overTheChannel(takeSignerSnapshot(other)));
    assert.equal(changes, 1, 'a good update is announced');
    assert.match((await worker.sign(request)).chain[1]!, /BEGIN CERTIFICATE/);
    assert.equal((await worker.sign(request)).chain[1], (await other.sign(request)).chain[1], 'signing with the new material');
  });

  test('material that expired while the CA ran still reaches a worker (the authority refuses to sign with it, not the worker)', () => {
    const longAgo = new Date(Date.now() - 48 * HOUR);
    const expired = localSigner({ notBefore: longAgo, notAfter: new Date(Date.now() - 24 * HOUR) });
    const worker = new SnapshotSigner(overTheChannel(takeSignerSnapshot(expired)), noPrimary);
    assert.ok(worker.maxNotAfter()! < new Date(), 'the worker reports the expired NotAfter, so the authority says CA_NOT_READY');
  });

  test('without material (Vault role mode) every request goes to the primary, and its CaError codes come back intact', async () => {
    const primary = localSigner();
    const snapshot = overTheChannel(takeSignerSnapshot(primary));
    delete snapshot.material;
    const forwarded: WorkloadSignRequest[] = [];
    const worker = new SnapshotSigner(snapshot, async (r) => {
      forwarded.push(r);
      return primary.sign(r);
    });
    assert.equal(worker.inProcessMaterial(), null);
    const signed = await worker.sign(request);
    assert.equal(forwarded.length, 1, 'the request went to the primary');
    assert.equal(opensslVerifyResponseChain(signed.chain).ok, true);

    const failing = new SnapshotSigner(snapshot, () => Promise.reject(new CaError('UPSTREAM_UNAVAILABLE', 'Vault is unavailable')));
    await assert.rejects(async () => failing.sign(request), (e: unknown) => e instanceof CaError && e.code === 'UPSTREAM_UNAVAILABLE', 'a CaError keeps its code');
    const broken = new SnapshotSigner(snapshot, () => Promise.reject(new Error('the channel between the CA\'s processes closed')));
    await assert.rejects(
      async () => broken.sign(request),
      (e: unknown) => e instanceof CaError && e.code === 'CERT_GEN_ERROR' && /primary process could not sign/.test(e.message),
      'a lost primary is an internal error that says so',
    );
  });
});
