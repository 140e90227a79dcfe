/**
 * Trust bundles from the CA to the agents, and on to Envoy over SDS: a CA server in this process (real gRPC over
 * TLS) serves a TrustBundleFeed on WatchTrustBundles; an agent in this process watches it through the agent's own
 * CA client (ca-client.ts: its channel, its TLS checks) and serves `ALL` (Envoy's SPIFFE certificate validator, one
 * entry per trust domain) and `spiffe://<trust-domain>` on its real SDS socket. The workload certificates come from
 * the in-process CA of the agent tests (same trust domain); only the bundles travel over the CA port here.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Writable } from 'node:stream';
import { deserialize, serialize } from 'node:v8';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { Registry } from 'prom-client';
import { GrpcCaClient } from '../src/agent/ca-client.js';
import { grpcTrustBundleSource, parseTrustBundleSet, readAgentConfig, TrustBundleWatcher, type RunningAgent, type TrustBundleSource } from '../src/agent/index.js';
import { NO_FEDERATION, UNIMPLEMENTED_RECHECK_MS, type WatchEnd } from '../src/agent/trust-bundles.js';
import { trustBundleFeed } from '../src/ca/federation/feed.js';
import type { FederatedBundles, OwnBundle, TrustBundleFeed } from '../src/ca/federation/types.js';
import { openSigner, type WorkloadSigner } from '../src/ca/index.js';
import { addCaServerOptions, readCaServerConfig, type CaServerFlags } from '../src/config/ca.js';
import { createLogger, type Logger } from '../src/log.js';
import {
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  LeafIssuer,
  parseCertificate,
  spiffeBundleOf,
  type ParsedCertificate,
  type SpiffeBundle,
  generateKeyPairFor,
} from '../src/pki/index.js';
import { startCaServer, type CaServer } from '../src/server/index.js';
import { decodeTrustBundleNotice, encodeTrustBundleNotice, NoticeFeed, trustBundleSetMessage } from '../src/server/trust-bundles.js';
import {
  decodeSecretAny,
  decodeSpiffeValidatorAny,
  SPIFFE_VALIDATOR_NAME,
  TrustBundleServiceClient,
  decodeTrustBundleSet,
  encodeTrustBundleSet,
  type DiscoveryResponse,
  type TrustBundleSetMessage,
} from '../src/wire/protos.js';
import { eventually, InProcessCa, memoryLogger, RawDeltaStream, RawSotwStream, startTestAgent, type TestAgent } from './agent-helpers.js';
import { ManualClock } from './support/manual-clock.js';
import { cleanEnv } from './ca-helpers.js';
import { makeTempDir } from './support/process.js';

const TRUST_DOMAIN = 'cluster.local';
const ALIAS = 'old.example';

function caCert(name: string): { cert: ParsedCertificate; key: KeyObject } {
  const { privateKey } = generateKeyPairFor('ec-p256');
  const der = createCaCertificate({ subject: { organization: 'meshca-test', commonName: name }, subjectKey: privateKey, notAfter: new Date(Date.now() + 86400_000) });
  return { cert: parseCertificate(der), key: privateKey };
}

/** The signer's roots as the own bundle (the endpoint helper's own-bundle.ts does this for real). */
function ownBundleOf(signer: WorkloadSigner): OwnBundle {
  const bundle = (): SpiffeBundle => spiffeBundleOf(TRUST_DOMAIN, certificatesFromPem(signer.trustBundlePem()).map((der) => parseCertificate(der)), { sequence: 1 });
  return { current: bundle, onChange: (listener) => signer.onChange(listener) };
}

/** Stands in for federated-bundles.ts: the bundles are whatever the test sets. */
class SettableFederation implements FederatedBundles {
  private current: readonly SpiffeBundle[] = [];
  private readonly listeners = new Set<() => void>();
  bundles(): readonly SpiffeBundle[] {
    return this.current;
  }
  status(): [] {
    return [];
  }
  set(bundles: readonly SpiffeBundle[]): void {
    this.current = bundles;
    for (const listener of [...this.listeners]) listener();
  }
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  async close(): Promise<void> {}
}

function quietLogger(): Logger {
  return createLogger({ level: 'warn', format: 'json', name: 'meshca-ca', destination: new Writable({ write: (_chunk, _encoding, callback) => callback() }) });
}

interface InProcessCaServer {
  server: CaServer;
  signer: WorkloadSigner;
  rootPem: string;
  serverName: string;
}

