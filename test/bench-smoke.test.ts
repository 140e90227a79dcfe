/**
 * The benchmark runs and reports what it promises (figures and ratios, not speed), and the signing hot path it
 * drove stays exact: the fast RSA key import never reads a key other than the one OpenSSL reads from the same
 * bytes, and the single-buffer certificate writer produces what OpenSSL accepts for any SAN list.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { csrPublicKey, readCsrPublicKey } from '../src/pki/csr.js';
import {
  certificateToPem,
  createCaCertificate,
  createCsr,
  LeafIssuer,
  parseCertificate,
  parseCsr,
  spkiDer,
  verifyCsr,
  type ParsedCsr,
  generateKeyPairFor,
  generateKeyPairOf,
} from '../src/pki/index.js';
import { opensslVerify } from './support/openssl.js';
import { makeTempDir, REPO_ROOT } from './support/process.js';

const temp = makeTempDir('meshca-bench-smoke-');
after(() => temp.cleanup());

interface SmokeResults {
  mode: string;
  parts: string[];
  limit: { rsa2048: { signPerSecond: number }; ecdsap256: { signPerSecond: number }; command: string };
  core: {
    kind: string;
    single: { certsPerSecond: number; certs: number };
    all: { certsPerSecond: number; threads: number };
    singleRatio: number;
    allRatio: number;
    steps: Record<string, number>;
  }[];
  targets: { description: string; met: boolean | null }[];
  problems: unknown[];
}

/**
 * The bench as `npm run bench` runs it (tsx) when this file runs from source, and compiled beside it (.test-build/,
 * the same code without tsx's loader in the bench and its worker threads) when `npm test` runs it compiled.
 */
const BENCH_ENTRY = import.meta.url.endsWith('.js') ? [fileURLToPath(new URL('../bench/run.js', import.meta.url))] : ['--import', 'tsx', 'bench/run.ts'];

