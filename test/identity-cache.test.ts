/**
 * The agent's identity cache on virtual time: driven directly (no SDS, no gRPC) with a manual clock, a small
 * in-process CA behind the CaClient interface and a key source that counts what it hands out. Every schedule is
 * asserted to the millisecond; nothing here waits for real time.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate, type KeyObject } from 'node:crypto';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import type { CaClient, CertificateRequest } from '../src/agent/cache/ca.js';
import type { Clock } from '../src/util/clock.js';
import { AgentError, CaFailure } from '../src/agent/cache/errors.js';
import { IdentityCache, type CachedIdentity, type IdentityCacheOptions } from '../src/agent/cache/identity-cache.js';
import { checkWorkloadToken, type WorkloadCredential } from '../src/agent/credentials.js';
import type { KeySource } from '../src/agent/keys.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { renewalSchedule } from '../src/agent/rotation.js';
import { certificateToPem, createCaCertificate, LeafIssuer, parseCertificate, parseCsr, verifyCsr, generateKeyPairFor } from '../src/pki/index.js';
import { ManualClock, settle } from './support/manual-clock.js';
import { REPO_ROOT } from './support/process.js';

const ROOT_DIR = REPO_ROOT;
/** A whole second, so the CA's whole-second validity lines up with the clock. */
const START = Date.parse('2031-06-01T00:00:00Z');
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

const LABEL_CLAIM = 'test_label';

/**
 * A JWT-shaped token (unsigned: this CA reads only its label) expiring at `expMs`; `claims` puts a Kubernetes
 * subject for that service account of namespace shop in it (what the agent reads as the claimed identity).
 */
function token(label: string, expMs: number, claims?: string): WorkloadCredential {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const payload = { [LABEL_CLAIM]: label, exp: Math.floor(expMs / 1000), ...(claims ? { sub: `system:serviceaccount:shop:${claims}` } : {}) };
  const jwt = `${part({ alg: 'RS256' })}.${part(payload)}.${Buffer.from(label).toString('base64url')}`;
  const checked = checkWorkloadToken(jwt, START);
  if ('problem' in checked) throw new Error(checked.problem);
  return checked.credential;
}

function labelOf(jwt: string | undefined): string {
  if (jwt === undefined) return '';
  return (JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, string>)[LABEL_CLAIM]!;
}

/** A CA in this process that issues on the manual clock; unknown tokens are refused as istiod refuses them. */
class VirtualCa implements CaClient {
  readonly address = 'virtual-ca';
  calls = 0;
  /** The next this many calls fail as an unreachable CA would. */
  unavailableCalls = 0;
  /** While set, every call waits for it (to queue CSRs behind a slow CA). */
  gate: Promise<void> | null = null;
  readonly tokensSeen: string[] = [];
  readonly csrsSeen: string[] = [];
  readonly rootDer: Buffer;
  readonly rootKey: KeyObject;
  private readonly issuer: LeafIssuer;
  private readonly accounts = new Map<string, string>();

  constructor(private readonly clock: Clock) {
    const { privateKey, publicKey } = generateKeyPairFor('ec-p256');
    this.rootKey = publicKey;
    this.rootDer = createCaCertificate({
      subject: { organization: 'meshca-test', commonName: 'virtual root' },
      subjectKey: privateKey,
      notBefore: new Date(START - 86_400_000),
      notAfter: new Date(START + 365 * 86_400_000),
    });
    this.issuer = new LeafIssuer({ certificate: parseCertificate(this.rootDer), privateKey });
  }

  addWorkload(label: string, serviceAccount: string): string {
    const id = `spiffe://cluster.local/ns/shop/sa/${serviceAccount}`;
    this.accounts.set(label, id);
    return id;
  }