async function startCaInProcess(stateDir: string, trustBundles?: (signer: WorkloadSigner) => TrustBundleFeed, maxTrustBundleWatches?: number): Promise<InProcessCaServer> {
  const command = addCaServerOptions(new Command('ca').exitOverride());
  command.parse(['--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', '--state-dir', stateDir, '--ca-key-type', 'ec-p256'], { from: 'user' });
  const env = cleanEnv({ CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL: '0' });
  const config = readCaServerConfig(command.opts<CaServerFlags>(), env);
  const logger = quietLogger();
  const registry = new Registry();
  const signer = await openSigner(config.keySource, logger, { registry, env });
  const server = await startCaServer({
    config,
    signer,
    logger,
    registry,
    env,
    ...(trustBundles ? { trustBundles: trustBundles(signer) } : {}),
    ...(maxTrustBundleWatches !== undefined ? { maxTrustBundleWatches } : {}),
  });
  return { server, signer, rootPem: signer.trustBundlePem(), serverName: config.serverDnsNames[0]! };
}

/** The agent's own CA client to `ca` (its channel and TLS checks), as the bundle source. */
function agentSourceFor(ca: InProcessCaServer, dir: string, name: string): { source: ReturnType<typeof grpcTrustBundleSource>; client: GrpcCaClient } {
  const rootFile = path.join(dir, `${name}-root.pem`);
  writeFileSync(rootFile, ca.rootPem);
  const config = readAgentConfig({ caAddr: ca.server.grpcAddress, caRootCert: rootFile, istiodSan: ca.serverName }, {});
  const client = new GrpcCaClient(config.ca, Buffer.from(ca.rootPem), memoryLogger().log);
  return { source: grpcTrustBundleSource(client), client };
}

/** ALL as Envoy reads it: trust domain -> PEM, in order. */
function decodeAll(any: { type_url: string; value: Buffer }): [string, string][] {
  const secret = decodeSecretAny(any);
  assert.equal(secret.name, 'ALL');
  const context = secret.validation_context!;
  assert.equal(context.trusted_ca, null, 'Envoy refuses trusted_ca beside the SPIFFE validator: none is sent');
  assert.equal(context.custom_validator_config?.name, SPIFFE_VALIDATOR_NAME);
  const config = decodeSpiffeValidatorAny(context.custom_validator_config.typed_config!);
  return config.trust_domains.map((td) => [td.name, td.trust_bundle!.inline_bytes!.toString()]);
}

/** Reads responses until every name in `want` has come with a version not in `not`; returns the latest of each. */
async function collect(stream: RawSotwStream, subscribed: string[], want: string[], not: Map<string, string> = new Map()): Promise<Map<string, { any: { type_url: string; value: Buffer }; version: string }>> {
  const got = new Map<string, { any: { type_url: string; value: Buffer }; version: string }>();
  while (!want.every((name) => got.has(name))) {
    const response: DiscoveryResponse = await stream.next();
    for (const any of response.resources) {
      const name = decodeSecretAny(any).name;
      got.set(name, { any, version: response.version_info });
    }
    stream.ack(response, subscribed);
    for (const [name, value] of got) if (not.get(name) === value.version) got.delete(name);
  }
  return got;
}

const pemOf = (...certs: ParsedCertificate[]): string => certs.map((c) => certificateToPem(c.der)).join('');

