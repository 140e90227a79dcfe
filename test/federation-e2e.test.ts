/**
 * Two meshes, each a `meshca dev` (CA + node agent) with its own trust domain and its own roots, federate through
 * their SPIFFE bundle endpoints (https_spiffe, bootstrapped with the other mesh's root file), as docs/federation.md
 * sets them up. Workloads get over SDS (`ALL`) what lets a TLS peer in one trust domain accept the other's by
 * SPIFFE ID and refuse an unfederated third; a root rotation in one mesh reaches the other's agents before any
 * certificate of the new root is used, so no handshake fails during it.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { after, before, test } from 'node:test';
import { DevTokenIssuer } from '../src/authn/dev-issuer.js';
import { connectSds, SecretWatch, workloadTokenMetadata, type SecretUpdate } from '../src/agent/sds-client.js';
import { certificatesFromPem } from '../src/pki/index.js';
import { cleanEnv } from './ca-helpers.js';
import { istioFiles, makeChain, makeRoot, makeSubCa, writeSecretVolume, type ChainFixture } from './keysource-helpers.js';
import { issueCert, certPem, privateKeyPem, generateKeyPair } from './standins/pki.js';
import { eventually } from './support/eventually.js';
import { makeTempDir, startMeshca, type MeshcaProcess } from './support/process.js';
import { spiffeVerify } from './support/spiffe-validator.js';

const temp = makeTempDir('meshca-federation-');
after(() => temp.cleanup());

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

type SdsClient = ReturnType<typeof connectSds>;

interface Mesh {
  trustDomain: string;
  dir: string;
  chain: ChainFixture;
  port: number;
  dev?: MeshcaProcess;
  sds?: SdsClient;
}

/** One workload's live view of its agent: its key and chain (`default`) and its validator (`ALL`). */
class Workload {
  identity?: SecretUpdate;
  trust = new Map<string, string>();
  private readonly watches: SecretWatch[] = [];
  readonly changes: string[] = [];

  constructor(client: SdsClient, token: string) {
    const metadata = (): ReturnType<typeof workloadTokenMetadata> => workloadTokenMetadata(token);
    this.watches.push(
      new SecretWatch(client, { name: 'default', metadata }, { onUpdate: (update) => ((this.identity = update), this.changes.push('default')) }),
      new SecretWatch(client, { name: 'ALL', metadata }, {
        onUpdate: (update) => {
          this.trust = new Map((update.trustDomains ?? []).map((td) => [td.name, td.pem]));
          this.changes.push('ALL');
        },
      }),
    );
  }

  tlsOptions(): { key: string; cert: string } {
    return { key: this.identity!.privateKey!, cert: this.identity!.certificateChain! };
  }

  close(): void {
    for (const watch of this.watches) watch.close();
  }
}

/**
 * One mutual-TLS handshake over a real socket. Neither side trusts a CA list: like Envoy with the SPIFFE validator,
 * each checks the peer's chain against the bundle of the peer's own trust domain.
 */
async function handshake(client: { trust: Map<string, string>; key: string; cert: string }, server: { trust: Map<string, string>; key: string; cert: string }): Promise<{ client: string; server: string }> {
  const chainOf = (socket: tls.TLSSocket): Buffer[] => {
    const chain: Buffer[] = [];
    let cert = socket.getPeerCertificate(true) as tls.DetailedPeerCertificate | undefined;
    while (cert?.raw && !chain.some((der) => der.equals(cert!.raw))) {
      chain.push(cert.raw);
      cert = cert.issuerCertificate;
    }
    return chain;
  };
  const verdicts = { client: '', server: '' };
  const listener = tls.createServer({ key: server.key, cert: server.cert, requestCert: true, rejectUnauthorized: false }, (socket) => {
    const verdict = spiffeVerify(server.trust, chainOf(socket));
    verdicts.server = verdict.ok ? verdict.id : `refused: ${verdict.reason}`;
    socket.end();
  });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  try {
    const socket = tls.connect({ port: (listener.address() as { port: number }).port, host: '127.0.0.1', key: client.key, cert: client.cert, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => {
        const verdict = spiffeVerify(client.trust, chainOf(socket));
        verdicts.client = verdict.ok ? verdict.id : `refused: ${verdict.reason}`;
      });
      socket.once('error', reject);
      socket.once('close', () => resolve());
      socket.resume();
    });
  } finally {
    await new Promise<void>((resolve) => listener.close(() => resolve()));
  }
  return verdicts;
}

