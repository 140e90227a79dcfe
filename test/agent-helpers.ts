/**
 * Helpers for the agent/SDS tests: an in-process CA behind the agent's narrow CaClient interface (a LeafIssuer over
 * a root from createCaCertificate; tokens are plain strings mapped to service accounts), an in-process agent on a
 * real Unix socket, and a raw SDS stream driver over real grpc-js that lets a test play Envoy step by step.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import {
  CaCallError,
  readAgentConfig,
  startAgent,
  type AgentFlags,
  type CaClient,
  type Clock,
  type CertificateRequest,
  type RunningAgent,
  type TrustBundleSource,
} from '../src/agent/index.js';
import type { KeySource } from '../src/agent/keys.js';
import { connectSds, workloadTokenMetadata } from '../src/agent/sds-client.js';
import type { Logger } from '../src/log.js';
import { SERVER_NAME } from './ca-helpers.js';
import { startMeshca, type MeshcaProcess } from './support/process.js';
import {
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  LeafIssuer,
  parseCertificate,
  parseCsr,
  verifyCsr,
  type ParsedCertificate,
  generateKeyPairFor,
} from '../src/pki/index.js';
import {
  decodeSecretAny,
  SECRET_TYPE_URL,
  type DeltaDiscoveryRequest,
  type DeltaDiscoveryResponse,
  type DiscoveryRequest,
  type DiscoveryResponse,
  type Init,
  type SdsClient,
  type SecretMessage,
} from '../src/wire/protos.js';

export { SECRET_TYPE_URL };

/** 2100-01-01: the exp of the JWTs that stand for test token labels. */
const FAR_FUTURE_EXP = 4_102_444_800;
const LABEL_CLAIM = 'meshca_test_label';