describe('trust bundles from the CA to the agent, and to Envoy over SDS', () => {
  const temp = makeTempDir('meshca-delivery-');
  const federation = new SettableFederation();
  const other1 = caCert('other-root-1');
  const other2 = caCert('other-root-2');
  const third = caCert('third-root');
  let ca: InProcessCaServer;
  let plain: InProcessCaServer;
  let agent: TestAgent;
  let plainAgent: TestAgent;
  const clients: GrpcCaClient[] = [];

  before(async () => {
    federation.set([spiffeBundleOf('other.example', [other1.cert], { sequence: 3 })]);
    [ca, plain] = await Promise.all([
      startCaInProcess(path.join(temp.dir, 'ca'), (signer) => trustBundleFeed({ trustDomain: TRUST_DOMAIN, aliases: [ALIAS], own: ownBundleOf(signer), federated: federation }), 2),
      startCaInProcess(path.join(temp.dir, 'plain')),
    ]);
    const fed = agentSourceFor(ca, temp.dir, 'fed');
    const none = agentSourceFor(plain, temp.dir, 'plain');
    clients.push(fed.client, none.client);
    [agent, plainAgent] = await Promise.all([startTestAgent({ trustBundles: fed.source }), startTestAgent({ trustBundles: none.source })]);
    agent.ca.addWorkload('tok-a', 'default', 'a');
    plainAgent.ca.addWorkload('tok-a', 'default', 'a');
  });

  after(async () => {
    await Promise.all([agent?.close(), plainAgent?.close()]);
    for (const client of clients) client.close();
    await Promise.all([ca?.server.close(), plain?.server.close()]);
    await Promise.all([ca?.signer.close(), plain?.signer.close()]);
    temp.cleanup();
  });

  const federationOf = (running: RunningAgent) => running.federation!;

  test('ALL holds the own trust domain, its alias (own roots) and each federated trust domain (its roots), decoded from the wire', async () => {
    await eventually(() => federationOf(agent.agent).current().version !== '', 'the agent to receive the first set');
    assert.deepEqual(federationOf(agent.agent).aliases(), [ALIAS]);
    const stream = new RawSotwStream(agent.client, 'tok-a');
    stream.subscribe(['ALL']);
    const all = decodeAll((await stream.next()).resources[0]!);
    const ownPem = (agent.ca as InProcessCa).rootsPem;
    assert.deepEqual(all, [
      [TRUST_DOMAIN, ownPem],
      [ALIAS, ownPem],
      ['other.example', pemOf(other1.cert)],
    ]);
    stream.close();
  });

  test('a change in the feed is pushed to open streams on ALL and on spiffe://<trust-domain>; an unknown trust domain is NOT_FOUND', async () => {
    const names = ['ALL', 'spiffe://other.example', `spiffe://${ALIAS}`];
    const stream = new RawSotwStream(agent.client, 'tok-a');
    stream.subscribe(names);
    const first = await collect(stream, names, names);
    assert.equal(decodeSecretAny(first.get('spiffe://other.example')!.any).validation_context?.trusted_ca?.inline_bytes?.toString(), pemOf(other1.cert));
    assert.equal(decodeSecretAny(first.get(`spiffe://${ALIAS}`)!.any).validation_context?.trusted_ca?.inline_bytes?.toString(), (agent.ca as InProcessCa).rootsPem);

    // other.example rotates (two roots), third.example joins.
    federation.set([spiffeBundleOf('other.example', [other2.cert, other1.cert], { sequence: 4 }), spiffeBundleOf('third.example', [third.cert])]);
    const pushed = await collect(stream, names, ['ALL', 'spiffe://other.example'], new Map([...first].map(([name, v]) => [name, v.version])));
    assert.equal(decodeSecretAny(pushed.get('spiffe://other.example')!.any).validation_context?.trusted_ca?.inline_bytes?.toString(), pemOf(other2.cert, other1.cert));
    assert.deepEqual(
      decodeAll(pushed.get('ALL')!.any).map(([td]) => td),
      [TRUST_DOMAIN, ALIAS, 'other.example', 'third.example'],
    );
    stream.close();

    const unknown = new RawSotwStream(agent.client, 'tok-a');
    unknown.subscribe(['spiffe://nowhere.example']);
    const error = await unknown.ended();
    assert.equal(error?.code, grpc.status.NOT_FOUND);
    assert.match(error!.details, /no trust bundle for trust domain "nowhere\.example": this agent knows spiffe:\/\/cluster\.local, spiffe:\/\/old\.example, spiffe:\/\/other\.example, spiffe:\/\/third\.example/);

    // A trust domain that leaves the set ends its stream (SotW) with NOT_FOUND: it is no longer trusted.
    const leaving = new RawSotwStream(agent.client, 'tok-a');
    leaving.subscribe(['spiffe://third.example']);
    await leaving.next();
    federation.set([spiffeBundleOf('other.example', [other2.cert, other1.cert], { sequence: 4 })]);
    const gone = await leaving.ended();
    assert.equal(gone?.code, grpc.status.NOT_FOUND);
    assert.match(gone!.details, /"third\.example"/);

    // On a delta stream, it is reported removed and the stream goes on.
    federation.set([spiffeBundleOf('other.example', [other2.cert, other1.cert], { sequence: 4 }), spiffeBundleOf('third.example', [third.cert])]);
    await eventually(() => federationOf(agent.agent).federatedBundles().length === 2, 'third.example back');
    const delta = new RawDeltaStream(agent.client, 'tok-a');
    delta.send({ node: { id: 'sidecar~10.0.0.1~test.default~default.svc.cluster.local' }, resource_names_subscribe: ['spiffe://third.example'] });
    const added = await delta.next();
    assert.deepEqual(added.resources.map((r) => r.name), ['spiffe://third.example']);
    delta.send({ response_nonce: added.nonce });
    federation.set([spiffeBundleOf('other.example', [other2.cert, other1.cert], { sequence: 4 })]);
    assert.deepEqual((await delta.next()).removed_resources, ['spiffe://third.example']);
    delta.close();
  });

  test('a bad set is refused and logged, the last good one kept; the next good one is taken', async () => {
    const good = federationOf(agent.agent).current();
    // A leaf certificate posing as another trust domain's authority: the CA's feed does not check what the
    // federation part hands it, the agent does.
    const issuer = new LeafIssuer({ certificate: third.cert, privateKey: third.key });
    const leaf = parseCertificate(issuer.issue({ spkiDer: third.cert.spkiDer, uris: ['spiffe://evil.example/x'], ttlSeconds: 3600, now: Date.now() }).der);
    federation.set([...good.federated, { trustDomain: 'evil.example', x509Authorities: [leaf] }]);
    await eventually(() => agent.records.some((r) => r.msg === 'refusing trust bundles from the CA; keeping the last good ones'), 'the refusal to be logged');
    const refusal = agent.records.find((r) => r.msg === 'refusing trust bundles from the CA; keeping the last good ones')!;
    assert.match(String(refusal.err), /evil\.example.*not a CA certificate/);
    assert.equal(federationOf(agent.agent).current(), good);

    federation.set([spiffeBundleOf('other.example', [other1.cert], { sequence: 5 })]);
    await eventually(() => federationOf(agent.agent).current() !== good, 'the next good set');
    assert.deepEqual(federationOf(agent.agent).federatedBundles().map((b) => b.trustDomain), ['other.example']);
  });

  test('a CA without a feed answers UNIMPLEMENTED: the agent says so once and ALL holds the own trust domain only', async () => {
    await eventually(() => plainAgent.records.some((r) => typeof r.msg === 'string' && r.msg.startsWith('the CA serves no trust bundles (UNIMPLEMENTED')), 'the info line');
    assert.equal(plainAgent.records.filter((r) => typeof r.msg === 'string' && r.msg.startsWith('the CA serves no trust bundles')).length, 1);
    assert.equal(plainAgent.records.find((r) => typeof r.msg === 'string' && r.msg.startsWith('the CA serves no trust bundles'))!.level, 30);
    const stream = new RawSotwStream(plainAgent.client, 'tok-a');
    stream.subscribe(['ALL']);
    assert.deepEqual(decodeAll((await stream.next()).resources[0]!), [[TRUST_DOMAIN, (plainAgent.ca as InProcessCa).rootsPem]]);
    stream.close();
  });

  test('the CA bounds concurrent watches (RESOURCE_EXHAUSTED), sends the set at once, and ends watches with OK when it stops', async () => {
    // This CA allows 2 watches; the agent holds one.
    const client = new TrustBundleServiceClient(ca.server.grpcAddress, grpc.credentials.createSsl(Buffer.from(ca.rootPem)), {
      'grpc.ssl_target_name_override': ca.serverName,
      'grpc.default_authority': ca.serverName,
    });
    try {
      const watch = client.WatchTrustBundles({});
      const first = await new Promise<TrustBundleSetMessage>((resolve, reject) => {
        watch.once('data', resolve);
        watch.once('error', reject);
      });
      assert.equal(first.trust_domain, TRUST_DOMAIN);
      assert.deepEqual(first.bundles.map((b) => b.trust_domain), [TRUST_DOMAIN, 'other.example']);
      assert.equal(first.bundles[1]!.sequence, '5');
      const refused = await new Promise<grpc.ServiceError>((resolve) => client.WatchTrustBundles({}).on('error', resolve).on('data', () => undefined));
      assert.equal(refused.code, grpc.status.RESOURCE_EXHAUSTED);
      assert.match(refused.details, /already serves 2 trust-bundle watches/);
      const status = new Promise<grpc.StatusObject>((resolve) => watch.on('status', resolve));
      watch.on('data', () => undefined);
      await ca.server.close();
      assert.equal((await status).code, grpc.status.OK);
    } finally {
      client.close();
    }
  });
});

