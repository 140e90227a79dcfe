/**
 * Seeing what the node agent holds: /debug/secrets on the status server, `meshca secrets` (the built CLI) against
 * it, and the opt-in per-identity expiry metric. The agent runs in this process on virtual time (a ManualClock)
 * with real SDS streams over a Unix socket and a real HTTP status server; the CLI is the real dist/cli.js.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { networkInterfaces } from 'node:os';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { SecretsReport } from '../src/agent/debug.js';
import { isLoopback } from '../src/agent/status-server.js';
import { certificatesFromPem, parseCertificate } from '../src/pki/index.js';
import { decodeSecret, eventually, metricsText, metricValue, RawSotwStream, startTestAgent, wireToken, type TestAgent } from './agent-helpers.js';
import { ManualClock, wholeSecondNow } from './support/manual-clock.js';
import { runMeshca } from './support/process.js';

const EXPIRY = 'meshca_agent_identity_cert_expiry_timestamp_seconds';
const UNLISTED = 'meshca_agent_identity_expiry_unlisted';

async function debugText(t: TestAgent): Promise<string> {
  const response = await fetch(`${t.agent.statusUrl}/debug/secrets`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /application\/json/);
  return response.text();
}

async function report(t: TestAgent): Promise<SecretsReport> {
  return JSON.parse(await debugText(t)) as SecretsReport;
}

/** Opens a stream for `token`, takes and ACKs its first secret. */
async function fetchSecret(t: TestAgent, token: string): Promise<{ stream: RawSotwStream; secret: ReturnType<typeof decodeSecret> }> {
  const stream = new RawSotwStream(t.client, token);
  stream.subscribe(['default']);
  const response = await stream.next();
  stream.ack(response, ['default']);
  return { stream, secret: decodeSecret(response.resources[0]!) };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('agent debug view (/debug/secrets, meshca secrets)', () => {
  it('shows each identity with the issued serial and validity, its streams, renewal schedule and failures; never keys or tokens', async () => {
    const start = wholeSecondNow();
    const clock = new ManualClock(start);
    const t = await startTestAgent({ clock, flags: { secretTtl: '6s' }, env: { SECRET_GRACE_PERIOD_RATIO_JITTER: '0' } });
    try {
      const empty = await report(t);
      assert.deepEqual({ ...empty, time: '' }, { time: '', identities: [], trustBundle: null, recentFailures: [] });

      const id = t.ca.addWorkload('tok-a', 'shop', 'frontend');
      const a1 = await fetchSecret(t, 'tok-a');
      const leaf = a1.secret.leaf!;
      let shown = await report(t);
      assert.equal(shown.time, new Date(start).toISOString(), "the agent's clock");
      assert.equal(shown.identities.length, 1);
      const entry = shown.identities[0]!;
      assert.deepEqual(entry, {
        spiffeId: id,
        resourceNames: ['default'],
        serial: leaf.serialHex,
        issuer: leaf.issuer,
        notBefore: leaf.notBefore.toISOString(),
        notAfter: leaf.notAfter.toISOString(),
        nextRenewal: new Date(start + 3000).toISOString(),
        streams: 1,
        state: 'issued',
        lastError: null,
      });
      assert.equal(leaf.notAfter.getTime(), start + 6000);
      const rootDers = certificatesFromPem(a1.secret.chainPem!).slice(1);
      assert.deepEqual(
        shown.trustBundle,
        {
          resourceName: 'ROOTCA',
          roots: rootDers.map((der) => {
            const root = parseCertificate(der);
            const hex = createHash('sha256').update(der).digest('hex').toUpperCase();
            return { subject: root.subject, notAfter: root.notAfter.toISOString(), fingerprintSha256: hex.match(/../g)!.join(':') };
          }),
        },
      );

      // Streams: up with a second Envoy of the same identity, down when it goes.
      const a2 = await fetchSecret(t, 'tok-a');
      assert.equal((await report(t)).identities[0]!.streams, 2);
      a2.stream.close();
      await eventually(async () => (await report(t)).identities[0]!.streams === 1, 'the stream count to drop back to 1');

      // A workload that got no certificate at all shows up among the recent failures, by its token's label.
      const refused = new RawSotwStream(t.client, 'tok-unknown');
      refused.subscribe(['default']);
      assert.equal((await refused.ended())?.code, grpc.status.UNAUTHENTICATED);
      const failures = (await report(t)).recentFailures;
      assert.equal(failures.length, 1);
      assert.equal(failures[0]!.code, 'unauthenticated');
      assert.match(failures[0]!.credential, /^token sha256:[0-9a-f]{12}$/);
      assert.match(failures[0]!.message, /the CA refused the workload token .*request authenticate failure/);

      // The renewal happens exactly at the time shown, and the view moves to the new certificate and schedule.
      await clock.advanceTo(start + 2999);
      assert.equal((await report(t)).identities[0]!.serial, leaf.serialHex, 'nothing renewed before the time shown');
      await clock.advanceTo(start + 3000);
      const renewed = decodeSecret((await a1.stream.next()).resources[0]!).leaf!;
      shown = await report(t);
      assert.equal(shown.identities[0]!.serial, renewed.serialHex);
      assert.notEqual(renewed.serialHex, leaf.serialHex);
      assert.equal(shown.identities[0]!.notAfter, new Date(start + 9000).toISOString());
      assert.equal(shown.identities[0]!.nextRenewal, new Date(start + 6000).toISOString());

      // A failed renewal: state, last error and the retry time; recovery clears them.
      t.ca.down = true;
      await clock.advanceTo(start + 6000);
      const failed = (await report(t)).identities[0]!;
      assert.equal(failed.state, 'failed');
      assert.equal(failed.serial, renewed.serialHex, 'still serving the current certificate');
      assert.equal(failed.lastError?.at, new Date(start + 6000).toISOString());
      assert.match(failed.lastError!.message, /ECONNREFUSED \(CA stopped\)/);
      const retryAt = Date.parse(failed.nextRenewal!);
      assert.ok(retryAt >= start + 6050 && retryAt <= start + 6100, `the first retry comes after 50-100 ms of backoff, not at ${failed.nextRenewal}`);

      // The built CLI, table and JSON, against this running agent.
      const addr = new URL(t.agent.statusUrl).host;
      const tableRun = await runMeshca(['secrets', '--status-addr', addr]);
      assert.equal(tableRun.code, 0, tableRun.stderr);
      const lines = tableRun.stdout.split('\n');
      assert.match(lines[0]!, /^RESOURCE NAME +SPIFFE ID +SERIAL +ISSUER +NOT AFTER +NEXT RENEWAL +STREAMS +STATE$/);
      const row = lines[1]!.split(/ {3,}/);
      assert.deepEqual(row, ['default', id, renewed.serialHex, renewed.issuer, new Date(start + 9000).toISOString(), failed.nextRenewal, '1', 'failed']);
      assert.ok(lines.includes(`${id}: last renewal failed at ${failed.lastError!.at}: ${failed.lastError!.message}`));
      assert.match(tableRun.stdout, /^RESOURCE NAME +ROOT SUBJECT +NOT AFTER +SHA-256 FINGERPRINT$/m);
      assert.match(tableRun.stdout, /Recent failed issuances \(newest last\):\n {2}\S+ {2}token sha256:[0-9a-f]{12} {2}unauthenticated: /);
      const jsonRun = await runMeshca(['secrets', '-o', 'json'], { env: { MESHCA_STATUS_ADDR: addr } });
      assert.equal(jsonRun.code, 0, jsonRun.stderr);
      assert.deepEqual(JSON.parse(jsonRun.stdout), await report(t));

      // While the retry's CSR is at the CA the state is 'renewing'; once it is answered, 'issued' with no error.
      t.ca.down = false;
      let answer!: () => void;
      const answered = new Promise<void>((resolve) => (answer = resolve));
      const createCertificate = t.ca.createCertificate.bind(t.ca);
      t.ca.createCertificate = async (request) => {
        await answered;
        return createCertificate(request);
      };
      await clock.advanceTo(retryAt);
      assert.equal((await report(t)).identities[0]!.state, 'renewing');
      answer();
      await eventually(async () => (await report(t)).identities[0]!.state !== 'renewing', 'the renewal to finish');
      const recovered = (await report(t)).identities[0]!;
      assert.equal(recovered.state, 'issued');
      assert.equal(recovered.lastError, null);
      assert.notEqual(recovered.serial, renewed.serialHex);

      // No key material, no PEM, no token anywhere in what the endpoint or the CLI print.
      const texts = [await debugText(t), tableRun.stdout, jsonRun.stdout];
      for (const token of ['tok-a', 'tok-unknown'].map(wireToken)) {
        for (const part of [token, ...token.split('.')]) for (const text of texts) assert.ok(!text.includes(part), 'a token or a part of one is shown');
      }
      for (const text of texts) assert.doesNotMatch(text, /PRIVATE KEY|BEGIN /);
      a1.stream.close();
    } finally {
      await t.close();
    }
  });

  it('answers only callers on the same host', async () => {
    for (const address of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) assert.ok(isLoopback(address), address);
    for (const address of ['10.0.0.1', '::ffff:10.0.0.1', 'fd00::2', '::', undefined]) assert.ok(!isLoopback(address), String(address));
    const external = Object.values(networkInterfaces())
      .flat()
      .find((i) => i && !i.internal && i.family === 'IPv4');
    if (!external) return; // A host with no address but loopback has no other caller to refuse; the check above still ran.
    const t = await startTestAgent({ flags: { statusAddr: '0.0.0.0:0' } });
    try {
      const { port } = new URL(t.agent.statusUrl);
      const refused = await fetch(`http://${external.address}:${port}/debug/secrets`);
      assert.equal(refused.status, 403);
      assert.match(await refused.text(), /answers only callers on the agent's own host .*kubectl exec.*port-forward/);
      assert.equal((await fetch(`http://${external.address}:${port}/metrics`)).status, 200, 'metrics stay reachable for Prometheus');
      assert.equal((await fetch(`http://127.0.0.1:${port}/debug/secrets`)).status, 200);
    } finally {
      await t.close();
    }
  });

  it('meshca secrets says in one line which address it could not reach and how to fix it', async () => {
    const port = await freePort();
    const run = await runMeshca(['secrets', '--status-addr', `127.0.0.1:${port}`]);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, '');
    assert.equal(
      run.stderr,
      `meshca: cannot reach the meshca agent's status server at http://127.0.0.1:${port}/debug/secrets (ECONNREFUSED): ` +
        `is \`meshca agent\` running on this host? Point --status-addr (or MESHCA_STATUS_ADDR) at its --status-addr (now 127.0.0.1:${port})\n`,
    );
    // Something else on the port, without the endpoint.
    const other = createHttpServer((_request, response) => response.writeHead(404).end('not here'));
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const otherAddr = `127.0.0.1:${(other.address() as { port: number }).port}`;
      const wrong = await runMeshca(['secrets', '--status-addr', otherAddr]);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /^meshca: http:\/\/127\.0\.0\.1:\d+\/debug\/secrets answered 404: what listens there is not a meshca agent with \/debug\/secrets .*Point --status-addr/);
      assert.equal(wrong.stderr.split('\n').length, 2, 'one line');
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });
});

