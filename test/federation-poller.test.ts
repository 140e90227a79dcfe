/**
 * Federation with other trust domains (src/ca/federation): bundles fetched over real HTTPS from a stand-in bundle
 * endpoint with each profile, refreshed at the refresh hint on virtual time, every bad answer refused with the last
 * good bundle kept, persistence across a restart, static files, `meshca bundle set` / `list` through the built CLI,
 * the --federate-with syntax and /debug/federation.
 */
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { parseBundleFile, readBundleFile } from '../src/ca/federation/bundle-store.js';
import { fetchBundle, type BundleRefreshError } from '../src/ca/federation/fetch-bundle.js';
import { federationDebugView, startFederation } from '../src/ca/federation/federated-bundles.js';
import type { FederatedBundles, FederatedBundleStatus, FederationTarget } from '../src/ca/federation/types.js';
import { readCaServerConfig } from '../src/config/ca.js';
import { createLogger } from '../src/log.js';
import { MAX_BUNDLE_BYTES } from '../src/pki/index.js';
import { createMonitoringServer } from '../src/server/monitoring.js';
import { eventually } from './support/eventually.js';
import { ManualClock, wholeSecondNow } from './support/manual-clock.js';
import { makeTempDir, runMeshca } from './support/process.js';
import { bundleDocument, makeSvid, makeTrustDomainRoot, startBundleEndpoint, type BundleEndpoint } from './standins/bundle-endpoint.js';
import { makeServerTls, type CaMaterial } from './standins/pki.js';

const TD = 'other.test';
const ENDPOINT_ID = `spiffe://${TD}/bundle-endpoint`;
const logger = createLogger({ level: 'silent', format: 'json' });

let tmp: { dir: string; cleanup: () => void };
let root1: CaMaterial;
let root2: CaMaterial;
let thirdRoot: CaMaterial;
let web: BundleEndpoint;
let spiffe: BundleEndpoint;
let wrongSvid: { certPem: string; keyPem: string };
let caFile: string;
let root1File: string;

before(async () => {
  tmp = makeTempDir('meshca-federation-');
  [root1, root2, thirdRoot] = await Promise.all([makeTrustDomainRoot(TD, 'root 1'), makeTrustDomainRoot(TD, 'root 2'), makeTrustDomainRoot('third.test')]);
  const webTls = await makeServerTls();
  web = await startBundleEndpoint({ certPem: webTls.certPem, keyPem: webTls.keyPem });
  spiffe = await startBundleEndpoint(await makeSvid(root1, ENDPOINT_ID));
  wrongSvid = await makeSvid(root1, `spiffe://${TD}/not-the-endpoint`);
  caFile = path.join(tmp.dir, 'web-ca.pem');
  writeFileSync(caFile, webTls.caPem);
  root1File = path.join(tmp.dir, 'root1.pem');
  writeFileSync(root1File, `${root1.pem}\n`);
});

after(async () => {
  await Promise.all([web?.close(), spiffe?.close()]);
  tmp?.cleanup();
});

const webTarget = (): FederationTarget => ({ trustDomain: TD, source: { kind: 'endpoint', url: web.url, profile: { kind: 'https_web', caFile } } });

function statusOf(federation: FederatedBundles): FederatedBundleStatus {
  return federation.status()[0]!;
}