  async createCertificate(request: CertificateRequest): Promise<string[]> {
    this.calls++;
    await Promise.resolve();
    if (this.gate) await this.gate;
    if (this.unavailableCalls > 0) {
      this.unavailableCalls--;
      throw new CaFailure('retryable', 'UNAVAILABLE', 'connect ECONNREFUSED (CA restarting)');
    }
    const label = labelOf(request.token);
    this.tokensSeen.push(label);
    this.csrsSeen.push(request.csrPem);
    const id = this.accounts.get(label);
    if (!id) throw new CaFailure('refused', 'UNAUTHENTICATED', 'request authenticate failure');
    const csr = parseCsr(request.csrPem);
    verifyCsr(csr);
    const leaf = this.issuer.issue({ spkiDer: csr.spkiDer, uris: [id], ttlSeconds: request.ttlSeconds, now: this.clock.now() });
    return [certificateToPem(leaf.der), certificateToPem(this.rootDer)];
  }

  async waitUntilReachable(): Promise<void> {}

  close(): void {}
}

/** Pre-made keys, with a record of which came back after a refusal and which were spent. */
class CountingKeys implements KeySource {
  readonly givenBack: KeyObject[] = [];
  readonly spentKeys: KeyObject[] = [];
  made = 0;
  private readonly returned: KeyObject[] = [];

  take(): Promise<KeyObject> {
    const reused = this.returned.pop();
    if (reused) return Promise.resolve(reused);
    this.made++;
    return Promise.resolve(generateKeyPairFor('ec-p256').privateKey);
  }

  giveBack(key: KeyObject): void {
    this.givenBack.push(key);
    this.returned.push(key);
  }

  spent(key: KeyObject): void {
    this.spentKeys.push(key);
  }
}

interface Rig {
  clock: ManualClock;
  ca: VirtualCa;
  keys: CountingKeys;
  cache: IdentityCache;
}

function rig(overrides: Partial<IdentityCacheOptions> = {}): Rig {
  const clock = new ManualClock(START);
  const ca = new VirtualCa(clock);
  const keys = new CountingKeys();
  const cache = new IdentityCache({
    ca,
    keys,
    ttlSeconds: 3600,
    grace: { ratio: 0.5, jitter: 0 },
    idleTtlMs: 24 * HOUR,
    trustDomain: 'cluster.local',
    log: pino({ level: 'silent' }),
    metrics: new AgentMetrics({ defaultMetrics: false }),
    clock,
    random: () => 0,
    ...overrides,
  });
  return { clock, ca, keys, cache };
}

