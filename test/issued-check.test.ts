/**
 * The final issued-chain check when it is told the signer (`signer` in the expectation): RSA leaves of a signer
 * declaring the issuer's own key as its in-process material are verified for the first leaf of each issuer
 * certificate only, everything else on every leaf. These tests pin what must still be refused on that path.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildCaMaterial, LocalSigner, type SignedChain, type WorkloadSignRequest } from '../src/ca/index.js';
import { SnapshotSigner, takeSignerSnapshot } from '../src/ca/snapshot-signer.js';
import { CaError } from '../src/ca/errors.js';
import { IssuedChainChecker, type IssuedChainExpectation } from '../src/ca/issued-check.js';
import { createCaCertificate, createCsr, encodePem, generateKeyPairFor, parseCertificate, parseCsr, type KeySpec } from '../src/pki/index.js';

const IDENTITY = 'spiffe://cluster.local/ns/default/sa/checked';

/** A CA signing with `spec`; with `intermediate`, leaves are signed by an intermediate under the root. */
function signer(spec: KeySpec, name: string, intermediate = false): LocalSigner {
  const notAfter = new Date(Date.now() + 86400_000);
  const rootKey = generateKeyPairFor(spec).privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: `${name} root` }, subjectKey: rootKey, notAfter }));
  if (!intermediate) return new LocalSigner('self-signed', buildCaMaterial({ signingCert: root, privateKey: rootKey, chain: [], roots: [root] }));
  const signingKey = generateKeyPairFor(spec).privateKey;
  const signing = parseCertificate(
    createCaCertificate({ subject: { organization: `${name} signing` }, subjectKey: signingKey, issuer: { certificate: root, privateKey: rootKey }, notAfter }),
  );
  return new LocalSigner('self-signed', buildCaMaterial({ signingCert: signing, privateKey: signingKey, chain: [], roots: [root] }));
}

const spkiDer = parseCsr(createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey })).spkiDer;
const request: WorkloadSignRequest = { csrPem: '', spkiDer, uris: [IDENTITY], ttlSeconds: 600 };

/** `signerField` null: no signer in the expectation. */
function expectation(local: LocalSigner, signerField: IssuedChainExpectation['signer'] | null = local): IssuedChainExpectation {
  return { identities: [IDENTITY], spkiDer, advertisedBundles: [local.trustBundlePem()], ...(signerField ? { signer: signerField } : {}) };
}

/** The same chain with the leaf's signature bytes changed (its last byte flipped). */
function withBadSignature(signed: SignedChain): SignedChain {
  const leafDer = Buffer.from(signed.leafDer);
  leafDer[leafDer.length - 1]! ^= 0x01;
  return { ...signed, leafDer, chain: [encodePem('CERTIFICATE', leafDer), ...signed.chain.slice(1)] };
}

/** A leaf of `impostor` presented with `real`'s chain and bundle. */
async function forged(impostor: LocalSigner, real: LocalSigner): Promise<SignedChain> {
  const leaf = await impostor.sign(request);
  return { ...leaf, chain: [leaf.chain[0]!, ...(await real.sign(request)).chain.slice(1)] };
}

/** `run` signs (asynchronously) and then checks: the check must throw CERT_GEN_ERROR matching `reason`. */
async function assertRefused(run: () => Promise<void>, reason: RegExp, message: string): Promise<void> {
  await assert.rejects(run, (error: unknown) => error instanceof CaError && error.code === 'CERT_GEN_ERROR' && reason.test(error.message), message);
}