function jwtPart(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/**
 * A JWT-shaped workload token (unsigned: the in-process CA does not check signatures) carrying `label`, so it passes
 * the agent's shape check; InProcessCa maps it back to the label. `exp` is in seconds.
 */
export function workloadJwt(label: string, exp: number = FAR_FUTURE_EXP, extraClaims: Record<string, unknown> = {}): string {
  return `${jwtPart({ alg: 'RS256', typ: 'JWT' })}.${jwtPart({ [LABEL_CLAIM]: label, exp, ...extraClaims })}.${Buffer.from(`sig:${label}`).toString('base64url')}`;
}

/**
 * Tests name tokens by short labels ('tok-frontend'); on the wire each label is sent as workloadJwt(label). A token
 * that already has a JWT's three parts is sent as it is.
 */
export function wireToken(token: string): string {
  return token.split('.').length === 3 ? token : workloadJwt(token);
}

/** The label a workloadJwt carries; any other token is its own label. */
export function tokenLabel(token: string): string {
  const parts = token.split('.');
  if (parts.length !== 3) return token;
  try {
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
    return typeof claims[LABEL_CLAIM] === 'string' ? claims[LABEL_CLAIM] : token;
  } catch {
    return token;
  }
}

/** The metadata of a stream presenting the token labelled `token` (see wireToken). */
export function tokenMetadata(token: string | undefined): grpc.Metadata {
  return workloadTokenMetadata(token === undefined ? undefined : wireToken(token));
}

export function tempDir(prefix = 'meshca-agent-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** JSON log lines kept in memory, so tests can look at what the agent said. */
export function memoryLogger(): { log: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const destination = {
    write(line: string) {
      records.push(JSON.parse(line) as Record<string, unknown>);
      if (process.env.MESHCA_TEST_VERBOSE === '1') process.stderr.write(line);
      return true;
    },
  };
  return { log: pino({ level: 'debug' }, destination), records };
}

interface CaGeneration {
  key: KeyObject;
  cert: ParsedCertificate;
  issuer: LeafIssuer;
}

function newRoot(name: string): CaGeneration {
  const { privateKey } = generateKeyPairFor('ec-p256');
  const der = createCaCertificate({
    subject: { organization: 'meshca-test', commonName: name },
    subjectKey: privateKey,
    notAfter: new Date(Date.now() + 30 * 86400_000),
  });
  const cert = parseCertificate(der);
  return { key: privateKey, cert, issuer: new LeafIssuer({ certificate: cert, privateKey }) };
}

/**
 * A CA in the test process. Tokens (labels, see wireToken) are registered with `addWorkload`; an unknown token is refused like istiod
 * refuses one (UNAUTHENTICATED "request authenticate failure"). `down` makes every call UNAVAILABLE.
 */
export class InProcessCa implements CaClient {
  readonly address = 'in-process-ca';
  readonly trustDomain = 'cluster.local';
  /** The CA's clock when it signs (a test on virtual time passes the agent's). */
  private readonly now: () => number;
  down = false;
  calls = 0;
  readonly tokensSeen: string[] = [];
  private readonly accounts = new Map<string, { namespace: string; serviceAccount: string }>();
  private current: CaGeneration = newRoot('root-1');
  private roots: CaGeneration[] = [this.current];

  constructor(options: { now?: () => number } = {}) {
    this.now = options.now ?? (() => Date.now());
  }

  addWorkload(token: string, namespace: string, serviceAccount: string): string {
    this.accounts.set(token, { namespace, serviceAccount });
    return `spiffe://${this.trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  }

  forget(token: string): void {
    this.accounts.delete(token);
  }

  get rootsPem(): string {
    return this.roots.map((r) => certificateToPem(r.cert.der)).join('');
  }

  /** Root rotation: a new root signs from now on; the bundle holds both. */
  rotateRoot(): void {
    this.current = newRoot(`root-${this.roots.length + 1}`);
    this.roots = [this.current, ...this.roots];
  }

  async createCertificate(request: CertificateRequest): Promise<string[]> {
    this.calls++;
    await new Promise((resolve) => setImmediate(resolve));
    if (this.down) throw new CaCallError(grpc.status.UNAVAILABLE, 'connect ECONNREFUSED (CA stopped)');
    const label = request.token === undefined ? undefined : tokenLabel(request.token);
    if (label !== undefined) this.tokensSeen.push(label);
    const account = label === undefined ? undefined : this.accounts.get(label);
    if (!account) throw new CaCallError(grpc.status.UNAUTHENTICATED, 'request authenticate failure');
    const csr = parseCsr(request.csrPem);
    verifyCsr(csr);
    const leaf = this.current.issuer.issue({
      spkiDer: csr.spkiDer,
      uris: [`spiffe://${this.trustDomain}/ns/${account.namespace}/sa/${account.serviceAccount}`],
      ttlSeconds: request.ttlSeconds,
      now: this.now(),
    });
    return [certificateToPem(leaf.der), this.rootsPem];
  }

  async waitUntilReachable(): Promise<void> {}

  close(): void {}
}

/**
 * Workload keys ready at once (EC P-256, made synchronously): with them, a renewal on virtual time does its whole
 * work within a few turns of the event loop, with no key generation on a worker thread to wait for.
 * Counts the keys taken: a renewal starts by taking one.
 */
export class ReadyKeys implements KeySource {
  taken = 0;
  private readonly returned: KeyObject[] = [];

  take(): Promise<KeyObject> {
    this.taken++;
    return Promise.resolve(this.returned.pop() ?? generateKeyPairFor('ec-p256').privateKey);
  }

  giveBack(key: KeyObject): void {
    this.returned.push(key);
  }

  spent(): void {}
}

export interface TestAgent<Ca extends CaClient = InProcessCa> {
  agent: RunningAgent;
  ca: Ca;
  dir: string;
  socket: string;
  records: Record<string, unknown>[];
  client: SdsClient;
  close(): Promise<void>;
}

/**
 * An agent in this process on a real Unix socket in a temp dir, talking to `ca`. With `clock` (virtual time), the
 * agent's cache, token checks and expiry metrics run on it, the default CA signs on it, and keys are ReadyKeys.
 */