describe('identity cache on virtual time', () => {
  it('first issuance: a KeyObject, the DER chain the CA signed, the bundle as DER, renewal scheduled by renewalSchedule', async () => {
    const { ca, cache, clock } = rig();
    try {
      const id = ca.addWorkload('cart-1', 'cart');
      const lease = await cache.acquire(token('cart-1', START + 2 * HOUR));
      const issued = lease.current();
      assert.equal(lease.identity, id);
      assert.equal(issued.identity, id);
      assert.equal(issued.key.type, 'private');
      assert.equal(issued.chain.length, 1, 'the leaf (this CA sends no intermediates)');
      assert.deepEqual(issued.bundle.roots.map((root) => root.der), [ca.rootDer]);
      // Checked with OpenSSL's own parser (node:crypto), not ours: signed by the root, for the cache's key.
      const leaf = new X509Certificate(issued.chain[0]!);
      assert.ok(leaf.verify(ca.rootKey), 'the leaf is signed by the root');
      assert.ok(leaf.checkPrivateKey(issued.key), 'the leaf certifies the cached key');
      assert.equal(leaf.subjectAltName, `URI:${id}`);
      assert.equal(issued.receivedAt, START);
      const expected = renewalSchedule({ notBefore: Date.parse(leaf.validFrom), notAfter: Date.parse(leaf.validTo) }, START, 3600_000, 0.5);
      assert.equal(issued.renewAt, expected.renewAt);
      assert.equal(issued.renewAt, START + 30 * MINUTE, 'half of the 1 h lifetime');
      assert.equal(issued.expiresAt, START + HOUR);
      assert.equal(clock.nextTimerAt(), START + 30 * MINUTE, 'the first timer due is the renewal');
      assert.equal(ca.calls, 1);
      lease.release();
    } finally {
      cache.close();
    }
  });

  it('renews exactly at renewAt, pushes one new version to every lease of the identity, and reschedules', async () => {
    const { ca, cache, clock } = rig();
    try {
      ca.addWorkload('cart-1', 'cart');
      ca.addWorkload('cart-2', 'cart');
      const first = await cache.acquire(token('cart-1', START + 4 * HOUR));
      const second = await cache.acquire(token('cart-2', START + 3 * HOUR));
      assert.equal(ca.calls, 2, 'each new token is proven once');
      assert.equal(cache.size, 1, 'both tokens lead to one cached identity');
      const pushed: [string, CachedIdentity][] = [];
      first.onChange((identity) => pushed.push(['first', identity]));
      second.onChange((identity) => pushed.push(['second', identity]));
      const before = first.current();

      await clock.advanceTo(before.renewAt - 1);
      assert.equal(ca.calls, 2, 'nothing renews a millisecond early');
      assert.equal(pushed.length, 0);

      await clock.advanceTo(before.renewAt);
      assert.equal(ca.calls, 3, 'one CSR renews the identity for both leases');
      assert.deepEqual(
        pushed.map(([who]) => who),
        ['first', 'second'],
      );
      const renewed = pushed[0]![1];
      assert.equal(pushed[1]![1], renewed, 'both leases get the same new version');
      assert.notEqual(renewed.version, before.version);
      assert.notEqual(renewed.leaf.serialHex, before.leaf.serialHex);
      assert.ok(!renewed.key.equals(before.key), 'a renewal certifies a new key');
      assert.equal(renewed.receivedAt, START + 30 * MINUTE);
      assert.equal(renewed.renewAt, START + 60 * MINUTE);
      assert.equal(first.current(), renewed);
      assert.equal(ca.tokensSeen.at(-1), 'cart-1', 'renewed with the token valid longest');
      assert.equal(clock.nextTimerAt(), START + 60 * MINUTE);
      first.release();
      second.release();
    } finally {
      cache.close();
    }
  });

  it("ends a lease whose token's exp has passed at renewal, without a push, and never sends that token again", async () => {
    const { ca, cache, clock } = rig();
    try {
      ca.addWorkload('short', 'cart');
      ca.addWorkload('long', 'cart');
      const short = await cache.acquire(token('short', START + 10 * MINUTE));
      const long = await cache.acquire(token('long', START + 2 * HOUR));
      const revoked: AgentError[] = [];
      let shortPushes = 0;
      let longPushes = 0;
      short.onRevoked((error) => revoked.push(error));
      short.onChange(() => shortPushes++);
      long.onChange(() => longPushes++);

      await clock.advanceTo(START + 11 * MINUTE);
      await assert.rejects(cache.acquire(token('short', START + 10 * MINUTE)), (error: unknown) => {
        return error instanceof AgentError && error.code === 'unauthenticated' && /expired at 2031-06-01T00:10:00\.000Z/.test(error.message);
      });
      assert.equal(revoked.length, 0, 'an open lease keeps its current credentials until renewal needs the CA');

      await clock.advanceTo(START + 30 * MINUTE);
      assert.equal(revoked.length, 1);
      assert.equal(revoked[0]!.code, 'unauthenticated');
      assert.match(revoked[0]!.message, /expired; reconnect with a fresh token/);
      assert.equal(shortPushes, 0, 'the lease proven only by the expired token got no renewed credentials');
      assert.equal(longPushes, 1);
      assert.deepEqual(ca.tokensSeen, ['short', 'long', 'long']);
      long.release();
    } finally {
      cache.close();
    }
  });

  it('refuses a token the CA refused without asking again until the refusal expires, and gives its key back', async () => {
    const { ca, cache, clock, keys } = rig({ refusalTtlMs: 10_000 });
    try {
      const stranger = token('stranger', START + HOUR);
      await assert.rejects(cache.acquire(stranger), (error: unknown) => error instanceof AgentError && error.code === 'unauthenticated');
      assert.equal(ca.calls, 1);
      assert.equal(keys.givenBack.length, 1, 'no certificate exists for the refused CSR: its key goes back');
      assert.equal(keys.spentKeys.length, 0);

      await clock.advanceTo(START + 9_999);
      await assert.rejects(cache.acquire(stranger), (error: unknown) => {
        return error instanceof AgentError && error.code === 'unauthenticated' && error.message.endsWith('(not asked again until 2031-06-01T00:00:10.000Z)');
      });
      assert.equal(ca.calls, 1, 'refused locally');

      ca.addWorkload('stranger', 'late-joiner');
      await clock.advanceTo(START + 10_000);
      const lease = await cache.acquire(stranger);
      assert.equal(ca.calls, 2, 'asked again once the refusal expired');
      assert.equal(keys.made, 1, 'the refused CSR’s key served the accepted one');
      assert.equal(lease.current().key, keys.givenBack[0]);
      lease.release();
    } finally {
      cache.close();
    }
  });

  it("proves a new token claiming a cached identity with that identity's own CSR; the CA still decides", async () => {
    const { ca, cache, clock, keys } = rig();
    try {
      const id = ca.addWorkload('cart-1', 'cart');
      ca.addWorkload('cart-2', 'cart');
      const payId = ca.addWorkload('impostor', 'pay');
      const first = await cache.acquire(token('cart-1', START + 4 * HOUR, 'cart'));
      const cartKey = first.current().key;
      const second = await cache.acquire(token('cart-2', START + 4 * HOUR, 'cart'));
      assert.equal(ca.calls, 2, 'the second token was proven to the CA too');
      assert.equal(second.identity, id);
      assert.equal(keys.made, 1, 'no key was made for it');
      assert.equal(ca.csrsSeen[1], ca.csrsSeen[0], "it carried the identity's own CSR");
      assert.equal(keys.spentKeys.length, 1, "the identity's key is not the pool's: not spent again");

      // Refused: nothing goes back to the pool, the identity's key stays the identity's.
      await assert.rejects(cache.acquire(token('stranger', START + HOUR, 'cart')), (error: unknown) => error instanceof AgentError && error.code === 'unauthenticated');
      assert.deepEqual([keys.givenBack.length, keys.made], [0, 1]);

      // The CA grants a token claiming cart another identity: that answer (for cart's key) is not used; the token
      // is proven again with a fresh key, and cart moves to a fresh key too.
      const pushed: CachedIdentity[] = [];
      first.onChange((identity) => pushed.push(identity));
      const impostor = await cache.acquire(token('impostor', START + HOUR, 'cart'));
      await settle();
      assert.equal(impostor.identity, payId);
      assert.notEqual(impostor.current().key, cartKey);
      assert.equal(pushed.length, 1, 'cart was renewed');
      assert.notEqual(first.current().key, cartKey, 'with a new key');
      assert.equal(keys.made, 3, 'one key for pay, one for the renewal of cart');
      assert.equal(ca.calls, 6, "the impostor's two CSRs (cart's, then its own) and cart's renewal");
      assert.notEqual(ca.csrsSeen[5], ca.csrsSeen[0]);

      // Due for renewal: a new token is proven with a fresh key, never the renewing identity's.
      await clock.advanceTo(first.current().renewAt - 1);
      ca.addWorkload('cart-3', 'cart');
      // Both of cart's tokens meet an unreachable CA: the renewal waits for its retry.
      ca.unavailableCalls = 2;
      await clock.advanceTo(first.current().renewAt);
      const made = keys.made;
      const third = await cache.acquire(token('cart-3', START + 4 * HOUR, 'cart'));
      await settle();
      assert.equal(third.identity, id);
      assert.ok(keys.made > made, 'a fresh key for the token that came while cart was due');
      for (const lease of [first, second, third, impostor]) lease.release();
    } finally {
      cache.close();
    }
  });

  it('sends waiting proofs of new tokens ahead of waiting renewals, with every fifth slot for a renewal', async () => {
    const { ca, cache, clock } = rig({ maxConcurrentCsrs: 1 });
    try {
      const held = [];
      for (const sa of ['a', 'b', 'c']) {
        ca.addWorkload(`${sa}-1`, sa);
        held.push(await cache.acquire(token(`${sa}-1`, START + 4 * HOUR)));
      }
      let open!: () => void;
      ca.gate = new Promise((resolve) => (open = resolve));
      // All three identities are due at once; the first renewal takes the only slot and waits at the CA.
      await clock.advanceTo(held[0]!.current().renewAt);
      const proofs = Array.from({ length: 6 }, (_, i) => {
        ca.addWorkload(`new-${i}`, `new-${i}`);
        return cache.acquire(token(`new-${i}`, START + 4 * HOUR));
      });
      await settle();
      const seenBefore = ca.tokensSeen.length; // The CA records a token once past the gate.
      ca.gate = null;
      open();
      for (const lease of await Promise.all(proofs)) lease.release();
      await settle();
      assert.deepEqual(ca.tokensSeen.slice(seenBefore), ['a-1', 'new-0', 'new-1', 'new-2', 'new-3', 'b-1', 'new-4', 'new-5', 'c-1']);
      for (const lease of held) lease.release();
    } finally {
      cache.close();
    }
  });

  it('retries an unreachable CA after exactly the backoff delay on the injected clock', async () => {
    const { ca, cache, clock } = rig();
    try {
      ca.addWorkload('cart-1', 'cart');
      ca.unavailableCalls = 1;
      const pending = cache.acquire(token('cart-1', START + HOUR));
      await settle();
      assert.equal(ca.calls, 1);
      // random() = 0: the first retry waits half of the 100 ms initial step.
      assert.equal(clock.nextTimerAt(), START + 50);
      await clock.advanceTo(START + 49);
      assert.equal(ca.calls, 1);
      await clock.advanceTo(START + 50);
      const lease = await pending;
      assert.equal(ca.calls, 2);
      assert.equal(lease.current().receivedAt, START + 50);
      lease.release();
    } finally {
      cache.close();
    }
  });

  it('drops an identity no lease holds once the idle time has passed', async () => {
    const { ca, cache, clock } = rig({ idleTtlMs: 5 * MINUTE });
    try {
      ca.addWorkload('cart-1', 'cart');
      const lease = await cache.acquire(token('cart-1', START + HOUR));
      await clock.advanceTo(START + MINUTE);
      lease.release();
      await clock.advanceTo(START + 6 * MINUTE - 1);
      assert.equal(cache.size, 1);
      await clock.advanceTo(START + 6 * MINUTE);
      assert.equal(cache.size, 0);
    } finally {
      cache.close();
    }
  });
});

describe('the identity cache knows no transport', () => {
  /** The @grpc modules loaded after importing `module` alone in a fresh process. */
  function grpcModulesLoadedBy(module: string): string[] {
    const script = `
      import { createRequire } from 'node:module';
      await import(${JSON.stringify(path.join(ROOT_DIR, module))});
      const require = createRequire(import.meta.url);
      console.log(JSON.stringify(Object.keys(require.cache).filter((file) => file.includes('@grpc'))));
    `;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT_DIR, encoding: 'utf8' });
    return JSON.parse(out.trim().split('\n').at(-1)!) as string[];
  }

  it('loads without @grpc/grpc-js, while the SDS side of the errors does load it (the check can fail)', () => {
    assert.deepEqual(grpcModulesLoadedBy('src/agent/cache/identity-cache.ts'), []);
    assert.ok(grpcModulesLoadedBy('src/agent/errors.ts').length > 0, 'control: the gRPC error mapping loads grpc-js');
  });
});
