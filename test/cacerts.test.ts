/**
 * Plugged-in CA certificates (ROOT_CA_DIR): both layouts and a 3-level chain issue chains `openssl verify`
 * accepts through the real `meshca ca`; every kind of broken directory is refused at start with its own line; a
 * Kubernetes-style `..data` symlink swap under continuous load switches issuers with zero failed requests, and
 * every response verifies against the bundle it advertises; a broken update is refused, counted, and the current
 * material keeps signing; old roots stay in the bundle after a swap until they expire, but not after a removal.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import {
  CacertsError,
  CACERTS_RELOAD_ERRORS_METRIC,
  openCacertsSigner,
  readCacertsSnapshot,
  validateCacerts,
  type CacertsProblem,
  type ManagedLocalSigner,
} from '../src/ca/index.js';
import { createLogger } from '../src/log.js';
import { createCsr, generateKeyPairFor, spkiDer } from '../src/pki/index.js';
import type { IstioCaClient } from '../src/wire/protos.js';
import { caClient, createCertificate, getText, metricValue, opensslKeyAndCsr, type CallResult } from './ca-helpers.js';
import {
  certManagerFiles,
  eventually,
  expectStartFailure,
  istioFiles,
  makeChain,
  makeRoot,
  makeSubCa,
  startCaProcess,
  writeFiles,
  writeSecretVolume,
  x509,
  type ChainFixture,
} from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { caStartupError, cliOutcome } from './support/ca-startup.js';
import { ManualClock, wholeSecondNow } from './support/manual-clock.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const SPIFFE = 'spiffe://cluster.local/ns/default/sa/httpbin';

function assertOk(result: CallResult): string[] {
  if (!result.ok) assert.fail(`expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

/**
 * Independent check with node's X509Certificate: the leaf chains through the response's intermediates to a root
 * in the bundle the same response advertises (its last element). Returns the signing CA and root subjects.
 */
function verifyAgainstAdvertisedBundle(chain: string[]): { issuer: string; root: string } {
  const parse = (text: string): X509Certificate[] => (text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));
  const leaf = parse(chain[0]!)[0]!;
  const intermediates = chain.slice(1, -1).flatMap(parse);
  const roots = parse(chain[chain.length - 1]!);
  let current = leaf;
  for (let depth = 0; depth < 5; depth++) {
    const root = roots.find((r) => current.checkIssued(r) && current.verify(r.publicKey));
    if (root) return { issuer: leaf.issuer, root: root.subject };
    const next = intermediates.find((c) => current.checkIssued(c) && current.verify(c.publicKey));
    if (!next) throw new Error(`no issuer in the response for ${current.subject || current.subjectAltName}`);
    current = next;
  }
  throw new Error('chain too long');
}

