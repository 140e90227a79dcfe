/**
 * Property-based checks of the CA's input handling, shared by the fast run in `npm test` (test/properties.test.ts,
 * a few hundred cases each) and the long run in `npm run fuzz` (test/fuzz/*.fuzz.ts, minutes). Each registers
 * node:test tests with a budget: a number of runs and, for the long run, a time limit.
 *
 * What must hold for random and mutated input:
 *  - the PEM, DER, CSR, certificate and SPIFFE ID parsers return or throw PkiError, nothing else, and never hang;
 *  - the linear-time PEM decoder finds exactly the blocks the former regular expression found;
 *  - a CSR that verifies after mutation still certifies the key its signature was checked with;
 *  - whatever SANs a CSR asks for, the issued certificate names exactly the caller's proven identity, certifies
 *    the CSR's key, and passes the final issued-chain check;
 *  - a mutated or forged JWT never authenticates anyone but the identity the issuer signed for, and garbage is
 *    always the token's fault (denied), never blamed on the key source (unavailable).
 */
import assert from 'node:assert/strict';
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { DevTokenIssuer } from '../../src/authn/dev-issuer.js';
import { JwtAuthenticator } from '../../src/authn/jwt.js';
import { unverifiedExpiryMs } from '../../src/authn/tokenreview.js';
import { extractBearerToken } from '../../src/authn/types.js';
import { buildCaMaterial, CaError, CertificateAuthority, LocalSigner } from '../../src/ca/index.js';
import { IssuedChainChecker } from '../../src/ca/issued-check.js';
import { signatureAlgorithmFor } from '../../src/pki/algorithms.js';
import { children, decodeTime, readElement } from '../../src/pki/der.js';
import {
  createCaCertificate,
  createCsr,
  decodePem,
  describeSpki,
  encodePem,
  WorkloadId,
  generateKeyPairFor,
  isPkiError,
  parseCertificate,
  parseCsr,
  parseSpiffeId,
  PkiError,
  verifyCsr,
  type PemBlock,
} from '../../src/pki/index.js';
import { makeTempDir } from '../support/process.js';

export interface FuzzBudget {
  /** Runs per property. */
  numRuns: number;
  /** Stop a property after this long (the long run); runs done by then count. */
  timeLimitMs?: number;
  /** Per-test timeout: a hang fails the test instead of stalling the run. */
  testTimeoutMs: number;
}

function parameters(budget: FuzzBudget): fc.Parameters<unknown> {
  const seed = process.env.MESHCA_FUZZ_SEED ? Number(process.env.MESHCA_FUZZ_SEED) : undefined;
  return {
    numRuns: budget.numRuns,
    ...(budget.timeLimitMs ? { interruptAfterTimeLimit: budget.timeLimitMs } : {}),
    ...(seed !== undefined ? { seed } : {}),
  };
}

/** Runs `fn`; anything thrown must be a PkiError. */
function onlyPkiErrors<T>(fn: () => T): T | PkiError {
  try {
    return fn();
  } catch (error) {
    if (isPkiError(error)) return error;
    throw new Error(`expected a PkiError, got ${(error as Error)?.name}: ${(error as Error)?.message}`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Mutations

type Mutation = ['flip' | 'set' | 'insert' | 'delete' | 'truncate' | 'length', number, Uint8Array];

const mutationArbitrary: fc.Arbitrary<Mutation> = fc.tuple(
  fc.constantFrom('flip', 'set', 'insert', 'delete', 'truncate', 'length'),
  fc.nat(),
  fc.uint8Array({ minLength: 1, maxLength: 6 }),
) as fc.Arbitrary<Mutation>;

/** Applies byte-level mutations; `length` targets DER length octets with long-form and boundary values. */
export function mutate(original: Buffer, mutations: readonly Mutation[]): Buffer {
  let bytes = Buffer.from(original);
  for (const [kind, position, data] of mutations) {
    if (bytes.length === 0) break;
    const at = position % bytes.length;
    switch (kind) {
      case 'flip':
        bytes[at] = bytes[at]! ^ (data[0]! || 1);
        break;
      case 'set':
        bytes[at] = data[0]!;
        break;
      case 'insert':
        bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(data), bytes.subarray(at)]);
        break;
      case 'delete':
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + (data[0]! % 8))]);
        break;
      case 'truncate':
        bytes = bytes.subarray(0, at);
        break;
      case 'length':
        bytes[at] = [0x00, 0x7f, 0x80, 0x81, 0x82, 0x84, 0x85, 0xff][data[0]! % 8]!;
        break;
    }
  }
  return bytes;
}