describe('--workers: the trust bundles cross the IPC channel as DER and are rebuilt in the worker', () => {
  test('a notice survives advanced serialization, is checked strictly, and replaces the worker feed', () => {
    const own = caCert('own');
    const other = caCert('other');
    const federation = new SettableFederation();
    federation.set([spiffeBundleOf('other.example', [other.cert], { sequence: 7, refreshHintSeconds: 60 })]);
    const feed = trustBundleFeed({ trustDomain: TRUST_DOMAIN, aliases: [ALIAS], own: { current: () => spiffeBundleOf(TRUST_DOMAIN, [own.cert]), onChange: () => () => undefined }, federated: federation });
    const crossed = deserialize(serialize(encodeTrustBundleNotice(feed.current()))) as unknown;
    const rebuilt = decodeTrustBundleNotice(crossed);
    assert.equal(rebuilt.version, feed.current().version);
    assert.deepEqual(rebuilt.aliases, [ALIAS]);
    assert.ok(rebuilt.own.x509Authorities[0]!.der.equals(own.cert.der));
    assert.deepEqual(rebuilt.federated.map((b) => [b.trustDomain, b.sequence, b.refreshHintSeconds, b.x509Authorities[0]!.der.equals(other.cert.der)]), [['other.example', 7, 60, true]]);

    const worker = new NoticeFeed(rebuilt);
    const seen: string[] = [];
    worker.onChange((set) => seen.push(set.version));
    federation.set([]);
    worker.replace(decodeTrustBundleNotice(deserialize(serialize(encodeTrustBundleNotice(feed.current())))));
    worker.replace(decodeTrustBundleNotice(deserialize(serialize(encodeTrustBundleNotice(feed.current())))));
    assert.deepEqual(seen, [feed.current().version], 'an equal set is no change');

    const bad = { ...(crossed as Record<string, unknown>), bundles: [{ trustDomain: 'other.example', authorities: [Buffer.from('not DER')] }] };
    assert.throws(() => decodeTrustBundleNotice(bad));
    assert.throws(() => decodeTrustBundleNotice({ ...(crossed as Record<string, unknown>), trustDomain: 'wrong.example' }), /the first bundle is for "cluster\.local", not the own trust domain "wrong\.example"/);
  });
});