describe('issued-chain check with the signer given', () => {
  const rsa = signer('rsa-2048', 'meshca');
  const rsaIntermediate = signer('rsa-2048', 'meshca', true);
  // Same names as the real CAs, other keys: only a signature verification tells their leaves apart.
  const rsaTwin = signer('rsa-2048', 'meshca');
  const rsaIntermediateTwin = signer('rsa-2048', 'meshca', true);

  test('the first leaf of each issuer is verified: a same-name impostor is refused, then good leaves pass', async () => {
    for (const [real, twin, reason] of [
      [rsa, rsaTwin, /does not verify against any root/],
      [rsaIntermediate, rsaIntermediateTwin, /not signed by the next certificate/],
    ] as const) {
      const checker = new IssuedChainChecker();
      await assertRefused(async () => checker.check(await forged(twin, real), expectation(real)), reason, 'an impostor leaf as the first leaf is refused');
      await assertRefused(async () => checker.check(withBadSignature(await real.sign(request)), expectation(real)), reason, 'a bad signature on the first leaf is refused');
      for (let i = 0; i < 3; i++) checker.check(await real.sign(request), expectation(real));
    }
  });

  test('after a verified leaf, leaves that name another issuer or use another algorithm are still refused', async () => {
    const checker = new IssuedChainChecker();
    checker.check(await rsaIntermediate.sign(request), expectation(rsaIntermediate));
    const otherName = signer('rsa-2048', 'impostor', true);
    await assertRefused(async () => checker.check(await forged(otherName, rsaIntermediate), expectation(rsaIntermediate)), /not signed by the next certificate/, 'another issuer name');
    const ecSameName = signer('ec-p256', 'meshca', true);
    await assertRefused(async () => checker.check(await forged(ecSameName, rsaIntermediate), expectation(rsaIntermediate)), /not signed by the next certificate/, 'another algorithm');
  });

  test('EC leaves are verified every time, even from the LocalSigner', async () => {
    const ec = signer('ec-p256', 'meshca', true);
    const checker = new IssuedChainChecker();
    for (let i = 0; i < 3; i++) checker.check(await ec.sign(request), expectation(ec));
    await assertRefused(async () => checker.check(withBadSignature(await ec.sign(request)), expectation(ec)), /not signed by the next certificate/, 'a bad EC signature after good leaves');
  });

  test('leaves of a signer declaring no in-process material, or another key\'s, are verified every time', async () => {
    // Declares the material of a same-name CA with another key: the capability must name the issuer's own key.
    class ClaimingAnotherKey extends LocalSigner {
      override inProcessMaterial() {
        return rsaIntermediateTwin.current();
      }
    }
    const claiming = new ClaimingAnotherKey('self-signed', rsaIntermediate.current());
    const wrapper = { ...rsaIntermediate, sign: (r: WorkloadSignRequest) => rsaIntermediate.sign(r) } as unknown as LocalSigner;
    for (const other of [claiming, wrapper, null]) {
      const checker = new IssuedChainChecker();
      for (let i = 0; i < 2; i++) checker.check(await rsaIntermediate.sign(request), expectation(rsaIntermediate, other));
      await assertRefused(
        async () => checker.check(withBadSignature(await rsaIntermediate.sign(request)), expectation(rsaIntermediate, other)),
        /not signed by the next certificate/,
        `a bad RSA signature is refused when the signer is ${other === null ? 'not given' : other.constructor.name}`,
      );
    }
  });

  test('a --workers worker signing from the material counts as the in-process signer; one forwarding to its primary does not', async () => {
    const inProcess = new SnapshotSigner(takeSignerSnapshot(rsaIntermediate), () => Promise.reject(new Error('no primary here')));
    const checker = new IssuedChainChecker();
    await assertRefused(
      async () => checker.check(await forged(rsaIntermediateTwin, rsaIntermediate), expectation(rsaIntermediate, inProcess)),
      /not signed by the next certificate/,
      'a same-name impostor as the first leaf is refused',
    );
    for (let i = 0; i < 3; i++) checker.check(await inProcess.sign(request), expectation(rsaIntermediate, inProcess));

    const remoteSnapshot = takeSignerSnapshot(rsaIntermediate);
    delete remoteSnapshot.material;
    const forwarding = new SnapshotSigner(remoteSnapshot, () => rsaIntermediate.sign(request));
    const strict = new IssuedChainChecker();
    for (let i = 0; i < 2; i++) strict.check(await rsaIntermediate.sign(request), expectation(rsaIntermediate, forwarding));
    await assertRefused(
      async () => strict.check(withBadSignature(await rsaIntermediate.sign(request)), expectation(rsaIntermediate, forwarding)),
      /not signed by the next certificate/,
      'a bad RSA signature is refused when the worker forwards to its primary',
    );
  });

  test('a new issuer certificate (material rotation) gets its first leaf verified again', async () => {
    const checker = new IssuedChainChecker();
    const rotating = signer('rsa-2048', 'rotating', true);
    checker.check(await rotating.sign(request), expectation(rotating));
    const next = signer('rsa-2048', 'rotating', true);
    rotating.replace(next.current());
    const expected = { ...expectation(rotating), advertisedBundles: [rotating.trustBundlePem()] };
    await assertRefused(async () => checker.check(withBadSignature(await rotating.sign(request)), expected), /not signed by the next certificate/, 'the first leaf after a rotation is verified');
    checker.check(await rotating.sign(request), expected);
  });
  test('checkWithoutBlocking (the request path: a P-384 leaf verified on the thread pool, others inline) refuses and passes what check does', async () => {
    for (const [spec, intermediate, reason] of [
      ['ec-p256', false, /does not verify against any root/],
      ['ec-p256', true, /not signed by the next certificate/],
      ['rsa-2048', true, /not signed by the next certificate/],
      ['ec-p384', false, /does not verify against any root/],
      ['ec-p384', true, /not signed by the next certificate/],
    ] as const) {
      const real = signer(spec, 'meshca', intermediate);
      const twin = signer(spec, 'meshca', intermediate);
      const checker = new IssuedChainChecker();
      await assertRefused(async () => checker.checkWithoutBlocking(await forged(twin, real), expectation(real)), reason, `${spec}: a same-name impostor`);
      await assertRefused(async () => checker.checkWithoutBlocking(withBadSignature(await real.sign(request)), expectation(real)), reason, `${spec}: a bad signature`);
      for (let i = 0; i < 3; i++) await checker.checkWithoutBlocking(await real.sign(request), expectation(real));
      await assertRefused(async () => checker.checkWithoutBlocking(withBadSignature(await real.sign(request)), expectation(real, null)), reason, `${spec}: a bad signature after good leaves, no signer given`);
      const otherKey = { ...expectation(real), spkiDer: parseCsr(createCsr({ privateKey: generateKeyPairFor('ec-p256').privateKey })).spkiDer };
      await assertRefused(async () => checker.checkWithoutBlocking(await real.sign(request), otherKey), /different public key/, `${spec}: the structural checks run first`);
    }
  });
});
