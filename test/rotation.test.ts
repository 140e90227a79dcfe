/**
 * Self-signed root rotation. End to end: the real `meshca ca` with a short-lived root rotates it (publish the new
 * root, switch after the overlap) while two workloads renew their certificates at half-life and run an mTLS
 * connection loop (node:tls) the whole time: no handshake may fail, even though the CA is killed (SIGKILL) between
 * rotation steps and restarted. In-process, on a fake clock: the plan for each state (including dropping the old
 * root once it expires, which the end-to-end test does not wait for), and resuming from every crash point of the
 * state-directory writes.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { connect, createServer, type Server, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  createSelfSignedRoot,
  FileCaStore,
  LocalSigner,
  planRotation,
  RootRotator,
  SELF_SIGNED_FILES,
  type RotationPolicy,
} from '../src/ca/index.js';
import { parseStoredState } from '../src/ca/selfsigned.js';
import { createLogger } from '../src/log.js';
import { certificatesFromPem } from '../src/pki/index.js';
import { caClient, createCertificate, opensslKeyAndCsr } from './ca-helpers.js';
import { eventually, sleep, startCaProcess, type StartedCa } from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const logger = createLogger({ level: 'silent', format: 'json' });

/** A workload like istio-agent: renews at half-life, trusts the bundle of its latest response. */
class Workload {
  certPem = '';
  keyPem: string;
  bundlePem = '';
  issuers = new Set<string>();
  renewals = 0;
  renewalErrors = 0;
  private csrPem: string;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  onRenew: () => void = () => undefined;

  constructor(
    dir: string,
    readonly name: string,
    private readonly token: string,
    private readonly ca: () => { address: string; trustPem: string },
    private readonly ttlSeconds: number,
  ) {
    const made = opensslKeyAndCsr(dir, name, { spiffeId: `spiffe://cluster.local/ns/default/sa/${name}` });
    this.keyPem = made.keyPem;
    this.csrPem = made.csrPem;
  }

  async renew(): Promise<void> {
    const { address, trustPem } = this.ca();
    // Trust what the last response advertised (it carries new roots before they sign anything).
    const client = caClient(address, this.bundlePem || trustPem);
    try {
      const result = await createCertificate(client, { csr: this.csrPem, token: this.token, validitySeconds: this.ttlSeconds });
      if (!result.ok) throw new Error(result.details);
      const verified = opensslVerifyResponseChain(result.chain);
      assert.ok(verified.ok, verified.output);
      this.certPem = result.chain.slice(0, -1).join('');
      this.bundlePem = result.chain[result.chain.length - 1]!;
      // Self-signed roots all share one subject, so the issuing root is told apart by its key.
      const leaf = new X509Certificate(result.chain[0]!);
      const roots = (this.bundlePem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));
      this.issuers.add(roots.find((r) => leaf.verify(r.publicKey))!.fingerprint256);
      this.renewals++;
      this.onRenew();
    } finally {
      client.close();
    }
  }

  /** Renews at half of the lifetime (the grace ratio), retrying every 200 ms while the CA is unreachable. */
  start(): void {
    const loop = async (): Promise<void> => {
      if (this.stopped) return;
      let delay = (this.ttlSeconds * 1000) / 2;
      try {
        await this.renew();
      } catch {
        this.renewalErrors++;
        delay = 200;
      }
      if (!this.stopped) this.timer = setTimeout(() => void loop(), delay);
    };
    this.timer = setTimeout(() => void loop(), (this.ttlSeconds * 1000) / 2);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}