const mutationsArbitrary = fc.array(mutationArbitrary, { minLength: 1, maxLength: 4 });

// ---------------------------------------------------------------------------------------------------------------
// Fixtures

const TRUST_DOMAIN = 'cluster.local';
const dnsLabel = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$/);
const identityArbitrary = fc.tuple(dnsLabel, dnsLabel).map(([namespace, serviceAccount]) => WorkloadId.of({ trustDomain: TRUST_DOMAIN, namespace, serviceAccount }).uri);
/** What a CSR may ask for: other workloads, other trust domains, admin-looking names, DNS names, junk. */
const requestedSanArbitrary = fc.oneof(
  identityArbitrary,
  fc.constantFrom('spiffe://cluster.local/ns/istio-system/sa/istiod', 'spiffe://evil.example/ns/default/sa/x', 'spiffe://cluster.local', 'https://example.com/'),
  fc.string({ maxLength: 40 }),
);

interface CaFixture {
  authority: CertificateAuthority;
  signer: LocalSigner;
  keys: KeyObject[];
}

let caFixture: CaFixture | undefined;

function ca(): CaFixture {
  if (caFixture) return caFixture;
  const rootKey = generateKeyPairFor('ec-p256').privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: TRUST_DOMAIN }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
  const signer = new LocalSigner('self-signed', buildCaMaterial({ signingCert: root, privateKey: rootKey, chain: [], roots: [root] }));
  const authority = new CertificateAuthority({ signer, defaultTtlSeconds: 3600, maxTtlSeconds: 86400 });
  // A small pool: key generation would dominate the run otherwise.
  const keys = [generateKeyPairFor('ec-p256').privateKey, generateKeyPairFor('rsa-2048').privateKey, generateKeyPairFor('ec-p384').privateKey];
  caFixture = { authority, signer, keys };
  return caFixture;
}

/** The regular expression the PEM decoder used before it was made linear: the reference for its behaviour. */
function referenceDecodePem(text: string): PemBlock[] {
  const blocks: PemBlock[] = [];
  for (const match of text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g)) {
    const body = match[2]!;
    if (!/^[A-Za-z0-9+/=\s]*$/.test(body)) throw new PkiError('ERR_PEM', `PEM block "${match[1]}" has a body that is not base64`);
    const der = Buffer.from(body.replace(/\s+/g, ''), 'base64');
    if (der.length === 0) throw new PkiError('ERR_PEM', `PEM block "${match[1]}" is empty`);
    blocks.push({ label: match[1]!, der });
  }
  return blocks;
}

/** Strings made of PEM-looking pieces, where the interesting edge cases live. */
const pemishArbitrary = fc
  .array(
    fc.oneof(
      fc.constantFrom('-----BEGIN ', '-----END ', '-----', 'CERTIFICATE', 'CERTIFICATE REQUEST', 'A', 'B1', ' ', '\n', 'MIIB', 'AA==', '=', '-', 'x!', 'é'),
      fc.string({ maxLength: 6 }),
    ),
    { maxLength: 40 },
  )
  .map((parts) => parts.join(''));

// ---------------------------------------------------------------------------------------------------------------
// Properties