describe('per-identity expiry metric', () => {
  it('is absent by default; when enabled has one series per identity up to the limit, counts the rest, and drops a series with its identity', async () => {
    const off = await startTestAgent();
    try {
      off.ca.addWorkload('tok-a', 'shop', 'a');
      (await fetchSecret(off, 'tok-a')).stream.close();
      const text = await metricsText(off.agent);
      assert.ok(!text.includes(EXPIRY) && !text.includes(UNLISTED), 'no per-identity series unless asked for');
    } finally {
      await off.close();
    }

    const start = wholeSecondNow();
    const clock = new ManualClock(start);
    const t = await startTestAgent({
      clock,
      flags: { secretTtl: '1h', idleSecretTtl: '10s', identityMetricLimit: '1' },
      env: { MESHCA_IDENTITY_EXPIRY_METRIC: 'true' },
    });
    try {
      const idA = t.ca.addWorkload('tok-a', 'shop', 'a');
      const idB = t.ca.addWorkload('tok-b', 'shop', 'b');
      const a = await fetchSecret(t, 'tok-a');
      let text = await metricsText(t.agent);
      assert.equal(metricValue(text, EXPIRY, { spiffe_id: idA }), a.secret.leaf!.notAfter.getTime() / 1000);
      assert.equal(metricValue(text, UNLISTED), 0);

      await clock.advance(1000); // b's certificate is made a second later, so it expires a second after a's
      const b = await fetchSecret(t, 'tok-b');
      text = await metricsText(t.agent);
      assert.equal(b.secret.leaf!.notAfter.getTime(), a.secret.leaf!.notAfter.getTime() + 1000);
      // Istio's gauge keeps one series per resource however many identities the agent holds: the soonest expiry.
      assert.deepEqual(
        text.split('\n').filter((l) => l.startsWith('istio_agent_cert_expiry_seconds{resource_name="default"')),
        [`istio_agent_cert_expiry_seconds{resource_name="default"} ${Math.round((a.secret.leaf!.notAfter.getTime() - clock.now()) / 1000)}`],
      );
      assert.deepEqual(text.split('\n').filter((l) => l.startsWith(`${EXPIRY}{`)), [`${EXPIRY}{spiffe_id="${idA}"} ${a.secret.leaf!.notAfter.getTime() / 1000}`], 'capped at one series');
      assert.equal(metricValue(text, UNLISTED), 1);
      assert.ok(t.records.some((r) => r.level === 40 && String(r.msg).includes(`1 have no ${EXPIRY} series`)), 'the cap is logged');

      // Identity a leaves the cache (its stream ends, the idle time passes): its series goes and b gets the slot.
      a.stream.close();
      await eventually(async () => (await report(t)).identities.find((i) => i.spiffeId === idA)?.streams === 0, 'a to have no stream');
      await clock.advance(10_000);
      text = await metricsText(t.agent);
      assert.ok(!text.includes(idA), 'the dropped identity has no series');
      assert.equal(metricValue(text, EXPIRY, { spiffe_id: idB }), b.secret.leaf!.notAfter.getTime() / 1000);
      assert.equal(metricValue(text, UNLISTED), 0);

      b.stream.close();
      await eventually(async () => (await report(t)).identities[0]?.streams === 0, 'b to have no stream');
      await clock.advance(10_000);
      text = await metricsText(t.agent);
      assert.deepEqual(text.split('\n').filter((l) => l.startsWith(`${EXPIRY}{`)), []);
    } finally {
      await t.close();
    }
  });
});