describe('self-signed root rotation', () => {
  const temp = makeTempDir('meshca-rotation-');
  let kube: KubeStandin;

  before(async () => {
    kube = await startKubeStandin();
  });

  after(async () => {
    await kube?.close();
    temp.cleanup();
  });

  test('an mTLS loop between two renewing workloads sees no handshake failure across a root switch, with a CA crash between steps', async (t) => {
    const stateDir = path.join(temp.dir, 'e2e-state');
    // Workload certificates live 10 s (renewed at 5 s), which rides out a CA restart of several seconds on a busy
    // machine; the 8 s overlap exceeds one renewal interval plus such a restart, so both workloads learn the new root
    // before it signs. The 26 s root is due for rotation at 25% of its life (6.5 s), switches 8 s later and expires
    // 11.5 s after the switch: longer than a workload certificate, so no certificate from the first root is cut
    // short by its expiry, and the test ends (two renewals after the switch) around when it expires.
    const env = {
      CITADEL_SELF_SIGNED_CA_CERT_TTL: '26s',
      CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE: '75',
      CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL: '1s',
    };
    const args = ['--kubeconfig', kube.kubeconfigPath, '--state-dir', stateDir, '--ca-key-type', 'ec-p256', '--root-rotation-overlap', '8s'];
    let ca: StartedCa = await startCaProcess(args, env);
    const initialRoot = readFileSync(path.join(stateDir, 'root-cert.pem'), 'utf8');
    const caInfo = (): { address: string; trustPem: string } => ({ address: ca.grpcAddress, trustPem: initialRoot });
    const serverToken = await kube.mintToken({ namespace: 'default', serviceAccount: 'server', ttlSeconds: 3600 });
    const clientToken = await kube.mintToken({ namespace: 'default', serviceAccount: 'client', ttlSeconds: 3600 });
    const serverWorkload = new Workload(temp.dir, 'server', serverToken, caInfo, 10);
    const clientWorkload = new Workload(temp.dir, 'client', clientToken, caInfo, 10);
    await serverWorkload.renew();
    await clientWorkload.renew();

    const handshakeErrors: string[] = [];
    let handshakes = 0;
    const server: Server = createServer({
      key: serverWorkload.keyPem,
      cert: serverWorkload.certPem,
      ca: serverWorkload.bundlePem,
      requestCert: true,
      rejectUnauthorized: true,
    });
    server.on('secureConnection', (socket: TLSSocket) => socket.end('ok'));
    server.on('tlsClientError', (error) => handshakeErrors.push(`server: ${error.message}`));
    serverWorkload.onRenew = () => server.setSecureContext({ key: serverWorkload.keyPem, cert: serverWorkload.certPem, ca: serverWorkload.bundlePem });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    serverWorkload.start();
    clientWorkload.start();

    let looping = true;
    const loop = (async () => {
      while (looping) {
        await new Promise<void>((resolve) => {
          const socket = connect({
            host: '127.0.0.1',
            port,
            key: clientWorkload.keyPem,
            cert: clientWorkload.certPem,
            ca: clientWorkload.bundlePem,
            // Identity is checked below by SPIFFE ID, as Envoy does, not by hostname.
            checkServerIdentity: () => undefined,
          });
          socket.on('secureConnect', () => {
            const peer = socket.getPeerX509Certificate();
            if (!socket.authorized || peer?.subjectAltName !== 'URI:spiffe://cluster.local/ns/default/sa/server') {
              handshakeErrors.push(`client: not authorized (${String(socket.authorizationError)})`);
            } else handshakes++;
            socket.resume();
          });
          socket.on('error', (error) => {
            handshakeErrors.push(`client: ${error.message}`);
            resolve();
          });
          socket.on('close', () => resolve());
        });
        await sleep(40);
      }
    })();

    try {
      // Each step is read from the state directory the CA commits it to (atomic renames), not from log wording.
      const rootsOnDisk = (): number => certificatesFromPem(readFileSync(path.join(stateDir, SELF_SIGNED_FILES.roots), 'utf8')).length;
      const firstRootDer = certificatesFromPem(initialRoot)[0]!;
      const signingOnDisk = (): Buffer => certificatesFromPem(readFileSync(path.join(stateDir, SELF_SIGNED_FILES.cert), 'utf8'))[0]!;
      await eventually(() => (rootsOnDisk() === 2 ? true : undefined), 30_000, 'the new root to be published');
      // Both workloads renew once more first (they renew in step), so they trust the new root before it signs, and
      // the CA is killed just after their renewals: each certificate then has nearly its whole lifetime (10 s) left
      // for the CA to restart in, not what was left of it when the root happened to be published.
      const trustsBothRoots = (workload: Workload): boolean => certificatesFromPem(workload.bundlePem).length === 2;
      await eventually(() => (trustsBothRoots(clientWorkload) && trustsBothRoots(serverWorkload) ? true : undefined), 15_000, 'both workloads to trust the new root');
      // Crash between "published" and "switched", then resume from the state directory.
      const publishedBeforeCrash = readFileSync(path.join(stateDir, SELF_SIGNED_FILES.roots), 'utf8');
      await ca.proc.stop('SIGKILL');
      ca = await startCaProcess(args, env);
      // Every root published before the crash still is. (On a slow machine the restart can come after the 8 s
      // overlap: the CA then switches at once, and the new root, 6.5 s into its 26 s life, is itself due, so a
      // third root is published as planned; counting roots would make that a failure.)
      const publishedAfterRestart = certificatesFromPem(readFileSync(path.join(stateDir, SELF_SIGNED_FILES.roots), 'utf8'));
      for (const root of certificatesFromPem(publishedBeforeCrash)) {
        assert.ok(publishedAfterRestart.some((der) => der.equals(root)), 'the new root is still published');
      }
      await eventually(() => (!signingOnDisk().equals(firstRootDer) ? true : undefined), 25_000, 'signing to switch to the new root');
      // Each workload renews at least twice after the switch: the second renewal is surely signed by the new root
      // and was asked for over TLS trusting what the first one advertised. Dropping the first root once it expires
      // is not waited for here (it would cost the root's remaining lifetime in real time); the same file's
      // "in process, with a fake clock" tests prove the drop and the bundle after it.
      const clientAtSwitch = clientWorkload.renewals;
      const serverAtSwitch = serverWorkload.renewals;
      await eventually(
        () => (clientWorkload.renewals >= clientAtSwitch + 2 && serverWorkload.renewals >= serverAtSwitch + 2 ? true : undefined),
        30_000,
        'two renewals of each workload after the switch',
      );
    } finally {
      looping = false;
      await loop;
      serverWorkload.stop();
      clientWorkload.stop();
      await new Promise((resolve) => server.close(resolve));
      await ca.proc.stop();
    }
    t.diagnostic(`${handshakes} handshakes, ${serverWorkload.renewals + clientWorkload.renewals} renewals, ${serverWorkload.renewalErrors + clientWorkload.renewalErrors} renewal retries while the CA restarted`);
    assert.deepEqual(handshakeErrors, []);
    assert.ok(handshakes > 100, `only ${handshakes} handshakes`);
    // Both workloads held certificates from the first root and from a later one. A root here is due for rotation
    // 6.5 s into its own life, so on a slow run the root after the next may already have signed before the test ends.
    const firstRoot = new X509Certificate(initialRoot).fingerprint256;
    for (const workload of [clientWorkload, serverWorkload]) {
      assert.ok(workload.issuers.has(firstRoot), 'a certificate from the first root');
      assert.ok(workload.issuers.size >= 2, `certificates from ${workload.issuers.size} root(s)`);
    }
  });

  describe('in process, with a fake clock', () => {
    const policy: RotationPolicy = { checkIntervalSeconds: 60, gracePeriodPercentile: 20, overlapSeconds: 10 };
    const t0 = Date.parse('2030-01-01T00:00:00Z');
    const rootOptions = (now: () => number) => ({ stateDir: '', trustDomain: 'cluster.local', keySpec: 'ec-p256' as const, ttlSeconds: 100, now });

    function rotator(store: FileCaStore, clock: { now: number }): RootRotator {
      return new RootRotator({
        store,
        policy,
        logger,
        now: () => clock.now,
        createRoot: async () => {
          const root = await createSelfSignedRoot(rootOptions(() => clock.now));
          return { certPem: root.certPem, keyPem: root.keyPem };
        },
      });
    }

    const bundleCount = async (dir: string): Promise<number> => certificatesFromPem(await fs.readFile(path.join(dir, SELF_SIGNED_FILES.roots), 'utf8')).length;

    test('publishes at the grace threshold, switches after the overlap, drops the old root when it expires', async () => {
      const dir = path.join(temp.dir, 'plan');
      const clock = { now: t0 };
      const store = new FileCaStore(dir);
      const r = rotator(store, clock);
      const { material } = await r.initialize();
      const signer = new LocalSigner('self-signed', material);
      r.attach(signer);
      const first = signer.current().signingCert;
      const plan = async () => planRotation(parseStoredState((await store.load())!.state, store), policy, clock.now);

      clock.now = t0 + 50_000;
      assert.deepEqual(await plan(), { kind: 'wait', until: t0 + 80_000 });
      clock.now = t0 + 81_000;
      assert.equal((await r.runOnce()).kind, 'wait');
      assert.equal(signer.current().roots.length, 2, 'new root published');
      assert.ok(signer.current().signingCert.der.equals(first.der), 'still signing with the old root');
      assert.equal(await bundleCount(dir), 2);
      clock.now = t0 + 85_000;
      assert.deepEqual(await plan(), { kind: 'wait', until: t0 + 91_000 });
      clock.now = t0 + 91_000;
      await r.runOnce();
      assert.ok(!signer.current().signingCert.der.equals(first.der), 'switched');
      assert.equal(signer.current().roots.length, 2, 'old root still trusted');
      await assert.rejects(fs.access(path.join(dir, SELF_SIGNED_FILES.nextKey)));
      clock.now = t0 + 101_000;
      await r.runOnce();
      assert.equal(signer.current().roots.length, 1, 'old root dropped after it expired');
      assert.equal(await bundleCount(dir), 1);
      await r.close();
    });

    test('resumes correctly from every crash point of the state-directory writes', async () => {
      // Reach "published" once, and keep copies of the files to replay partial writes from.
      const dir = path.join(temp.dir, 'crash-base');
      const clock = { now: t0 };
      const base = rotator(new FileCaStore(dir), clock);
      const old = (await base.initialize()).material.signingCert;
      clock.now = t0 + 81_000;
      await base.runOnce();
      await base.close();
      const files = Object.fromEntries(
        await Promise.all(Object.values(SELF_SIGNED_FILES).map(async (name) => [name, await fs.readFile(path.join(dir, name), 'utf8')] as const)),
      );
      const oldRootPem = files[SELF_SIGNED_FILES.cert]!;
      const nextCertPem = files[SELF_SIGNED_FILES.nextCert]!;
      const scenario = async (name: string, write: Record<string, string>, at: number) => {
        const d = path.join(temp.dir, `crash-${name}`);
        await fs.mkdir(d, { recursive: true });
        for (const [file, content] of Object.entries(write)) await fs.writeFile(path.join(d, file), content);
        const c = { now: at };
        const r = rotator(new FileCaStore(d), c);
        const { material } = await r.initialize();
        await r.close();
        return { material, dir: d };
      };
      const plain = { [SELF_SIGNED_FILES.cert]: oldRootPem, [SELF_SIGNED_FILES.key]: files[SELF_SIGNED_FILES.key]!, [SELF_SIGNED_FILES.roots]: oldRootPem };

      // 1. Crashed after writing only the next key: ignored, and a fresh next root is made and published.
      const onlyKey = await scenario('next-key-only', { ...plain, [SELF_SIGNED_FILES.nextKey]: files[SELF_SIGNED_FILES.nextKey]! }, t0 + 82_000);
      assert.ok(onlyKey.material.signingCert.der.equals(old.der));
      assert.equal(onlyKey.material.roots.length, 2);
      assert.equal(await bundleCount(onlyKey.dir), 2);
      const freshNext = await fs.readFile(path.join(onlyKey.dir, SELF_SIGNED_FILES.nextCert), 'utf8');
      assert.notEqual(freshNext, nextCertPem, 'a new next root, not the orphaned key');

      // 2. Next root written but not yet in root-cert.pem: published now, and the overlap starts now.
      const unpublished = await scenario(
        'unpublished',
        { ...plain, [SELF_SIGNED_FILES.nextKey]: files[SELF_SIGNED_FILES.nextKey]!, [SELF_SIGNED_FILES.nextCert]: nextCertPem },
        t0 + 95_000,
      );
      assert.ok(unpublished.material.signingCert.der.equals(old.der), 'never signs with an unpublished root');
      assert.equal(unpublished.material.roots.length, 2);
      const recorded = JSON.parse(await fs.readFile(path.join(unpublished.dir, SELF_SIGNED_FILES.rotation), 'utf8')) as { nextPublishedAt: string };
      assert.equal(Date.parse(recorded.nextPublishedAt), t0 + 95_000);

      // 3. Crashed in the middle of the switch (new key in place, certificate not yet): the switch is finished.
      const midSwitch = await scenario(
        'mid-switch',
        { ...files, [SELF_SIGNED_FILES.key]: files[SELF_SIGNED_FILES.nextKey]! },
        t0 + 92_000,
      );
      assert.equal(midSwitch.material.signingCert.der.toString('base64'), certificatesFromPem(nextCertPem)[0]!.toString('base64'));
      assert.equal(midSwitch.material.roots.length, 2, 'old root still trusted');
      assert.equal(await fs.readFile(path.join(midSwitch.dir, SELF_SIGNED_FILES.cert), 'utf8'), nextCertPem);

      // 4. Crashed after the switch, before the next-root files were removed: they are cleaned up.
      const afterSwitch = await scenario(
        'after-switch',
        { ...files, [SELF_SIGNED_FILES.key]: files[SELF_SIGNED_FILES.nextKey]!, [SELF_SIGNED_FILES.cert]: nextCertPem },
        t0 + 92_000,
      );
      assert.equal(afterSwitch.material.signingCert.der.toString('base64'), certificatesFromPem(nextCertPem)[0]!.toString('base64'));
      await assert.rejects(fs.access(path.join(afterSwitch.dir, SELF_SIGNED_FILES.nextCert)));

      // 5. Published and recorded, overlap not over: resumes waiting, still signing with the old root.
      const waiting = await scenario('waiting', files, t0 + 85_000);
      assert.ok(waiting.material.signingCert.der.equals(old.der));
      assert.equal(waiting.material.roots.length, 2);

      // 6. Down past the root's expiry: a new root is made and signs at once (there is nothing valid to wait with).
      const expired = await scenario('expired', plain, t0 + 150_000);
      assert.ok(!expired.material.signingCert.der.equals(old.der));
      assert.equal(expired.material.roots.length, 1);
      assert.ok(expired.material.signingCert.notAfter.getTime() > t0 + 150_000);
    });
  });
});