export function registerParserProperties(budget: FuzzBudget): void {
  const options = { timeout: budget.testTimeoutMs };
  describe('parsers: random and mutated input yields a result or a PkiError', () => {
    test('PEM: arbitrary text and PEM-looking pieces; same blocks as the former regular expression', options, () => {
      fc.assert(
        fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), pemishArbitrary), (text) => {
          const actual = onlyPkiErrors(() => decodePem(text));
          let expected: PemBlock[] | PkiError;
          try {
            expected = referenceDecodePem(text);
          } catch (error) {
            expected = error as PkiError;
          }
          if (expected instanceof PkiError) {
            assert.ok(actual instanceof PkiError, 'the reference refused the text');
            assert.equal(actual.message, expected.message);
          } else {
            assert.deepEqual(actual, expected);
          }
        }),
        parameters(budget),
      );
    });

    test('DER: random bytes through the element reader, SPKI description and time decoding', options, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 255 }), (raw, tag) => {
          const bytes = Buffer.from(raw);
          onlyPkiErrors(() => {
            let offset = 0;
            while (offset < bytes.length) {
              const element = readElement(bytes, offset);
              if ((element.tag & 0x20) !== 0) children(element);
              offset += element.raw.length;
            }
          });
          onlyPkiErrors(() => describeSpki(bytes));
          onlyPkiErrors(() => decodeTime(tag, bytes));
        }),
        parameters(budget),
      );
    });

    test('CSR: random bytes, random PEM and mutations of valid CSRs; a mutated CSR that verifies certifies the key it was verified with', options, () => {
      const { keys } = ca();
      const valid = keys.map((privateKey) => Buffer.from(createCsr({ privateKey, uris: ['spiffe://cluster.local/ns/default/sa/x'] }).replace(/-----[^-]+-----|\s/g, ''), 'base64'));
      fc.assert(
        fc.property(
          fc.oneof(
            fc.uint8Array({ maxLength: 400 }).map((b) => Buffer.from(b)),
            fc.tuple(fc.constantFrom(...valid), mutationsArbitrary).map(([der, mutations]) => mutate(der, mutations)),
          ),
          fc.boolean(),
          (der, asPem) => {
            const parsed = onlyPkiErrors(() => parseCsr(asPem ? encodePem('CERTIFICATE REQUEST', der) : der));
            if (parsed instanceof PkiError) return;
            const verified = onlyPkiErrors(() => verifyCsr(parsed));
            if (verified instanceof PkiError) return;
            // The key that verified the signature is the key a certificate would carry (the SPKI, read by OpenSSL).
            const algorithm = signatureAlgorithmFor(parsed.signatureAlgorithm)!;
            const certified = createPublicKey({ key: parsed.spkiDer, format: 'der', type: 'spki' });
            assert.ok(verify(algorithm.hash, parsed.info, certified, parsed.signature), 'the CSR verifies with the key of its SPKI');
            assert.deepEqual(certified.export({ format: 'jwk' }), verified.export({ format: 'jwk' }));
          },
        ),
        parameters(budget),
      );
    });

    test('certificates: mutations of an issued leaf and of a CA certificate', options, async () => {
      const { authority, keys } = ca();
      const leaf = await authority.signer.sign({ csrPem: '', spkiDer: parseCsr(createCsr({ privateKey: keys[0]! })).spkiDer, uris: ['spiffe://cluster.local/ns/a/sa/b'], ttlSeconds: 600 });
      const root = Buffer.from(authority.signer.trustBundlePem().replace(/-----[^-]+-----|\s/g, ''), 'base64');
      fc.assert(
        fc.property(fc.constantFrom(leaf.leafDer, root), mutationsArbitrary, (der, mutations) => {
          onlyPkiErrors(() => parseCertificate(mutate(der, mutations)));
        }),
        parameters(budget),
      );
    });

    test('SPIFFE IDs: arbitrary text parses or is refused with PkiError; what parses round-trips', options, () => {
      const spiffeish = fc
        .array(fc.oneof(fc.constantFrom('spiffe://', '/', '//', '.', '..', 'ns', 'sa', 'cluster.local', '%2F', '@', ':', '?', '#', 'A', 'é', '\u0000', '-', '_'), fc.string({ maxLength: 4 })), {
          maxLength: 16,
        })
        .map((parts) => parts.join(''));
      fc.assert(
        fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), spiffeish), (text) => {
          const parsed = onlyPkiErrors(() => parseSpiffeId(text));
          if (parsed instanceof PkiError) return;
          assert.equal(`spiffe://${parsed.trustDomain}${parsed.path}`, text);
          const workload = onlyPkiErrors(() => WorkloadId.parse(text));
          if (!(workload instanceof PkiError)) assert.equal(WorkloadId.of(workload).uri, text);
        }),
        parameters(budget),
      );
      fc.assert(
        fc.property(dnsLabel, dnsLabel, (namespace, serviceAccount) => {
          const parsed = WorkloadId.parse(WorkloadId.of({ trustDomain: TRUST_DOMAIN, namespace, serviceAccount }).uri);
          assert.deepEqual([parsed.trustDomain, parsed.namespace, parsed.serviceAccount], [TRUST_DOMAIN, namespace, serviceAccount]);
        }),
        parameters(budget),
      );
    });

    test('PEM decoding of 64 KiB adversarial inputs finishes (no backtracking blow-up)', options, () => {
      for (const text of [
        '-----BEGIN CERTIFICATE REQUEST-----'.repeat(1800),
        '-----BEGIN A-----'.repeat(3800),
        `-----BEGIN ${'A'.repeat(65_000)}`,
        Array.from({ length: 3000 }, (_, i) => `-----BEGIN L${i}-----`).join(''),
        `${'-----END X-----'.repeat(2000)}${'-----BEGIN X-----'.repeat(2000)}`,
      ]) {
        assert.deepEqual(decodePem(text), []);
        assert.throws(() => parseCsr(text), (error: unknown) => isPkiError(error, 'ERR_CSR_MALFORMED'));
      }
    });
  });
}