describe('npm run bench -- --smoke --only core', () => {
  it('measures the OpenSSL limit and the signing core on one and all threads, with ratios, and writes latest.json', async () => {
    const outDir = path.join(temp.dir, 'results');
    const child = spawn(process.execPath, [...BENCH_ENTRY, '--smoke', '--only', 'core', '--out', outDir, '--no-markdown'], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    after(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    assert.equal(code, 0, `bench exited ${code}:\n${stderr.slice(-3000)}`);

    const results = JSON.parse(readFileSync(path.join(outDir, 'latest.json'), 'utf8')) as SmokeResults;
    assert.equal(results.mode, 'smoke');
    assert.deepEqual(results.parts, ['limit', 'core']);
    assert.deepEqual(results.problems, []);
    assert.match(results.limit.command, /^openssl speed -seconds 1 -multi \d+ rsa2048 ecdsap256$/);
    assert.ok(results.limit.rsa2048.signPerSecond > 0 && results.limit.ecdsap256.signPerSecond > 0);
    assert.deepEqual(results.core.map((c) => c.kind), ['rsa', 'ec']);
    for (const core of results.core) {
      assert.ok(core.single.certs > 0 && core.single.certsPerSecond > 0, `${core.kind}: no certificate issued on one thread`);
      assert.ok(core.all.threads >= 1 && core.all.certsPerSecond > 0, `${core.kind}: no certificate issued on worker threads`);
      for (const ratio of [core.singleRatio, core.allRatio]) assert.ok(Number.isFinite(ratio) && ratio > 0, `${core.kind}: ratio ${ratio}`);
      for (const step of ['parseCsr', 'verifyCsr', 'buildAndSign', 'signOnly', 'pemChain', 'issue']) {
        assert.ok(core.steps[step]! > 0, `${core.kind}: step ${step} not measured`);
      }
    }
    // Every target is listed; the ones of parts that did not run say so instead of passing.
    assert.ok(results.targets.length >= 7);
    assert.ok(results.targets.every((t) => t.met === null));
    assert.match(stdout, /\*\*1\. Limit\*\*/);
    assert.match(stdout, /\| RSA-2048 \| [\d,]+ \| [\d.]+x \| \d+ \| [\d,]+ \| [\d.]+x \|/);
    assert.match(stdout, /\| P-256 \| [\d,]+ \| [\d.]+x \| \d+ \| [\d,]+ \| [\d.]+x \|/);
  });

  it('refuses an unknown part with a message naming the parts', async () => {
    const child = spawn(process.execPath, [...BENCH_ENTRY, '--only', 'nonsense'], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    assert.equal(code, 1);
    assert.match(stderr, /unknown part "nonsense" in --only \(parts: limit, core, e2e, apiserver, agent, pkcs11, kubernetes, stages\)/);
  });
});

/** What OpenSSL reads from these SPKI bytes, or null when it refuses them. */
function opensslKey(spki: Buffer): KeyObject | null {
  try {
    return createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    return null;
  }
}

const rsaKeys = [
  generateKeyPairFor('rsa-2048'),
  generateKeyPairSync('rsa', { modulusLength: 3072, publicExponent: 3 }),
  generateKeyPairOf({ type: 'rsa', bits: 2056 }),
];
const ecKeys = [
  generateKeyPairFor('ec-p256'),
  generateKeyPairFor('ec-p384'),
  generateKeyPairOf({ type: 'ec', curve: 'secp521r1' }),
];
const template = parseCsr(createCsr({ privateKey: ecKeys[0]!.privateKey, uris: ['spiffe://cluster.local/ns/a/sa/b'] }));

/** csrPublicKey only reads the strictly parsed key; the rest of a parsed CSR does not matter to it. */
function csrWithSpki(spki: Buffer): ParsedCsr {
  const read = readCsrPublicKey(spki);
  const key = read.key;
  return { ...template, spkiDer: read.spkiDer, publicKey: key, key: key.kind === 'rsa' ? { kind: 'rsa', bits: key.bits } : { kind: 'ec', curve: key.curve } };
}

describe('signing hot path', () => {
  it('imports CSR keys (via JWK) as exactly the key their SPKI holds', () => {
    for (const { privateKey } of [...rsaKeys, ...ecKeys]) {
      const csr = parseCsr(createCsr({ privateKey, uris: ['spiffe://cluster.local/ns/a/sa/b'] }));
      assert.ok(csrPublicKey(csr).equals(createPublicKey(privateKey)));
      assert.ok(verifyCsr(csr).equals(createPublicKey(privateKey)));
    }
  });

  it('reads from altered SPKI bytes only canonical keys, and exactly the key OpenSSL reads from them', () => {
    const canonical = [...rsaKeys, ...ecKeys].map((k) => spkiDer(k.privateKey));
    for (const spki of canonical) assert.ok(csrPublicKey(csrWithSpki(spki)).equals(createPublicKey({ key: spki, format: 'der', type: 'spki' })));
    const mutation = fc.record({
      which: fc.nat({ max: canonical.length - 1 }),
      edits: fc.array(fc.record({ at: fc.nat({ max: 600 }), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 3 }),
      cut: fc.integer({ min: -3, max: 3 }),
    });
    fc.assert(
      fc.property(mutation, ({ which, edits, cut }) => {
        let bytes = Buffer.from(canonical[which]!);
        for (const edit of edits) bytes[edit.at % bytes.length] = edit.value;
        if (cut < 0) bytes = bytes.subarray(0, bytes.length + cut);
        if (cut > 0) bytes = Buffer.concat([bytes, Buffer.alloc(cut)]);
        let ours: KeyObject | null;
        try {
          ours = csrPublicKey(csrWithSpki(bytes));
        } catch {
          ours = null;
        }
        if (ours) {
          const theirs = opensslKey(bytes);
          assert.ok(theirs, 'a key was read from bytes OpenSSL refuses');
          assert.ok(ours.equals(theirs), 'a different key was read than OpenSSL reads');
          assert.ok(bytes.equals(theirs.export({ format: 'der', type: 'spki' })), 'a key was read from a non-canonical SPKI');
        }
        return true;
      }),
      { numRuns: 600 },
    );
  });

  it('refuses an EC point that is not on the curve, like OpenSSL', () => {
    const spki = Buffer.from(spkiDer(ecKeys[0]!.privateKey));
    spki[spki.length - 1] = spki[spki.length - 1]! ^ 0x01; // y off by one: no longer on P-256
    assert.equal(opensslKey(spki), null);
    assert.throws(() => csrPublicKey(csrWithSpki(spki)), /not a point on P-256/);
  });

  it('refuses an RSA CSR whose signature was made by another key, on the fast path too', () => {
    const signer = rsaKeys[0]!.privateKey;
    const honest = parseCsr(createCsr({ privateKey: signer, uris: ['spiffe://cluster.local/ns/a/sa/b'] }));
    const other = csrWithSpki(spkiDer(generateKeyPairFor('rsa-2048').privateKey));
    const forged: ParsedCsr = { ...honest, spkiDer: other.spkiDer, publicKey: other.publicKey, key: other.key };
    assert.throws(() => verifyCsr(forged), /CSR signature does not verify/);
  });

  it('writes certificates OpenSSL verifies, with exactly the SANs asked for, whatever their number and length', async () => {
    for (const kind of ['rsa', 'ec'] as const) {
      const ca = kind === 'rsa' ? generateKeyPairFor('rsa-2048') : generateKeyPairFor('ec-p256');
      const rootDer = createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: ca.privateKey, notAfter: new Date(Date.now() + 86400_000) });
      const root = parseCertificate(rootDer);
      const issuer = new LeafIssuer({ certificate: root, privateKey: ca.privateKey });
      const leafKey = spkiDer(generateKeyPairFor('ec-p256').privateKey);
      const segment = fc.stringMatching(/^[a-z0-9._-]{1,200}$/);
      const sans = fc.record({
        uris: fc.array(segment.map((s) => `spiffe://cluster.local/ns/${s}/sa/x`), { minLength: 1, maxLength: 4 }),
        dnsNames: fc.array(fc.stringMatching(/^[a-z0-9-]{1,60}(\.[a-z0-9-]{1,60}){0,3}$/), { maxLength: 3 }),
        ttlSeconds: fc.integer({ min: 1, max: 90 * 86400 }),
      });
      await fc.assert(
        fc.asyncProperty(sans, async ({ uris, dnsNames, ttlSeconds }) => {
          const leaf = issuer.issue({ spkiDer: leafKey, uris, dnsNames, ttlSeconds });
          const parsed = parseCertificate(leaf.der);
          assert.deepEqual(parsed.sans.uris, uris);
          assert.deepEqual(parsed.sans.dnsNames, dnsNames);
          assert.equal(parsed.serialHex, leaf.serialHex);
          assert.equal(parsed.notAfter.getTime(), leaf.notAfter.getTime());
          assert.ok(parsed.spkiDer.equals(leafKey));
          // A second before the leaf's NotAfter (OpenSSL counts NotAfter itself as expired): a 1 s leaf may be past
          // it by the time a loaded machine runs openssl.
          const at = String(Math.floor(leaf.notAfter.getTime() / 1000) - 1);
          const verified = opensslVerify(certificateToPem(leaf.der), '', certificateToPem(rootDer), ['-purpose', 'any', '-attime', at]);
          assert.ok(verified.ok, verified.output);
        }),
        { numRuns: 15 },
      );
    }
  });
});