export async function startTestAgent<Ca extends CaClient = InProcessCa>(
  options: { ca?: Ca; flags?: AgentFlags; env?: Record<string, string>; clock?: Clock; keys?: KeySource; trustBundles?: TrustBundleSource } = {},
): Promise<TestAgent<Ca>> {
  const { dir, cleanup } = tempDir();
  const socket = path.join(dir, 'sds', 'socket');
  const clock = options.clock;
  // Without a CA given, Ca is its default, InProcessCa.
  const ca = options.ca ?? (new InProcessCa(clock ? { now: () => clock.now() } : {}) as CaClient as Ca);
  const config = readAgentConfig(
    { sdsSocket: socket, statusAddr: '127.0.0.1:0', keyPoolSize: '0', ...options.flags },
    { ECC_SIGNATURE_ALGORITHM: 'ECDSA', ...options.env },
  );
  const { log, records } = memoryLogger();
  const keys = options.keys ?? (clock ? new ReadyKeys() : undefined);
  const agent = await startAgent(config, log, {
    caClient: ca,
    ...(clock ? { clock } : {}),
    ...(keys ? { keys } : {}),
    ...(options.trustBundles ? { trustBundles: options.trustBundles } : {}),
  });
  const client = connectSds(socket);
  return {
    agent,
    ca,
    dir,
    socket,
    records,
    client,
    close: async () => {
      client.close();
      await agent.close();
      cleanup();
    },
  };
}