async function metricValue(registry: Registry, name: string, labels: string): Promise<number | undefined> {
  const line = (await registry.metrics()).split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

/** Fires the next refresh and waits for it to end (it schedules the one after: nextRefreshAt moves past now). */
async function nextRefresh(clock: ManualClock, federation: FederatedBundles): Promise<FederatedBundleStatus> {
  await clock.advanceTo(statusOf(federation).nextRefreshAt!.getTime());
  return eventually(() => {
    const status = statusOf(federation);
    return status.nextRefreshAt!.getTime() > clock.now() ? status : undefined;
  }, 10_000, 'the refresh to end');
}

describe('fetchBundle: one fetch over HTTPS with the endpoint profile', () => {
  it('fetches with https_web (ca-file) and https_spiffe, and refuses each bad answer with its reason', async () => {
    web.serve({ body: bundleDocument([root1], { sequence: 1 }) });
    const fetched = await fetchBundle(TD, web.url, { kind: 'https_web', caFile }, undefined);
    assert.equal(fetched.sequence, 1);
    assert.equal(fetched.x509Authorities.length, 1);

    const initial = parseBundleFile(TD, root1.pem);
    spiffe.serve({ body: bundleDocument([root1, root2], { sequence: 4 }) });
    const viaSvid = await fetchBundle(TD, spiffe.url, { kind: 'https_spiffe', endpointId: ENDPOINT_ID }, initial);
    assert.equal(viaSvid.x509Authorities.length, 2);

    const refused = async (promise: Promise<unknown>, reason: string, message: RegExp): Promise<void> => {
      await assert.rejects(promise, (error: BundleRefreshError) => {
        assert.equal(error.reason, reason, error.message);
        assert.match(error.message, message);
        return true;
      });
    };
    // The server's certificate is not from the default roots, nor is the SVID for the configured endpoint ID.
    await refused(fetchBundle(TD, web.url, { kind: 'https_web' }, undefined), 'tls', /TLS: .*for a private CA add ,ca-file=<pem>$/);
    await refused(
      fetchBundle(TD, spiffe.url, { kind: 'https_spiffe', endpointId: `spiffe://${TD}/elsewhere` }, initial),
      'tls',
      /presented spiffe:\/\/other\.test\/bundle-endpoint, not the configured endpoint-id spiffe:\/\/other\.test\/elsewhere/,
    );
    // An SVID that does not chain to the trust domain's bundle.
    await refused(fetchBundle(TD, spiffe.url, { kind: 'https_spiffe', endpointId: ENDPOINT_ID }, parseBundleFile(TD, root2.pem)), 'tls', /TLS: .*must chain to the bundle of other\.test in use/);
    const cases: [Parameters<BundleEndpoint['serve']>[0], string, RegExp][] = [
      [{ body: 'garbage' }, 'invalid', /not JSON/],
      [{ body: bundleDocument([thirdRoot]) }, 'invalid', /belongs to trust domain "third\.test"/],
      [{ body: Buffer.alloc(MAX_BUNDLE_BYTES + 1, 0x20) }, 'too_large', /more than the 262144/],
      [{ body: Buffer.alloc(MAX_BUNDLE_BYTES + 100, 0x20), chunked: true }, 'too_large', /more than the 262144/],
      [{ status: 500, body: 'oops' }, 'status', /HTTP 500, expected 200/],
      [{ status: 302, body: '', headers: { location: 'https://example.org/' } }, 'status', /redirects are not followed/],
    ];
    for (const [answer, reason, message] of cases) {
      web.serve(answer);
      await refused(fetchBundle(TD, web.url, { kind: 'https_web', caFile }, undefined), reason, message);
    }
    web.serve({ body: '{"keys": [', stall: true });
    await refused(fetchBundle(TD, web.url, { kind: 'https_web', caFile }, undefined, { timeoutMs: 200 }), 'timeout', /no complete answer within 0\.2s/);
  });
});

describe('startFederation: keeping a federated bundle current', () => {
  it('fetches and publishes, refreshes at the hint, refuses bad bundles keeping the last good one, and reads it back after a restart', async () => {
    const stateDir = path.join(tmp.dir, 'state-web');
    const clock = new ManualClock(wholeSecondNow());
    const registry = new Registry();
    web.serve({ body: bundleDocument([root1], { sequence: 1, refreshHint: 60 }) });
    const federation = await startFederation({ targets: [webTarget()], stateDir, clock, logger, registry });
    let changes = 0;
    federation.onChange(() => changes++);
    assert.equal(federation.bundles().length, 0, 'https_web with nothing persisted starts without a bundle');

    await clock.advance(0);
    await eventually(() => (federation.bundles().length === 1 ? true : undefined), 10_000, 'the first bundle');
    assert.equal(changes, 1);
    let status = statusOf(federation);
    assert.equal(status.origin, 'endpoint');
    assert.equal(status.sequence, 1);
    assert.equal(status.nextRefreshAt!.getTime(), clock.now() + 60_000, 'the next fetch is at the refresh hint');
    const persisted = path.join(stateDir, 'federation', `${TD}.json`);
    assert.equal(statSync(persisted).mode & 0o777, 0o644);
    assert.equal(parseBundleFile(TD, readFileSync(persisted)).sequence, 1);

    // Not a second early: at the hint.
    web.serve({ body: bundleDocument([root1, root2], { sequence: 2, refreshHint: 60 }) });
    const requests = web.requests;
    await clock.advance(59_000);
    assert.equal(web.requests, requests);
    status = await nextRefresh(clock, federation);
    assert.equal(status.sequence, 2);
    assert.equal(federation.bundles()[0]!.x509Authorities.length, 2);
    assert.equal(changes, 2);

    const refusals: [Parameters<BundleEndpoint['serve']>[0], string, RegExp][] = [
      [{ body: 'garbage' }, 'invalid', /not JSON/],
      [{ body: bundleDocument([root1], { sequence: 1 }) }, 'sequence', /spiffe_sequence 1 is lower than 2/],
      [{ body: bundleDocument([root1], { sequence: 2 }) }, 'sequence', /spiffe_sequence 2 is the one in use but its authorities differ/],
      [{ body: bundleDocument([root1, root2]) }, 'sequence', /no spiffe_sequence while the bundle in use has 2/],
      [{ body: bundleDocument([thirdRoot], { sequence: 9 }) }, 'invalid', /trust domain "third\.test"/],
      [{ body: Buffer.alloc(MAX_BUNDLE_BYTES + 1, 0x20) }, 'too_large', /more than/],
      [{ status: 404, body: 'no' }, 'status', /HTTP 404/],
    ];
    let retry = 1000;
    for (const [answer, reason, message] of refusals) {
      web.serve(answer);
      const before = (await metricValue(registry, 'meshca_federated_bundle_refresh_errors_total', `trust_domain="${TD}",reason="${reason}"`)) ?? 0;
      status = await nextRefresh(clock, federation);
      assert.match(status.lastError ?? '', message);
      assert.equal(status.sequence, 2, 'the last good bundle stays in use');
      assert.equal(federation.bundles()[0]!.x509Authorities.length, 2);
      assert.equal(await metricValue(registry, 'meshca_federated_bundle_refresh_errors_total', `trust_domain="${TD}",reason="${reason}"`), before + 1);
      assert.equal(status.nextRefreshAt!.getTime() - clock.now(), Math.min(retry, 60_000), 'retried with backoff');
      retry *= 2;
    }
    assert.equal(changes, 2, 'no refusal was published');

    web.serve({ body: bundleDocument([root2], { sequence: 3, refreshHint: 5 }) });
    status = await nextRefresh(clock, federation);
    assert.equal(status.sequence, 3);
    assert.equal(status.lastError, undefined);
    assert.equal(status.nextRefreshAt!.getTime() - clock.now(), 5_000, 'the hint is followed');
    await clock.advance(4000); // short of the next refresh, 5 s after this one
    const metrics = await registry.metrics();
    assert.match(metrics, /meshca_federated_bundle_sequence\{trust_domain="other\.test"\} 3/);
    assert.match(metrics, /meshca_federated_bundle_authorities\{trust_domain="other\.test"\} 1/);
    assert.match(metrics, /meshca_federated_bundle_age_seconds\{trust_domain="other\.test"\} 4/);
    const debug = federationDebugView(federation, clock)() as { trustDomains: Record<string, unknown>[] };
    assert.deepEqual([debug.trustDomains[0]!.trustDomain, debug.trustDomains[0]!.sequence, debug.trustDomains[0]!.ageSeconds], [TD, 3, 4]);
    await federation.close();

    // A restart while the endpoint is down: the persisted bundle is used at once and kept.
    web.serve({ status: 503, body: 'down' });
    const again = await startFederation({ targets: [webTarget()], stateDir, clock, logger, registry: new Registry() });
    assert.deepEqual([statusOf(again).origin, statusOf(again).sequence, again.bundles()[0]!.x509Authorities.length], ['persisted', 3, 1]);
    status = await nextRefresh(clock, again);
    assert.match(status.lastError ?? '', /HTTP 503/);
    assert.equal(again.bundles()[0]!.sequence, 3);
    await again.close();
  });

  it('https_spiffe: starts from the initial bundle, then refuses an endpoint presenting another SPIFFE ID', async () => {
    const stateDir = path.join(tmp.dir, 'state-spiffe');
    const clock = new ManualClock(wholeSecondNow());
    const target = (bundle?: string): FederationTarget => ({
      trustDomain: TD,
      source: { kind: 'endpoint', url: spiffe.url, profile: { kind: 'https_spiffe', endpointId: ENDPOINT_ID }, ...(bundle ? { initialBundlePath: bundle } : {}) },
    });
    await assert.rejects(startFederation({ targets: [target()], stateDir, clock, logger, registry: new Registry() }), /needs the trust domain's current bundle.*add ,bundle=<file>.*meshca bundle set other\.test --file <file>/);

    spiffe.serve({ body: bundleDocument([root1, root2], { sequence: 5 }) });
    const federation = await startFederation({ targets: [target(root1File)], stateDir, clock, logger, registry: new Registry() });
    assert.deepEqual([statusOf(federation).origin, statusOf(federation).authorities], ['initial', 1]);
    let status = await nextRefresh(clock, federation);
    assert.deepEqual([status.origin, status.sequence, status.authorities], ['endpoint', 5, 2]);

    spiffe.present(wrongSvid);
    spiffe.serve({ body: bundleDocument([root2], { sequence: 6 }) });
    status = await nextRefresh(clock, federation);
    assert.match(status.lastError ?? '', /presented spiffe:\/\/other\.test\/not-the-endpoint, not the configured endpoint-id/);
    assert.equal(status.sequence, 5);
    await federation.close();
    spiffe.present(await makeSvid(root1, ENDPOINT_ID));

    // Persisted now: no initial bundle is needed any more.
    const again = await startFederation({ targets: [target()], stateDir, clock, logger, registry: new Registry() });
    assert.deepEqual([statusOf(again).origin, statusOf(again).sequence], ['persisted', 5]);
    await again.close();
  });

  it('a static file is re-read when it changes, with the same checks', async () => {
    const file = path.join(tmp.dir, 'static.json');
    writeFileSync(file, bundleDocument([root1], { sequence: 1 }));
    const clock = new ManualClock(wholeSecondNow());
    const federation = await startFederation({ targets: [{ trustDomain: TD, source: { kind: 'file', path: file } }], stateDir: path.join(tmp.dir, 'state-file'), clock, logger, registry: new Registry() });
    assert.deepEqual([statusOf(federation).origin, statusOf(federation).sequence], ['file', 1]);
    writeFileSync(file, bundleDocument([root1, root2], { sequence: 2 }));
    await clock.advance(5000);
    await eventually(() => (statusOf(federation).sequence === 2 ? true : undefined), 5000, 'the new file to be used');
    writeFileSync(file, bundleDocument([root1], { sequence: 1 }));
    await clock.advance(5000);
    const status = await eventually(() => (statusOf(federation).lastError ? statusOf(federation) : undefined), 5000, 'the lower sequence to be refused');
    assert.match(status.lastError!, /lower than 2/);
    assert.equal(federation.bundles()[0]!.x509Authorities.length, 2);
    await federation.close();
  });

  it('meshca bundle set (through the CLI) is picked up by a running CA and shown by meshca bundle list', async () => {
    const stateDir = path.join(tmp.dir, 'state-set');
    const clock = new ManualClock(wholeSecondNow());
    web.serve({ status: 503, body: 'down' });
    const federation = await startFederation({ targets: [webTarget()], stateDir, clock, logger, registry: new Registry() });
    let changes = 0;
    federation.onChange(() => changes++);

    const set = await runMeshca(['bundle', 'set', TD, '--file', root1File, '--state-dir', stateDir]);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /^other\.test: 1 authority, no sequence, written to .*federation\/other\.test\.json; a running CA federating with other\.test uses it within 5s\n$/);
    await clock.advance(5000);
    const status = await eventually(() => (statusOf(federation).origin === 'set' ? statusOf(federation) : undefined), 5000, 'the set bundle to be used');
    assert.equal(status.authorities, 1);
    assert.equal(changes, 1);
    await federation.close();

    const list = await runMeshca(['bundle', 'list', '--state-dir', stateDir]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^TRUST DOMAIN\s+ORIGIN\s+SEQUENCE\s+AUTHORITIES\s+AGE\nother\.test\s+set\s+-\s+1\s+\d+s\n$/);
    const thirdFile = path.join(tmp.dir, 'third.pem');
    writeFileSync(thirdFile, thirdRoot.pem);
    // What `bundle set` prints (after "meshca: ") for a file whose authority is of another trust domain.
    await assert.rejects(readBundleFile(TD, thirdFile), /third\.pem: SPIFFE bundle for "other\.test": .*belongs to trust domain "third\.test", not "other\.test"$/);
  });
});

describe('--federate-with', () => {
  const read = (flags: string[] | undefined, env: Record<string, string> = {}): FederationTarget[] =>
    readCaServerConfig({ ...(flags ? { federateWith: flags } : {}), trustDomain: 'cluster.local' }, env).federation.targets;

  it('reads each form, from the flag or the variable', () => {
    assert.deepEqual(read(undefined), []);
    const targets = read([
      'a.test=https://a.example/bundle',
      'b.test=https://b.example:8443/b,profile=https_web,ca-file=/etc/b.pem',
      'c.test=https://c.example/,profile=https_spiffe,endpoint-id=spiffe://c.test/spire/server,bundle=/etc/c.json',
      'd.test=file:/etc/d,with,commas.json',
    ]);
    assert.deepEqual(
      targets.map((t) => (t.source.kind === 'file' ? [t.trustDomain, t.source.path] : [t.trustDomain, t.source.url.href, t.source.profile, t.source.initialBundlePath])),
      [
        ['a.test', 'https://a.example/bundle', { kind: 'https_web' }, undefined],
        ['b.test', 'https://b.example:8443/b', { kind: 'https_web', caFile: '/etc/b.pem' }, undefined],
        ['c.test', 'https://c.example/', { kind: 'https_spiffe', endpointId: 'spiffe://c.test/spire/server' }, '/etc/c.json'],
        ['d.test', '/etc/d,with,commas.json'],
      ],
    );
    assert.deepEqual(
      read(undefined, { MESHCA_FEDERATE_WITH: ' a.test=https://a.example/;b.test=file:/b.json\n' }).map((t) => t.trustDomain),
      ['a.test', 'b.test'],
    );
  });

  it('refuses, in one line naming the fix', () => {
    const cases: [string[], RegExp][] = [
      [['cluster.local=https://x.example/'], /"cluster\.local" is this CA's own trust domain/],
      [['a.test=https://x.example/', 'a.test=file:/a.json'], /names trust domain "a\.test" twice/],
      [['a.test=http://x.example/'], /must be an https:\/\/ URL, not http:\/\//],
      [['a.test=https://x.example/,profile=https_spiffe,endpoint-id=spiffe://b.test/x'], /endpoint-id spiffe:\/\/b\.test\/x is in trust domain "b\.test", not "a\.test"/],
      [['a.test=https://x.example/,profile=https_spiffe'], /needs endpoint-id=spiffe:\/\/a\.test\/<path>/],
      [['a.test=https://x.example/,bundle=/b.json'], /bundle goes with profile=https_spiffe/],
      [['a.test=https://x.example/,profile=ftp'], /unknown profile "ftp"/],
      [['a.test=https://x.example/,color=blue'], /unknown option "color"/],
      [['A.test=https://x.example/'], /lowercase/],
      [['a.test'], /expected <trust-domain>=<https URL>/],
    ];
    for (const [flags, message] of cases) {
      assert.throws(
        () => read(flags),
        (error: Error) => error.name === 'ConfigError' && message.test(error.message) && !error.message.includes('\n'),
        `${flags.join(' ')}: ${message}`,
      );
    }
  });
});

describe('/debug/federation', () => {
  it('answers the status when federation runs, 404 otherwise', async () => {
    const options = { registry: new Registry(), ready: async () => ({ ready: true }), debugInfo: () => ({}), decisions: () => ({ decisions: [], held: 0, capacity: 0 }) };
    const without = createMonitoringServer(options);
    assert.equal((await without.inject({ url: '/debug/federation' })).statusCode, 404);
    const status = { trustDomain: TD, origin: 'endpoint' as const, sequence: 4, authorities: 2 };
    const withIt = createMonitoringServer({ ...options, federation: federationDebugView({ status: () => [status] }, { now: () => 0 }) });
    const answer = await withIt.inject({ url: '/debug/federation' });
    assert.equal(answer.statusCode, 200);
    assert.deepEqual(answer.json(), { trustDomains: [status] });
    await Promise.all([without.close(), withIt.close()]);
  });
});