const a: Mesh = { trustDomain: 'a.test', dir: path.join(temp.dir, 'a'), chain: undefined as unknown as ChainFixture, port: 0 };
const b: Mesh = { trustDomain: 'b.test', dir: path.join(temp.dir, 'b'), chain: undefined as unknown as ChainFixture, port: 0 };

function startMesh(mesh: Mesh, peer: Mesh): MeshcaProcess {
  return startMeshca(
    [
      'dev',
      '--trust-domain', mesh.trustDomain,
      '--state-dir', mesh.dir,
      '--ca-source', 'cacerts',
      '--root-ca-dir', path.join(mesh.dir, 'cacerts'),
      '--grpc-addr', '127.0.0.1:0',
      '--monitoring-addr', '127.0.0.1:0',
      '--status-addr', '127.0.0.1:0',
      '--ca-key-type', 'ec-p256',
      '--bundle-endpoint-addr', `127.0.0.1:${mesh.port}`,
      '--bundle-endpoint-refresh-hint', '1s',
      '--federate-with',
      `${peer.trustDomain}=https://127.0.0.1:${peer.port},profile=https_spiffe,endpoint-id=spiffe://${peer.trustDomain}/meshca/bundle-endpoint,bundle=${path.join(peer.dir, 'cacerts', 'root-cert.pem')}`,
    ],
    { env: cleanEnv(), cwd: mesh.dir },
  );
}

let workloadA: Workload;
let workloadB: Workload;

before(async () => {
  for (const mesh of [a, b]) {
    mesh.chain = await makeChain('ec', 2, mesh.trustDomain);
    mesh.port = await freePort();
    await writeSecretVolume(path.join(mesh.dir, 'cacerts'), istioFiles(mesh.chain));
  }
  a.dev = startMesh(a, b);
  b.dev = startMesh(b, a);
  await Promise.all([a.dev.waitForLog(/^meshca dev ready$/, 30_000), b.dev.waitForLog(/^meshca dev ready$/, 30_000)]);
  const tokens = await Promise.all(
    [a, b].map(async (mesh) => (await DevTokenIssuer.load(mesh.dir)).mint({ namespace: 'shop', serviceAccount: 'web', audiences: ['istio-ca'], ttlSeconds: 3600 })),
  );
  a.sds = connectSds(path.join(a.dir, 'sds.sock'));
  b.sds = connectSds(path.join(b.dir, 'sds.sock'));
  workloadA = new Workload(a.sds, tokens[0]!);
  workloadB = new Workload(b.sds, tokens[1]!);
});

after(async () => {
  workloadA?.close();
  workloadB?.close();
  a.sds?.close();
  b.sds?.close();
  await Promise.all([a.dev?.stop('SIGTERM', 10_000), b.dev?.stop('SIGTERM', 10_000)]);
});

test('each workload gets, over SDS, its own bundle and the federated one; a TLS peer of the other mesh is accepted by SPIFFE ID', async () => {
  // Each mesh fetched the other's bundle from its endpoint (each started with the other's root file).
  await eventually(() => workloadA.identity && workloadA.trust.get('b.test') && workloadB.identity && workloadB.trust.get('a.test'), 20_000, 'identities and federated bundles');
  assert.deepEqual([...workloadA.trust.keys()].sort(), ['a.test', 'b.test']);
  assert.deepEqual([...workloadB.trust.keys()].sort(), ['a.test', 'b.test']);
  assert.equal(certificatesFromPem(workloadA.trust.get('b.test')!).length, 1);
  const verdicts = await handshake({ trust: workloadA.trust, ...workloadA.tlsOptions() }, { trust: workloadB.trust, ...workloadB.tlsOptions() });
  assert.deepEqual(verdicts, { client: 'spiffe://b.test/ns/shop/sa/web', server: 'spiffe://a.test/ns/shop/sa/web' });
});