/** Resolves when `predicate` holds, polling; rejects with `what` after `timeoutMs`. */
export async function eventually(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export interface DecodedSecret {
  secret: SecretMessage;
  chainPem?: string;
  keyPem?: string;
  rootsPem?: string;
  /** The first URI SAN of the leaf (tls_certificate secrets). */
  spiffeId?: string;
  leaf?: ParsedCertificate;
}

export function decodeSecret(any: { type_url: string; value: Buffer }): DecodedSecret {
  const secret = decodeSecretAny(any);
  if (secret.type === 'tls_certificate') {
    const chainPem = secret.tls_certificate?.certificate_chain?.inline_bytes?.toString() ?? '';
    const keyPem = secret.tls_certificate?.private_key?.inline_bytes?.toString() ?? '';
    const leaf = parseCertificate(certificatesFromPem(chainPem)[0]!);
    return { secret, chainPem, keyPem, leaf, ...(leaf.sans.uris[0] ? { spiffeId: leaf.sans.uris[0] } : {}) };
  }
  if (secret.type === 'validation_context') {
    return { secret, rootsPem: secret.validation_context?.trusted_ca?.inline_bytes?.toString() ?? '' };
  }
  return { secret };
}

/** The secret names in a SotW response, in order. */
export function namesIn(response: DiscoveryResponse): string[] {
  return response.resources.map((any) => decodeSecretAny(any).name);
}

/** Queue of whatever arrives on a client stream, so a test can take messages one at a time. */
class Inbox<T> {
  private readonly items: T[] = [];
  private readonly waiters: { resolve: (item: T) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }[] = [];
  ended: grpc.ServiceError | null = null;
  private endWaiters: ((error: grpc.ServiceError | null) => void)[] = [];
  private finished = false;

  push(item: T): void {
    const waiter = this.waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(item);
    } else {
      this.items.push(item);
    }
  }

  finish(error: grpc.ServiceError | null): void {
    if (this.finished) return;
    this.finished = true;
    this.ended = error;
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(`stream ended (${error ? `${grpc.status[error.code]}: ${error.details}` : 'OK'}) while a message was expected`));
    }
    for (const resolve of this.endWaiters.splice(0)) resolve(error);
  }

  next(timeoutMs: number): Promise<T> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    if (this.finished) return Promise.reject(new Error(`stream already ended (${this.ended?.details ?? 'OK'})`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.findIndex((w) => w.timer === timer), 1);
        reject(new Error(`no message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push({ resolve, reject, timer });
    });
  }

  get pending(): number {
    return this.items.length;
  }

  end(): Promise<grpc.ServiceError | null> {
    if (this.finished) return Promise.resolve(this.ended);
    return new Promise((resolve) => this.endWaiters.push(resolve));
  }
}

/** A StreamSecrets stream driven by hand. */
export class RawSotwStream {
  readonly inbox = new Inbox<DiscoveryResponse>();
  readonly call: grpc.ClientDuplexStream<Init<DiscoveryRequest>, DiscoveryResponse>;

  constructor(client: SdsClient, token: string | undefined, metadata?: grpc.Metadata) {
    this.call = client.StreamSecrets(metadata ?? tokenMetadata(token));
    this.call.on('data', (response: DiscoveryResponse) => this.inbox.push(response));
    this.call.on('error', (error: grpc.ServiceError) => this.inbox.finish(error));
    this.call.on('end', () => this.inbox.finish(null));
    this.call.on('status', (status: grpc.StatusObject) => {
      if (status.code === grpc.status.OK) this.inbox.finish(null);
    });
  }

  send(request: Init<DiscoveryRequest>): void {
    this.call.write({ type_url: SECRET_TYPE_URL, ...request });
  }

  /** The first request of a stream, as Envoy sends it. */
  subscribe(names: string[], extra: Init<DiscoveryRequest> = {}): void {
    this.send({ node: { id: 'sidecar~10.0.0.1~test.default~default.svc.cluster.local' }, resource_names: names, version_info: '', response_nonce: '', ...extra });
  }

  ack(response: DiscoveryResponse, names: string[]): void {
    this.send({ version_info: response.version_info, resource_names: names, response_nonce: response.nonce });
  }

  next(timeoutMs = 10_000): Promise<DiscoveryResponse> {
    return this.inbox.next(timeoutMs);
  }

  /** Resolves with the error status the server ended the stream with (null for OK). */
  ended(): Promise<grpc.ServiceError | null> {
    return this.inbox.end();
  }

  close(): void {
    this.call.cancel();
  }
}

/** A DeltaSecrets stream driven by hand. */
export class RawDeltaStream {
  readonly inbox = new Inbox<DeltaDiscoveryResponse>();
  readonly call: grpc.ClientDuplexStream<Init<DeltaDiscoveryRequest>, DeltaDiscoveryResponse>;

  constructor(client: SdsClient, token: string | undefined) {
    this.call = client.DeltaSecrets(tokenMetadata(token));
    this.call.on('data', (response: DeltaDiscoveryResponse) => this.inbox.push(response));
    this.call.on('error', (error: grpc.ServiceError) => this.inbox.finish(error));
    this.call.on('end', () => this.inbox.finish(null));
  }

  send(request: Init<DeltaDiscoveryRequest>): void {
    this.call.write({ type_url: SECRET_TYPE_URL, ...request });
  }

  next(timeoutMs = 10_000): Promise<DeltaDiscoveryResponse> {
    return this.inbox.next(timeoutMs);
  }

  ended(): Promise<grpc.ServiceError | null> {
    return this.inbox.end();
  }

  close(): void {
    this.call.cancel();
  }
}

export { metricValue } from './support/metrics.js';

export async function metricsText(agent: RunningAgent): Promise<string> {
  return (await fetch(`${agent.statusUrl}/metrics`)).text();
}

export interface SotwRuleTarget {
  client: SdsClient;
  /** A token the CA accepts, and the identity it proves. */
  token: string;
  spiffeId: string;
  /** A second servable resource name (a file-root:), used as a sentinel besides ROOTCA. */
  extraName: string;
  nacks(): Promise<number>;
  records(): Record<string, unknown>[];
}

/**
 * The state-of-the-world rules, each in its own test, against any running agent (in-process or the real binary).
 * "Nothing was sent" is checked without waiting: a later request that must produce a known response acts as a
 * sentinel, and the next message on the stream has to be that response.
 */
export function defineSotwRuleTests(target: () => SotwRuleTarget): void {
  it('answers a first request with the secret, a nonce, a version and the Secret type URL', async () => {
    const { client, token, spiffeId } = target();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default']);
    const response = await stream.next();
    assert.equal(response.type_url, SECRET_TYPE_URL);
    assert.notEqual(response.nonce, '');
    assert.notEqual(response.version_info, '');
    assert.deepEqual(namesIn(response), ['default']);
    const secret = decodeSecret(response.resources[0]!);
    assert.equal(secret.spiffeId, spiffeId);
    assert.match(secret.keyPem!, /BEGIN EC PRIVATE KEY/);
    // Istio's chain for Envoy: the leaf, then the root(s).
    assert.ok((secret.chainPem!.match(/BEGIN CERTIFICATE/g) ?? []).length >= 2);
    stream.close();
  });

  it('never answers an ACK, and sends only the newly added name when the subscription grows', async () => {
    const { client, token, extraName } = target();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default']);
    const first = await stream.next();
    stream.ack(first, ['default']);
    // Sentinel: same nonce, ROOTCA added. The next message must answer this, with ROOTCA only.
    stream.send({ version_info: first.version_info, resource_names: ['default', 'ROOTCA'], response_nonce: first.nonce });
    const second = await stream.next();
    assert.deepEqual(namesIn(second), ['ROOTCA']);
    assert.notEqual(second.nonce, first.nonce);
    assert.notEqual(second.version_info, first.version_info);
    stream.ack(second, ['default', 'ROOTCA']);
    stream.send({ version_info: second.version_info, resource_names: ['default', 'ROOTCA', extraName], response_nonce: second.nonce });
    assert.deepEqual(namesIn(await stream.next()), [extraName]);
    stream.close();
  });

  it('ignores a request with a stale nonce', async () => {
    const { client, token, extraName } = target();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default']);
    const first = await stream.next();
    // Stale: not the latest nonce of this stream. If it were honoured, ROOTCA would come next.
    stream.send({ version_info: first.version_info, resource_names: ['default', 'ROOTCA'], response_nonce: 'not-the-latest-nonce' });
    stream.send({ version_info: first.version_info, resource_names: ['default', extraName], response_nonce: first.nonce });
    assert.deepEqual(namesIn(await stream.next()), [extraName]);
    stream.close();
  });

  it('on NACK logs and counts it, stays quiet and does not resend the rejected secret', async () => {
    const { client, token } = target();
    const nacksBefore = await target().nacks();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default']);
    const first = await stream.next();
    stream.send({
      version_info: '',
      resource_names: ['default'],
      response_nonce: first.nonce,
      error_detail: { code: grpc.status.INTERNAL, message: 'Failed to load certificate chain (rule test)' },
    });
    // Sentinel: ROOTCA added with the same nonce. `default` must not come back with it.
    stream.send({ version_info: '', resource_names: ['default', 'ROOTCA'], response_nonce: first.nonce });
    assert.deepEqual(namesIn(await stream.next()), ['ROOTCA']);
    assert.equal(await target().nacks(), nacksBefore + 1);
    await eventually(
      () => target().records().some((r) => typeof r.msg === 'string' && r.msg.includes('NACK') && String(r.err).includes('(rule test)')),
      'the NACK to be logged',
    );
    stream.close();
  });

  it('sends a name again when it is removed and added back', async () => {
    const { client, token } = target();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default', 'ROOTCA']);
    const seen = new Set<string>();
    let last: DiscoveryResponse | undefined;
    while (seen.size < 2) {
      if (last) stream.ack(last, ['default', 'ROOTCA']);
      last = await stream.next();
      namesIn(last).forEach((n) => seen.add(n));
    }
    stream.ack(last!, ['default', 'ROOTCA']);
    // Removal alone gets no answer; adding it back must bring ROOTCA again.
    stream.send({ version_info: last!.version_info, resource_names: ['default'], response_nonce: last!.nonce });
    stream.send({ version_info: last!.version_info, resource_names: ['default', 'ROOTCA'], response_nonce: last!.nonce });
    assert.deepEqual(namesIn(await stream.next()), ['ROOTCA']);
    stream.close();
  });

  it('answers a reconnect that carries the nonce and version of the previous stream', async () => {
    const { client, token } = target();
    const first = new RawSotwStream(client, token);
    first.subscribe(['default']);
    const old = await first.next();
    first.ack(old, ['default']);
    first.close();
    const second = new RawSotwStream(client, token);
    second.subscribe(['default'], { version_info: old.version_info, response_nonce: old.nonce });
    const response = await second.next();
    assert.deepEqual(namesIn(response), ['default']);
    assert.notEqual(response.nonce, old.nonce, 'nonces are per stream');
    second.close();
  });

  it('uses its own nonces on each stream', async () => {
    const { client, token } = target();
    const a = new RawSotwStream(client, token);
    const b = new RawSotwStream(client, token);
    a.subscribe(['default']);
    b.subscribe(['default']);
    const [ra, rb] = await Promise.all([a.next(), b.next()]);
    assert.notEqual(ra.nonce, rb.nonce);
    a.close();
    b.close();
  });

  it('treats empty resource_names as unsubscribe-all, and ends an unknown name with NOT_FOUND', async () => {
    const { client, token } = target();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default']);
    const first = await stream.next();
    stream.send({ version_info: first.version_info, resource_names: [], response_nonce: first.nonce });
    stream.send({ version_info: first.version_info, resource_names: ['ROOTCA'], response_nonce: first.nonce });
    assert.deepEqual(namesIn(await stream.next()), ['ROOTCA']);
    stream.close();
    const unknown = new RawSotwStream(client, token);
    unknown.subscribe(['no-such-secret']);
    const error = await unknown.ended();
    assert.equal(error?.code, grpc.status.NOT_FOUND);
    assert.match(error!.details, /unknown SDS resource "no-such-secret".*default, ROOTCA/);
  });

  it('refuses another resource type on the stream', async () => {
    const { client, token } = target();
    const stream = new RawSotwStream(client, token);
    stream.subscribe(['default'], { type_url: 'type.googleapis.com/envoy.config.cluster.v3.Cluster' });
    const error = await stream.ended();
    assert.equal(error?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(error!.details, /serves only type\.googleapis\.com\/envoy\.extensions\.transport_sockets\.tls\.v3\.Secret/);
  });
}

// --- the real binaries --------------------------------------------------------------------------------------------

export interface AgentProcess {
  proc: MeshcaProcess;
  dir: string;
  socket: string;
  statusUrl: string;
  client: SdsClient;
  metrics(): Promise<string>;
  stop(): Promise<void>;
}

/** Environment for a child agent: the developer's shell must not change what the test sees. */
export function agentEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith('CA_HEADER_')) delete env[name];
  }
  for (const name of [
    'CA_ADDR',
    'ISTIOD_SAN',
    'SECRET_TTL',
    'SECRET_GRACE_PERIOD_RATIO',
    'SECRET_GRACE_PERIOD_RATIO_JITTER',
    'WORKLOAD_RSA_KEY_SIZE',
    'ECC_SIGNATURE_ALGORITHM',
    'ECC_CURVE',
    'PKCS8_KEY',
    'OUTPUT_CERTS',
    'ISTIO_META_CERT_SIGNER',
    'ISTIO_META_CLUSTER_ID',
    'TRUST_DOMAIN',
    'MESHCA_AGENT_MODE',
    'MESHCA_FILE_RESOURCE_DIRS',
    'MESHCA_LOG_LEVEL',
  ]) {
    delete env[name];
  }
  return { ...env, ECC_SIGNATURE_ALGORITHM: 'ECDSA', ISTIOD_SAN: SERVER_NAME, ...extra };
}

/** Starts `meshca agent` (dist/cli.js) against a CA; waits for "SDS agent ready". */
export async function startAgentProcess(options: { caAddress: string; caRootPem: string; env?: NodeJS.ProcessEnv; args?: string[] }): Promise<AgentProcess> {
  const { dir, cleanup } = tempDir('meshca-agent-e2e-');
  const root = path.join(dir, 'root-cert.pem');
  writeFileSync(root, options.caRootPem);
  const socket = path.join(dir, 'run', 'socket');
  const proc = startMeshca(
    ['agent', '--sds-socket', socket, '--status-addr', '127.0.0.1:0', '--ca-addr', options.caAddress, '--ca-root-cert', root, ...(options.args ?? [])],
    { env: agentEnv(options.env) },
  );
  let statusUrl: string;
  try {
    statusUrl = String((await proc.waitForLog(/^status server listening$/, 30_000)).url);
    await proc.waitForLog(/^SDS agent ready$/, 30_000);
  } catch (error) {
    await proc.stop('SIGKILL');
    cleanup();
    throw error;
  }
  const client = connectSds(socket);
  return {
    proc,
    dir,
    socket,
    statusUrl,
    client,
    metrics: async () => (await fetch(`${statusUrl}/metrics`)).text(),
    stop: async () => {
      client.close();
      await proc.stop();
      cleanup();
    },
  };
}