describe('the agent\'s watcher, transport-free, on virtual time', () => {
  const own = caCert('own');
  const other = caCert('other');
  /** A set as the agent decodes it from the wire. */
  const feedSet = (federated: SpiffeBundle[]): TrustBundleSetMessage => {
    const bundles = new SettableFederation();
    bundles.set(federated);
    const ownBundle = { current: () => spiffeBundleOf(TRUST_DOMAIN, [own.cert]), onChange: () => () => undefined };
    const set = trustBundleFeed({ trustDomain: TRUST_DOMAIN, aliases: [], own: ownBundle, federated: bundles }).current();
    return decodeTrustBundleSet(encodeTrustBundleSet(trustBundleSetMessage(set)));
  };

  /** Opens watches on demand; the test ends them and sends messages. */
  class ScriptedSource implements TrustBundleSource {
    readonly address = 'scripted';
    readonly opened: { message(m: TrustBundleSetMessage): void; end(outcome: WatchEnd): void }[] = [];
    watch(handlers: { message(m: TrustBundleSetMessage): void; end(outcome: WatchEnd): void }): { cancel(): void } {
      this.opened.push(handlers);
      return { cancel: () => undefined };
    }
  }

  test('reconnects after the backoff on its clock, resets it on a good message; on UNIMPLEMENTED drops the set and asks again later', async () => {
    const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'));
    const source = new ScriptedSource();
    const { log, records } = memoryLogger();
    const watcher = new TrustBundleWatcher({ source, trustDomain: TRUST_DOMAIN, log, clock, random: () => 0 }).start();
    assert.equal(source.opened.length, 1);
    source.opened[0]!.end({ code: grpc.status.UNAVAILABLE, details: 'connection refused' });
    // backoffDelayMs(0) with no jitter: 50 ms, then 100, 200.
    await clock.advance(49);
    assert.equal(source.opened.length, 1, 'not before the backoff');
    await clock.advance(1);
    assert.equal(source.opened.length, 2);
    source.opened[1]!.end(null);
    await clock.advance(100);
    assert.equal(source.opened.length, 3);
    source.opened[2]!.message(feedSet([spiffeBundleOf('other.example', [other.cert])]));
    assert.deepEqual(watcher.federatedBundles().map((b) => b.trustDomain), ['other.example']);
    source.opened[2]!.end({ code: grpc.status.UNAVAILABLE, details: 'gone' });
    await clock.advance(50);
    assert.equal(source.opened.length, 4, 'the good message reset the backoff');
    const changes: string[][] = [];
    watcher.onChange((state) => changes.push(state.federated.map((b) => b.trustDomain)));
    // Federation turned off at the CA (or another CA behind the address): the foreign trust it granted ends now.
    source.opened[3]!.end({ code: grpc.status.UNIMPLEMENTED, details: 'not served' });
    assert.deepEqual(watcher.federatedBundles(), [], 'the federated bundles are dropped at once');
    assert.equal(watcher.current(), NO_FEDERATION);
    assert.deepEqual(changes, [[]], 'and the SDS resources are told');
    const dropped = records.filter((r) => r.msg === 'the CA no longer serves trust bundles; its federated bundles and aliases are no longer trusted');
    assert.equal(dropped.length, 1);
    assert.deepEqual(dropped[0]!.dropped, ['other.example']);
    // Asked again after UNIMPLEMENTED_RECHECK_MS, here with the jitter's lowest draw (-5%): not every backoff step.
    const recheck = Math.round(UNIMPLEMENTED_RECHECK_MS * 0.95);
    await clock.advance(recheck - 1);
    assert.equal(source.opened.length, 4, 'not before the recheck interval');
    assert.ok(!watcher.isStopped);
    await clock.advance(1);
    assert.equal(source.opened.length, 5);
    source.opened[4]!.end({ code: grpc.status.UNIMPLEMENTED, details: 'not served' });
    await clock.advance(recheck);
    assert.equal(source.opened.length, 6);
    assert.equal(records.filter((r) => typeof r.msg === 'string' && r.msg.startsWith('the CA serves no trust bundles')).length, 1, 'said once, not at every recheck');
    assert.equal(changes.length, 1, 'an empty set dropped again is no change');
    // The CA starts federating: the next recheck picks the set up without an agent restart.
    source.opened[5]!.message(feedSet([spiffeBundleOf('other.example', [other.cert])]));
    assert.deepEqual(watcher.federatedBundles().map((b) => b.trustDomain), ['other.example']);
    assert.deepEqual(changes, [[], ['other.example']]);
    source.opened[5]!.end({ code: grpc.status.UNIMPLEMENTED, details: 'not served again' });
    assert.equal(records.filter((r) => typeof r.msg === 'string' && r.msg.startsWith('the CA serves no trust bundles')).length, 2, 'said again after the CA had served a set');
    watcher.close();
    assert.ok(watcher.isStopped);
    await clock.advance(UNIMPLEMENTED_RECHECK_MS * 2);
    assert.equal(source.opened.length, 6, 'a closed watcher asks no more');
  });

  test('refuses a set for another trust domain, a non-CA authority, a repeated trust domain, and too many trust domains', () => {
    const good = feedSet([spiffeBundleOf('other.example', [other.cert])]);
    assert.deepEqual(parseTrustBundleSet(good, TRUST_DOMAIN).federated.map((b) => b.trustDomain), ['other.example']);
    const refusals: [TrustBundleSetMessage, RegExp][] = [
      [good, /the CA's trust domain is "cluster\.local", but this agent's certificates are in "elsewhere\.example"/],
      [{ ...good, bundles: [good.bundles[0]!, { ...good.bundles[1]!, x509_authorities: [Buffer.from('junk')] }] }, /authority 0 of "other\.example" is not a DER certificate/],
      [{ ...good, bundles: [good.bundles[0]!, good.bundles[1]!, good.bundles[1]!] }, /trust domain "other\.example" appears twice/],
      [{ ...good, bundles: [good.bundles[0]!, { ...good.bundles[1]!, trust_domain: 'Bad_Domain' }] }, /federated trust domain "Bad_Domain" is not a valid trust domain/],
      [{ ...good, aliases: [TRUST_DOMAIN] }, /alias "cluster\.local" is the own trust domain or listed twice/],
      [{ ...good, bundles: [good.bundles[0]!, ...Array.from({ length: 256 }, (_, i) => ({ ...good.bundles[1]!, trust_domain: `td${i}.example` }))] }, /257 trust domains, more than the 256 allowed/],
      [{ ...good, version: '' }, /the set has no version/],
    ];
    refusals.forEach(([message, expected], index) => {
      assert.throws(() => parseTrustBundleSet(message, index === 0 ? 'elsewhere.example' : TRUST_DOMAIN), expected);
    });
  });
});