export function registerIssuanceProperties(budget: FuzzBudget): void {
  const options = { timeout: budget.testTimeoutMs };
  describe('issuance: a certificate only ever names the identity the caller proved', () => {
    test('CSRs asking for other identities, DNS names or CA:true, intact or mutated', options, async () => {
      const { authority, signer, keys } = ca();
      const checker = new IssuedChainChecker();
      await fc.assert(
        fc.asyncProperty(
          identityArbitrary,
          fc.nat(keys.length - 1),
          fc.array(requestedSanArbitrary, { maxLength: 4 }),
          fc.array(fc.constantFrom('evil.example', 'istiod.istio-system.svc', 'localhost'), { maxLength: 2 }),
          fc.boolean(),
          fc.oneof({ arbitrary: fc.constant(undefined), weight: 1 }, { arbitrary: mutationsArbitrary, weight: 1 }),
          fc.integer({ min: -10, max: 200_000 }),
          async (caller, keyIndex, uris, dnsNames, requestCa, mutations, ttl) => {
            const privateKey = keys[keyIndex]!;
            let csrPem: string;
            try {
              csrPem = createCsr({ privateKey, uris, dnsNames, requestCa });
            } catch (error) {
              // Some junk SANs cannot even be encoded into a CSR; nothing to send then.
              if (isPkiError(error)) return;
              throw error;
            }
            if (mutations) csrPem = encodePem('CERTIFICATE REQUEST', mutate(Buffer.from(csrPem.replace(/-----[^-]+-----|\s/g, ''), 'base64'), mutations));
            const bundle = signer.trustBundlePem();
            let issued;
            try {
              issued = await authority.issue({ csrPem, identity: WorkloadId.parse(caller), requestedTtlSeconds: ttl });
            } catch (error) {
              assert.ok(error instanceof CaError, `expected a CaError, got ${String(error)}`);
              assert.ok(['CSR_ERROR', 'TTL_ERROR'].includes(error.code), error.message);
              return;
            }
            assert.ok(!requestCa || mutations, 'a CA:true request is never signed');
            const leaf = parseCertificate(issued.leafDer);
            assert.deepEqual(leaf.sans.uris, [caller]);
            assert.deepEqual(leaf.sans.dnsNames, []);
            assert.notEqual(leaf.basicConstraints?.ca, true);
            const spki = parseCsr(csrPem).spkiDer;
            assert.ok(leaf.spkiDer.equals(spki), 'the leaf certifies the CSR key');
            assert.ok(leaf.spkiDer.equals(parseCsr(createCsr({ privateKey })).spkiDer), "the CSR key is the requester's key");
            checker.check(issued, { identities: [caller], spkiDer: spki, advertisedBundles: [bundle] });
          },
        ),
        parameters(budget),
      );
    });

    test('the final check refuses every corruption of a good chain', options, async () => {
      const { signer, keys } = ca();
      const checker = new IssuedChainChecker();
      const spkiDer = parseCsr(createCsr({ privateKey: keys[0]! })).spkiDer;
      const identity = 'spiffe://cluster.local/ns/default/sa/checked';
      const good = await signer.sign({ csrPem: '', spkiDer, uris: [identity], ttlSeconds: 600 });
      const bundle = signer.trustBundlePem();
      checker.check(good, { identities: [identity], spkiDer, advertisedBundles: [bundle] });
      fc.assert(
        fc.property(mutationsArbitrary, fc.constantFrom('leaf', 'bundle', 'identity', 'key'), (mutations, target) => {
          const leafDer = target === 'leaf' ? mutate(good.leafDer, mutations) : good.leafDer;
          const chainBundle = target === 'bundle' ? encodePem('CERTIFICATE', mutate(Buffer.from(bundle.replace(/-----[^-]+-----|\s/g, ''), 'base64'), mutations)) : bundle;
          const changed = target === 'leaf' ? !leafDer.equals(good.leafDer) : target === 'bundle' ? chainBundle !== bundle : true;
          fc.pre(changed);
          const signed = { ...good, leafDer, chain: [encodePem('CERTIFICATE', leafDer), chainBundle] };
          const expectation = {
            identities: target === 'identity' ? ['spiffe://cluster.local/ns/default/sa/someone-else'] : [identity],
            spkiDer: target === 'key' ? mutate(spkiDer, mutations) : spkiDer,
            advertisedBundles: [bundle],
          };
          fc.pre(target !== 'key' || !expectation.spkiDer.equals(spkiDer));
          assert.throws(
            () => checker.check(signed, expectation),
            (error: unknown) => error instanceof CaError && error.code === 'CERT_GEN_ERROR',
          );
        }),
        parameters(budget),
      );
    });
  });
}