describe('plugged-in CA certificates (cacerts)', () => {
  const temp = makeTempDir('meshca-cacerts-');
  const logger = createLogger({ level: 'silent', format: 'json' });
  let kube: KubeStandin;
  let token: string;
  let csrPem: string;
  const running: { stop: () => Promise<unknown> }[] = [];

  before(async () => {
    kube = await startKubeStandin();
    token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', ttlSeconds: 3600 });
    csrPem = opensslKeyAndCsr(temp.dir, 'workload', { spiffeId: SPIFFE }).csrPem;
  });

  after(async () => {
    for (const r of running) await r.stop();
    await kube?.close();
    temp.cleanup();
  });

  async function issueThroughBinary(dir: string, args: string[], trustPem: string): Promise<{ chain: string[]; keySource: unknown }> {
    const ca = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--state-dir', path.join(dir, '..', `${path.basename(dir)}-state`), ...args], {
      ROOT_CA_DIR: dir,
    });
    running.push({ stop: () => ca.proc.stop('SIGKILL') });
    const client = caClient(ca.grpcAddress, trustPem);
    try {
      return { chain: assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 3600 })), keySource: ca.ready.keySource };
    } finally {
      client.close();
      await ca.proc.stop();
    }
  }

  test('Istio layout with RSA keys: the real CA issues chains openssl verifies, and a filled ROOT_CA_DIR is the default source', async () => {
    const chain = await makeChain('rsa', 2, 'rsa');
    const dir = path.join(temp.dir, 'istio-rsa');
    await writeFiles(dir, istioFiles(chain));
    // No --ca-source: ROOT_CA_DIR holding files selects cacerts.
    const result = await issueThroughBinary(dir, [], chain.root.pem);
    assert.equal(result.keySource, 'cacerts');
    assert.equal(result.chain.length, 3, 'leaf, signing CA, root');
    const verified = opensslVerifyResponseChain(result.chain);
    assert.ok(verified.ok, verified.output);
    assert.equal(new X509Certificate(result.chain[1]!).subject, 'CN=rsa signing CA');
  });

  test('Istio layout with ECDSA keys and a 3-level chain returns the full chain (leaf, signing CA, intermediate, root)', async () => {
    const chain = await makeChain('ec', 3, 'ec3');
    const dir = path.join(temp.dir, 'istio-ec3');
    await writeFiles(dir, istioFiles(chain));
    const result = await issueThroughBinary(dir, ['--ca-source', 'cacerts'], chain.root.pem);
    assert.deepEqual(
      result.chain.map((p) => new X509Certificate(p).subject ?? ''),
      ['', 'CN=ec3 signing CA', 'CN=ec3 intermediate', 'CN=ec3 root'],
    );
    const verified = opensslVerifyResponseChain(result.chain);
    assert.ok(verified.ok, verified.output);
  });

  test('cert-manager layout (tls.crt with its chain, tls.key, ca.crt) issues chains openssl verifies', async () => {
    // EC keys: the layout is the point here (RSA signing CAs are covered by the Istio-layout test above).
    const chain = await makeChain('ec', 3, 'cm');
    const dir = path.join(temp.dir, 'cert-manager');
    await writeFiles(dir, certManagerFiles(chain));
    const result = await issueThroughBinary(dir, ['--ca-source', 'cacerts'], chain.root.pem);
    assert.equal(result.chain.length, 4);
    const verified = opensslVerifyResponseChain(result.chain);
    assert.ok(verified.ok, verified.output);
  });

  test('each kind of broken cacerts is refused at start with its own one-line message naming the file', async () => {
    const good = await makeChain('ec', 2, 'good');
    const other = await makeChain('ec', 2, 'other');
    const past = new Date(Date.now() - 2 * 3600_000);
    const expiredRoot = await makeRoot('expired root', 'ec', { notBefore: new Date(Date.now() - 10 * 3600_000), notAfter: past });
    const expiredSigning = await makeSubCa('expired signing CA', 'ec', good.root, { notBefore: new Date(Date.now() - 10 * 3600_000), notAfter: past });
    const leafAsCa = await makeSubCa('not a CA', 'ec', good.root, { ca: false, keyUsage: x509.KeyUsageFlags.digitalSignature });
    const noCertSign = await makeSubCa('no certsign', 'ec', good.root, { keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.cRLSign });
    const underExpiredRoot = await makeSubCa('under expired root', 'ec', expiredRoot);
    const withSigning = (signing: ChainFixture['signing'], root = good.root): ChainFixture => ({ root, signing });
    const base = istioFiles(good);
    const cases: { name: string; problem: CacertsProblem; files: Record<string, string>; message: RegExp }[] = [
      { name: 'partial', problem: 'incomplete', files: { ...base, 'cert-chain.pem': '' }, message: /incomplete signing CA bundle in .*partial: missing cert-chain\.pem/ },
      {
        name: 'cm-partial',
        problem: 'incomplete',
        files: { 'tls.crt': certManagerFiles(good)['tls.crt']!, 'tls.key': good.signing.keyPem },
        message: /incomplete signing CA bundle in .*cm-partial: tls\.crt is present but ca\.crt is missing/,
      },
      { name: 'bad-cert', problem: 'bad-certificate', files: { ...base, 'ca-cert.pem': 'not a certificate\n' }, message: /bad-cert\/ca-cert\.pem holds no PEM certificate/ },
      { name: 'bad-key', problem: 'bad-key', files: { ...base, 'ca-key.pem': 'garbage\n' }, message: /bad-key\/ca-key\.pem is not a readable unencrypted PEM private key/ },
      {
        name: 'mismatch',
        problem: 'key-mismatch',
        files: { ...base, 'ca-key.pem': other.signing.keyPem },
        message: /mismatch\/ca-key\.pem does not belong to the certificate in .*mismatch\/ca-cert\.pem/,
      },
      { name: 'not-ca', problem: 'not-ca', files: istioFiles(withSigning(leafAsCa)), message: /not-ca\/ca-cert\.pem is not a CA certificate/ },
      { name: 'no-certsign', problem: 'no-keycertsign', files: istioFiles(withSigning(noCertSign)), message: /no-certsign\/ca-cert\.pem lacks keyUsage keyCertSign/ },
      {
        name: 'expired-signing',
        problem: 'expired',
        files: istioFiles(withSigning(expiredSigning)),
        message: /expired-signing\/ca-cert\.pem: the signing CA certificate "CN=expired signing CA" .* expired at/,
      },
      {
        name: 'expired-root',
        problem: 'expired',
        files: istioFiles(withSigning(underExpiredRoot, expiredRoot)),
        message: /expired-root\/root-cert\.pem: root "CN=expired root" .* expired at/,
      },
      {
        name: 'wrong-root',
        problem: 'chain',
        files: { ...base, 'root-cert.pem': `${other.root.pem}\n` },
        message: /wrong-root\/cert-chain\.pem does not lead from ca-cert\.pem to a root in root-cert\.pem: no trusted issuer/,
      },
    ];
    for (const c of cases) {
      const files = Object.fromEntries(Object.entries(c.files).filter(([, v]) => v !== ''));
      await writeFiles(path.join(temp.dir, 'broken', c.name), files);
      // In-process: the typed problem code.
      const snapshot = await readCacertsSnapshot(path.join(temp.dir, 'broken', c.name));
      assert.throws(
        () => validateCacerts(snapshot),
        (error: unknown) => {
          assert.ok(error instanceof CacertsError, c.name);
          assert.equal(error.problem, c.problem, c.name);
          assert.match(error.message, c.message, c.name);
          return true;
        },
      );
    }
    // `meshca ca`'s own start-up: one line, the right message, exit 1, no key material in the output. Two cases
    // (a file missing, a key that reads but does not match) run the real binary, which proves what the command
    // line adds; the others run the same start-up in process (support/ca-startup.ts), a CA start cheaper each.
    const onBinary = new Set(['partial', 'mismatch']);
    const results = await Promise.all(
      cases.map(async (c) => {
        const args = ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'broken-state', c.name)];
        const env = { ROOT_CA_DIR: path.join(temp.dir, 'broken', c.name) };
        return onBinary.has(c.name) ? expectStartFailure(args, env) : cliOutcome(await caStartupError(args, env));
      }),
    );
    results.forEach((result, index) => {
      const c = cases[index]!;
      assert.equal(result.code, 1, `${c.name}: exit code`);
      const lines = result.stderr.split('\n').filter((l) => l.startsWith('meshca: '));
      assert.equal(lines.length, 1, `${c.name}: one line, got:\n${result.stderr}`);
      assert.match(lines[0]!, c.message, c.name);
      assert.doesNotMatch(result.stderr, /PRIVATE KEY/);
    });
  });

  test('a ..data symlink swap under continuous load switches issuers with zero failed requests; every response verifies against its advertised bundle', async (t) => {
    const a = await makeChain('ec', 2, 'swap-a');
    const b = await makeChain('ec', 3, 'swap-b');
    const other = await makeChain('ec', 2, 'swap-other');
    const dir = path.join(temp.dir, 'volume');
    await writeSecretVolume(dir, istioFiles(a));
    const ca = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'cacerts', '--state-dir', path.join(temp.dir, 'volume-state')], { ROOT_CA_DIR: dir });
    running.push({ stop: () => ca.proc.stop('SIGKILL') });
    // The client trusts both roots: the CA's serving certificate follows the swap too.
    const client: IstioCaClient = caClient(ca.grpcAddress, `${a.root.pem}\n${b.root.pem}\n`);
    // Many workloads, as in a mesh (and under the CA's per-identity rate limit).
    const tokens = await Promise.all(Array.from({ length: 50 }, (_, i) => kube.mintToken({ namespace: 'default', serviceAccount: `load-${i}`, ttlSeconds: 3600 })));
    const results: { startedAt: number; result: CallResult }[] = [];
    const pending: Promise<void>[] = [];
    // Open-loop load offered at a steady 50 requests/s, so requests are in flight throughout every phase (the
    // swap included): each tick catches up with the schedule, and a CA that falls behind makes requests queue, none
    // of which may fail. The phases are marked by answer counts, so the proof is the ≈ 100–200 requests around the
    // refused update and the swap, whatever the rate; throughput (the issue's ≥ 200 req/s) is measured by
    // `npm run bench`, not here, where every offered request only costs CPU. At most MAX_IN_FLIGHT wait at once, so
    // a machine too busy to keep up slows the schedule (reported below) instead of timing requests out.
    const RATE = 50;
    const MAX_IN_FLIGHT = 500;
    const loadStarted = Date.now();
    let offered = 0;
    let credit = 0;
    let lastTick = loadStarted;
    const ticker = setInterval(() => {
      const now = Date.now();
      credit += ((now - lastTick) / 1000) * RATE;
      lastTick = now;
      for (; credit >= 1 && offered - results.length < MAX_IN_FLIGHT; credit--, offered++) {
        const startedAt = Date.now();
        const request = { csr: csrPem, token: tokens[offered % tokens.length]!, validitySeconds: 600 };
        pending.push(createCertificate(client, request).then((result) => void results.push({ startedAt, result })));
      }
      // Requests the CA could not take are dropped from the schedule rather than piled up.
      if (offered - results.length >= MAX_IN_FLIGHT) credit = 0;
    }, 10);
    let loadSeconds = 0;
    try {
      // Answers, not a fixed time, mark each phase: the load is under way when 50 requests have been answered.
      const answered = (count: number, startedAfter = 0): Promise<true> =>
        eventually(() => (results.filter((r) => r.startedAt > startedAfter).length >= count ? true : undefined), 60_000, `${count} answered requests`);
      await answered(50);
      // A broken update first (key of another CA): refused, logged, the current material keeps signing.
      await writeSecretVolume(dir, { ...istioFiles(a), 'ca-key.pem': other.signing.keyPem });
      const refused = await ca.proc.waitForLog(/^refused to reload the plugged-in CA certificates/, 10_000);
      assert.match(String(refused.msg), /ca-key\.pem does not belong to the certificate/);
      assert.equal(refused.problem, 'key-mismatch');
      const metrics = await getText(`http://${String(ca.ready.monitoringAddress)}/metrics`);
      assert.ok(metricValue(metrics.body, CACERTS_RELOAD_ERRORS_METRIC) >= 1, 'the refused reload is counted on /metrics');
      // The old material keeps signing after the refusal: 25 more requests are answered.
      const answeredAtRefusal = results.length;
      await eventually(() => (results.length >= answeredAtRefusal + 25 ? true : undefined), 60_000, '25 answers after the refusal');
      await writeSecretVolume(dir, istioFiles(b));
      const reloaded = await ca.proc.waitForLog(/^reloaded the plugged-in CA certificates$/, 10_000);
      assert.equal(reloaded.issuerChanged, true);
      const swappedAt = Date.now();
      await answered(25, swappedAt);
      clearInterval(ticker);
      loadSeconds = (Date.now() - loadStarted) / 1000;
      await Promise.all(pending);
      const completedSeconds = (Date.now() - loadStarted) / 1000;
      const failures = results.filter((r) => !r.result.ok);
      t.diagnostic(
        `${offered} requests offered in ${loadSeconds.toFixed(1)} s (${(offered / loadSeconds).toFixed(0)}/s), all answered after ${completedSeconds.toFixed(1)} s, ${failures.length} failed`,
      );
      assert.equal(results.length, offered);
      assert.equal(failures.length, 0, `failed requests: ${JSON.stringify(failures.slice(0, 3))}`);
      const issuers = new Map<string, number>();
      for (const { startedAt, result } of results) {
        const chain = assertOk(result);
        const { issuer } = verifyAgainstAdvertisedBundle(chain);
        issuers.set(issuer, (issuers.get(issuer) ?? 0) + 1);
        // Requests started after the reload was logged get the new issuer, and the bundle carries both roots.
        if (startedAt > swappedAt) {
          assert.equal(issuer, 'CN=swap-b signing CA');
          const bundle = chain[chain.length - 1]!;
          assert.ok(bundle.includes(a.root.pem.split('\n')[1]!) && bundle.includes(b.root.pem.split('\n')[1]!), 'bundle = new root ∪ old root');
        }
      }
      assert.deepEqual([...issuers.keys()].sort(), ['CN=swap-a signing CA', 'CN=swap-b signing CA']);
      // One response of each issuer through openssl as well.
      for (const name of ['CN=swap-a signing CA', 'CN=swap-b signing CA']) {
        const sample = results.map((r) => assertOk(r.result)).find((c) => new X509Certificate(c[0]!).issuer === name)!;
        const verified = opensslVerifyResponseChain(sample);
        assert.ok(verified.ok, verified.output);
      }
    } finally {
      clearInterval(ticker);
      await Promise.all(pending);
      client.close();
      await ca.proc.stop();
    }
  });

  describe('in-process reload', () => {
    const csr = (() => {
      const key = generateKeyPairFor('ec-p256').privateKey;
      return { spkiDer: spkiDer(key), csrPem: createCsr({ privateKey: key, uris: [SPIFFE] }) };
    })();
    const signed = async (signer: ManagedLocalSigner): Promise<X509Certificate> =>
      new X509Certificate((await signer.sign({ ...csr, uris: [SPIFFE], ttlSeconds: 60 })).chain[0]!);
    const rootsIn = (signer: ManagedLocalSigner): string[] => signer.current().roots.map((r) => r.subject).sort();

    test('a broken update in a plain directory is counted in meshca_cacerts_reload_errors_total and the current CA keeps signing', async () => {
      const a = await makeChain('rsa', 2, 'plain-a');
      const b = await makeChain('ec', 2, 'plain-b');
      const dir = path.join(temp.dir, 'plain');
      await writeFiles(dir, istioFiles(a));
      const registry = new Registry();
      const refused: CacertsError[] = [];
      const signer = await openCacertsSigner({ dir, logger, registry, onReloadError: (e) => refused.push(e), pollIntervalMs: 500 });
      try {
        const counter = async (): Promise<number> => (await registry.getSingleMetric(CACERTS_RELOAD_ERRORS_METRIC)!.get()).values[0]?.value ?? 0;
        assert.equal(await counter(), 0);
        // An admin copying files one by one: the certificate lands before its key.
        await fs.writeFile(path.join(dir, 'ca-cert.pem'), istioFiles(b)['ca-cert.pem']!);
        await eventually(() => (refused.length > 0 ? true : undefined), 5000, 'the refused reload');
        assert.equal(refused[0]!.problem, 'key-mismatch');
        assert.ok((await counter()) >= 1);
        assert.equal((await signed(signer)).issuer, 'CN=plain-a signing CA');
        for (const [name, content] of Object.entries(istioFiles(b))) await fs.writeFile(path.join(dir, name), content);
        await eventually(async () => ((await signed(signer)).issuer === 'CN=plain-b signing CA' ? true : undefined), 5000, 'the new issuer');
      } finally {
        await signer.close();
      }
    });

    test('after a root swap the old root stays in the bundle until it expires; a root removed from a multi-root file goes at once', async () => {
      // Virtual time for validity and for the expiry timer; the reloads themselves follow real file events.
      const clock = new ManualClock(wholeSecondNow());
      const now = clock.now();
      const shortRoot = await makeRoot('short-lived root', 'ec', { notBefore: new Date(now - 3600_000), notAfter: new Date(now + 3000) });
      const shortChain: ChainFixture = { root: shortRoot, signing: await makeSubCa('short signing CA', 'ec', shortRoot, { notAfter: new Date(now + 3000) }) };
      const next = await makeChain('ec', 2, 'next');
      const dir = path.join(temp.dir, 'carry');
      await writeSecretVolume(dir, istioFiles(shortChain));
      const signer = await openCacertsSigner({ dir, logger, pollIntervalMs: 500, clock });
      try {
        await writeSecretVolume(dir, istioFiles(next));
        await eventually(async () => ((await signed(signer)).issuer === 'CN=next signing CA' ? true : undefined), 5000, 'the swap');
        assert.deepEqual(rootsIn(signer), ['CN=next root', 'CN=short-lived root']);
        // The old root's expiry timer is due one second after its NotAfter, and not before.
        assert.equal(clock.nextTimerAt(), now + 3000 + 1000);
        await clock.advanceTo(now + 3999);
        assert.deepEqual(rootsIn(signer), ['CN=next root', 'CN=short-lived root'], 'still carried a millisecond before');
        await clock.advanceTo(now + 4000);
        await eventually(() => (rootsIn(signer).length === 1 ? true : undefined), 5000, 'the old root to expire out of the bundle');
        assert.deepEqual(rootsIn(signer), ['CN=next root']);

        // Multi-root rotation the Istio way: root-cert.pem = old + new, then the old one is removed.
        const third = await makeChain('ec', 2, 'third');
        await writeSecretVolume(dir, istioFiles(next, `${next.root.pem}\n${third.root.pem}\n`));
        await eventually(() => (rootsIn(signer).length === 2 ? true : undefined), 5000, 'the multi-root bundle');
        await writeSecretVolume(dir, istioFiles(third, `${third.root.pem}\n`));
        await eventually(async () => ((await signed(signer)).issuer === 'CN=third signing CA' ? true : undefined), 5000, 'the third issuer');
        assert.deepEqual(rootsIn(signer), ['CN=third root']);
      } finally {
        await signer.close();
      }
    });
  });
});
