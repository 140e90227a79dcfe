/**
 * The verdict cache of the token authenticators (src/authn/token-cache.ts): entries live until min(TTL, the given
 * expiry) on the injected clock, a full cache drops expired entries and then the oldest, and one token's entry is
 * never found under another token's key or another scope.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TokenCache } from '../src/authn/token-cache.js';

function cacheAt(start: number, ttlMs: number, maxEntries?: number): { cache: TokenCache<string>; clock: { t: number } } {
  const clock = { t: start };
  return { cache: new TokenCache<string>({ ttlMs, now: () => clock.t, ...(maxEntries !== undefined ? { maxEntries } : {}) }), clock };
}

describe('TokenCache', () => {
  it('keeps an entry until the TTL or the given expiry, whichever comes first', () => {
    const { cache, clock } = cacheAt(1_000_000, 60_000);
    cache.set(TokenCache.keyOf('a'), 'A');
    cache.set(TokenCache.keyOf('b'), 'B', 1_000_000 + 10_000);
    clock.t += 9_999;
    assert.equal(cache.get(TokenCache.keyOf('b')), 'B');
    clock.t += 1;
    assert.equal(cache.get(TokenCache.keyOf('b')), undefined, 'gone at its expiry');
    assert.equal(cache.get(TokenCache.keyOf('a')), 'A');
    clock.t = 1_000_000 + 60_000;
    assert.equal(cache.get(TokenCache.keyOf('a')), undefined, 'gone at the TTL');
    assert.equal(cache.size, 0, 'expired entries are dropped when read');
  });

  it('stores nothing already expired, or with a TTL of 0', () => {
    const { cache } = cacheAt(5_000, 60_000);
    cache.set('k', 'v', 5_000);
    cache.set('k2', 'v', 4_000);
    assert.equal(cache.size, 0);
    const { cache: off } = cacheAt(5_000, 0);
    off.set('k', 'v', 100_000);
    assert.equal(off.size, 0);
  });

  it('never answers one token for another, nor across scopes, and keys hold no token text', () => {
    const { cache } = cacheAt(0, 60_000);
    cache.set(TokenCache.keyOf('token-1', 'cluster-a'), 'one');
    assert.equal(cache.get(TokenCache.keyOf('token-1', 'cluster-b')), undefined);
    assert.equal(cache.get(TokenCache.keyOf('token-1')), undefined);
    assert.equal(cache.get(TokenCache.keyOf('token-2', 'cluster-a')), undefined);
    assert.equal(cache.get(TokenCache.keyOf('token-1 ', 'cluster-a')), undefined);
    assert.equal(cache.get(TokenCache.keyOf('token-1', 'cluster-a')), 'one');
    assert.ok(!TokenCache.keyOf('secret-token').includes('secret'));
  });

  it('is bounded: expired entries go first, then the oldest insertions', () => {
    const { cache, clock } = cacheAt(0, 60_000, 3);
    cache.set('short', 's', 1_000);
    cache.set('old', 'o');
    cache.set('mid', 'm');
    clock.t = 2_000;
    cache.set('new1', 'n1');
    assert.equal(cache.size, 3);
    assert.equal(cache.get('short'), undefined);
    assert.equal(cache.get('old'), 'o', 'the expired entry made room, not the oldest live one');
    cache.set('new2', 'n2');
    assert.equal(cache.size, 3);
    assert.equal(cache.get('old'), undefined, 'the oldest insertion went');
    assert.deepEqual(['mid', 'new1', 'new2'].map((k) => cache.get(k)), ['m', 'n1', 'n2']);
    cache.set('mid', 'm2');
    assert.equal(cache.size, 3, 'replacing an entry evicts nothing');
    assert.equal(cache.get('mid'), 'm2');
    cache.clear();
    assert.equal(cache.size, 0);
  });
});