export function registerJwtProperties(budget: FuzzBudget): void {
  const options = { timeout: budget.testTimeoutMs };
  describe('JWT handling: mutated and forged tokens never authenticate another identity', () => {
    test('header parsing and unverified expiry never throw', options, () => {
      fc.assert(
        fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (text) => {
          extractBearerToken(text);
          extractBearerToken(`Bearer ${text}`);
          unverifiedExpiryMs(text);
          unverifiedExpiryMs(`a.${Buffer.from(text).toString('base64url')}.b`);
        }),
        parameters(budget),
      );
    });

    test('mutated tokens: only the signed identity, and garbage is always "denied"', options, async () => {
      const temp = makeTempDir('meshca-fuzz-jwt-');
      try {
        const issuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'issuer'));
        const authenticator = await JwtAuthenticator.create({
          rules: [issuer.jwtRule(['istio-ca'])],
          defaultAudiences: ['istio-ca'],
          trustDomain: TRUST_DOMAIN,
          localClusterId: 'Kubernetes',
        });
        const token = await issuer.mint({ namespace: 'default', serviceAccount: 'owner', audiences: ['istio-ca'], ttlSeconds: 3600 });
        const owner = 'spiffe://cluster.local/ns/default/sa/owner';
        const [header, payload, signature] = token.split('.') as [string, string, string];
        const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
        const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
        const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ';
        const charMutation = fc.tuple(fc.nat(), fc.constantFrom(...alphabet.split('')), fc.constantFrom('replace', 'insert', 'delete')).map(
          ([position, char, kind]) =>
            (text: string): string => {
              const at = position % text.length;
              if (kind === 'replace') return text.slice(0, at) + char + text.slice(at + 1);
              if (kind === 'insert') return text.slice(0, at) + char + text.slice(at);
              return text.slice(0, at) + text.slice(at + 1);
            },
        );
        const forgedClaims = fc.record({
          sub: fc.constantFrom('system:serviceaccount:kube-system:admin', 'system:serviceaccount:default:owner', 'system:admin'),
          aud: fc.constantFrom(['istio-ca'], 'istio-ca', ['other']),
          'kubernetes.io': fc.constant({ namespace: 'kube-system', serviceaccount: { name: 'admin' } }),
        });
        const forgedHeader = fc.constantFrom({ alg: 'none' }, { alg: 'HS256', kid: issuer.kid }, { alg: 'ES256', kid: 'other' }, { alg: 'ES384', kid: issuer.kid }, { alg: 'RS256' });
        const tokenArbitrary = fc.oneof(
          fc.array(charMutation, { minLength: 1, maxLength: 3 }).map((fns) => fns.reduce((text, fn) => fn(text), token)),
          forgedClaims.map((forged) => `${header}.${b64({ ...claims, ...forged })}.${signature}`),
          forgedHeader.map((forged) => `${b64(forged)}.${payload}.${signature}`),
          fc.tuple(forgedHeader, forgedClaims).map(([h, c]) => `${b64(h)}.${b64({ ...claims, ...c })}.`),
          fc.string({ unit: 'binary', maxLength: 120 }),
        );
        await fc.assert(
          fc.asyncProperty(tokenArbitrary, async (candidate) => {
            const outcome = await authenticator.authenticate({ header: (name) => (name === 'authorization' ? `Bearer ${candidate}` : undefined) });
            if (outcome.kind === 'ok') {
              assert.equal(outcome.caller.identity.uri, owner, `token ${candidate} authenticated someone else`);
              return;
            }
            assert.ok(outcome.kind === 'denied' || outcome.kind === 'skip', `${outcome.kind}: ${'reason' in outcome ? outcome.reason : ''}`);
          }),
          parameters(budget),
        );
      } finally {
        temp.cleanup();
      }
    });
  });
}