test('a peer of an unfederated trust domain is refused, and so is one claiming a federated domain with a foreign root', async () => {
  const c = await makeRoot('c.test root', 'ec');
  const keys = await generateKeyPair('ec');
  const leafFor = async (id: string): Promise<string> =>
    certPem(await issueCert({ subject: '', publicKey: keys.publicKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000), keyUsage: 0x80 | 0x20, extKeyUsage: ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], sans: [{ type: 'url', value: id }] }, c));
  const key = await privateKeyPem(keys.privateKey);
  const unfederated = await handshake({ trust: workloadA.trust, ...workloadA.tlsOptions() }, { trust: new Map(), key, cert: await leafFor('spiffe://c.test/ns/shop/sa/web') });
  assert.equal(unfederated.client, 'refused: no trust bundle for trust domain c.test');
  const impostor = await handshake({ trust: workloadA.trust, ...workloadA.tlsOptions() }, { trust: new Map(), key, cert: await leafFor('spiffe://b.test/ns/shop/sa/web') });
  assert.match(impostor.client, /^refused: .*unable to get local issuer certificate/);
});

test("a root rotation in one mesh reaches the other's agents before its new certificates are used: no handshake fails", async () => {
  const results: string[] = [];
  let running = true;
  // The server side of the handshakes: a's workload, then (step 2) a new workload of a issued under the new root.
  let server = workloadA;
  const loop = (async () => {
    while (running) {
      const current = server;
      const v = await handshake({ trust: workloadB.trust, ...workloadB.tlsOptions() }, { trust: current.trust, ...current.tlsOptions() });
      results.push(`${v.client} | ${v.server}`);
      // A handshake every 100 ms or so is traffic enough to catch a window where one would fail.
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  let workloadA2: Workload | undefined;
  try {
    // Step 1: mesh a adds its new root to its bundle, still signing with the old one.
    const newRoot = await makeRoot('a.test root 2', 'ec');
    const rootsPem = `${a.chain.root.pem.trim()}\n${newRoot.pem.trim()}\n`;
    // The cacerts Secret is swapped as the kubelet does it (..data symlink), so the CA never reads half an update.
    await writeSecretVolume(path.join(a.dir, 'cacerts'), istioFiles(a.chain, rootsPem));
    await eventually(() => certificatesFromPem(workloadB.trust.get('a.test') ?? '').length === 2 || undefined, 30_000, "mesh b's agent serving both of a's roots");
    // Step 2: mesh a signs with a CA under the new root. Certificates already issued stay valid until renewed;
    // a workload that starts now gets one under the new root, and b's workloads accept it.
    const signing = await makeSubCa('a.test signing CA 2', 'ec', newRoot);
    await writeSecretVolume(path.join(a.dir, 'cacerts'), istioFiles({ root: newRoot, signing }, rootsPem));
    const serial = signing.cert.serialNumber.toLowerCase().replace(/^0+/, '');
    const reloaded = (record: { msg?: unknown; signingCertSerial?: unknown }): boolean =>
      record.msg === 'reloaded the plugged-in CA certificates' && String(record.signingCertSerial).toLowerCase().replace(/^0+/, '') === serial;
    await eventually(() => a.dev!.records.some(reloaded) || undefined, 20_000, "a's CA signing with the new intermediate");
    const token = await (await DevTokenIssuer.load(a.dir)).mint({ namespace: 'shop', serviceAccount: 'api', audiences: ['istio-ca'], ttlSeconds: 3600 });
    workloadA2 = new Workload(a.sds!, token);
    const issued = await eventually(() => workloadA2!.identity, 20_000, "a's new workload");
    assert.ok(certificatesFromPem(issued.certificateChain!)[1]?.equals(Buffer.from(signing.cert.rawData)), "a's new workload is issued under the new root");
    await eventually(() => (workloadA2!.trust.size > 0) || undefined, 10_000, "a's new workload's ALL");
    server = workloadA2!;
    const count = results.length;
    await eventually(() => results.length >= count + 3 || undefined, 10_000, 'handshakes with the new certificate');
  } finally {
    running = false;
    await loop;
    workloadA2?.close();
  }
  assert.ok(results.length >= 5, `only ${results.length} handshakes`);
  const failed = results.filter((r) => !/^spiffe:\/\/a\.test\/ns\/shop\/sa\/(web|api) \| spiffe:\/\/b\.test\/ns\/shop\/sa\/web$/.test(r));
  assert.deepEqual(failed, [], `${failed.length} of ${results.length} handshakes failed`);
  assert.ok(results.some((r) => r.startsWith('spiffe://a.test/ns/shop/sa/api')), 'handshakes with the certificate under the new root');
});
