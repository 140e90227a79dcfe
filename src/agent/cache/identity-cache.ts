/**
 * The agent's identity cache: one key and certificate chain per workload identity, renewed on the schedule of
 * rotation.ts, on an injected clock. It knows no transport: the SDS server and OUTPUT_CERTS are views over it
 * (see ../workload-secrets.ts), and a second API would be another view, not a fork.
 *
 * Identity safety: the cache is keyed by the identity the CA wrote into the leaf's SAN, and a caller reaches an
 * entry only through a credential (token) that the CA accepted for exactly that identity. Callers that proved the
 * same identity share one entry, so a renewal costs one CSR however many Envoys watch it.
 *
 * Do no expensive work before proof: a new token waits its turn (ProofAdmission, per connection and overall),
 * takes a key only once a CA request slot is free, and a token the CA refused is refused locally for a while
 * (RefusalCache) with its key given back to the pool; a token whose exp passes ends its leases at the next renewal.
 */
import { createHash, type KeyObject } from 'node:crypto';
import type { Logger } from '../../log.js';
import {
  certificatePublicKey,
  certificatesFromPem,
  createCsr,
  WorkloadId,
  keysMatch,
  parseCertificate,
  parseCsr,
  parseSpiffeId,
  verifyChain,
  type ParsedCertificate,
} from '../../pki/index.js';
import { once } from '../../util/once.js';
import { backoffDelayMs } from '../backoff.js';
import type { WorkloadCredential } from '../credentials.js';
import type { KeySource } from '../keys.js';
import type { AgentMetrics } from '../metrics.js';
import { DEFAULT_PROOF_LIMITS, ProofAdmission, RefusalCache, type ProofLimits } from '../proof-limits.js';
import { drawGraceRatio, MAX_CLOCK_SKEW_MS, renewalSchedule, verificationTime, type GracePeriod } from '../rotation.js';
import type { CaClient } from './ca.js';
import { sleepOn, systemClock, timerAt, type Clock } from '../../util/clock.js';
import { AbandonedProof, AgentError, CaFailure, isCaRefusal, isRetryableCaError, type AgentErrorCode } from './errors.js';
import { MAX_REMEMBERED_FAILURES, type CacheSnapshot, type FailedIssuance } from './snapshot.js';

/** The roots of a trust bundle, as the CA's answer carried them. */
export interface TrustBundle {
  /** Parsed roots; each holds its exact DER (`der`). */
  readonly roots: readonly ParsedCertificate[];
  /** Content version (hash of the roots' DER): equal versions are the same bundle. */
  readonly version: string;
}

/** One identity's current credentials. Immutable: a renewal makes a new one. */
export interface CachedIdentity {
  /** The SPIFFE ID(s) in the leaf's SAN, comma-joined when there are several. */
  readonly identity: string;
  /** The workload's private key, made on this node. */
  readonly key: KeyObject;
  /** Leaf first, then the intermediates the CA sent, each as DER (the roots are in `bundle`). */
  readonly chain: readonly Buffer[];
  /** The trust bundle the CA's answer for this certificate carried. */
  readonly bundle: TrustBundle;
  readonly leaf: ParsedCertificate;
  /** Local clock, like renewAt and expiresAt. */
  readonly receivedAt: number;
  readonly renewAt: number;
  /** When the certificate expires by the local clock: NotAfter, unless this node's clock is off (renewalSchedule). */
  readonly expiresAt: number;
  /** Content version (hash of chain and bundle): equal versions are the same credentials. */
  readonly version: string;
}

/**
 * A caller's hold on one identity, as `Value` (what it is served) and `Revocation` (the error it is ended with);
 * the cache's lease and the SDS view of it (workload-secrets.ts) differ only in those two. Released when the caller
 * (an SDS stream, a file writer) ends.
 */
export interface Lease<Value, Revocation> {
  readonly identity: string;
  current(): Value;
  /** Called with every renewed value. Returns an unsubscribe function. */
  onChange(listener: (value: Value) => void): () => void;
  /** The token this lease was proven with proves nothing any more: the caller must reconnect with a fresh one. */
  onRevoked(listener: (error: Revocation) => void): () => void;
  release(): void;
}

export type IdentityLease = Lease<CachedIdentity, AgentError>;

export interface IdentityCacheOptions {
  ca: CaClient;
  keys: KeySource;
  ttlSeconds: number;
  grace: GracePeriod;
  idleTtlMs: number;
  trustDomain: string;
  log: Logger;
  metrics: AgentMetrics;
  /** Time for renewal, idle expiry, retries, token exp and the refusal cache (default: the system clock). */
  clock?: Clock;
  /** How long a first issuance keeps retrying an unreachable CA before the caller gets 'unavailable'. */
  initialIssueTimeoutMs?: number;
  /** CSRs this agent has in flight to the CA at once (default DEFAULT_MAX_CONCURRENT_CSRS); the rest wait their turn. */
  maxConcurrentCsrs?: number;
  /** Bounds on proving new tokens, per connection and in total (default DEFAULT_PROOF_LIMITS). */
  proofLimits?: ProofLimits;
  /** How long a token the CA refused is refused locally without asking again (default DEFAULT_REFUSAL_TTL_MS). */
  refusalTtlMs?: number;
  random?: () => number;
}

/** Where a request to prove a token comes from: its connection (for fairness) and its end (to stop waiting). */
export interface AcquireContext {
  connection?: object;
  signal?: AbortSignal;
}

/**
 * Holds the key of a CSR across retries; the key is taken only once a CA request slot is granted. `lender`: the
 * cached identity whose own key (and CSR) proves a new token that claims that identity; such a key is the
 * identity's, never the pool's, so it is neither given back nor spent.
 */
interface KeyHolder {
  pendingKey?: KeyObject;
  lender?: IdentityEntry;
  /** The CA granted this token another identity than it claims: it is proven with a key of its own only. */
  ownKeyOnly?: boolean;
}

interface CredentialUse {
  credential: WorkloadCredential;
  lastUsed: number;
}

interface LeaseRecord {
  credentialKey: string;
  changeListeners: Set<(identity: CachedIdentity) => void>;
  revokeListeners: Set<(error: AgentError) => void>;
}

interface IdentityEntry {
  identity: string;
  secret: CachedIdentity;
  credentials: Map<string, CredentialUse>;
  leases: Set<LeaseRecord>;
  cancelRenewal?: () => void;
  cancelIdle?: () => void;
  renewing: boolean;
  renewAttempt: number;
  /** Key kept across failed renewal attempts so an RSA key is not thrown away per retry. */
  pendingKey?: KeyObject;
  dropped: boolean;
  /** When the renewal timer fires next (the renewal time, or a retry after a failure); null when none is armed. */
  renewalDueAt: number | null;
  /** The last failed renewal, until one succeeds. */
  lastError: { message: string; at: number } | null;
}

const DEFAULT_INITIAL_ISSUE_TIMEOUT_MS = 60_000;
/**
 * Many new workloads at once (a node starting, hundreds of pods scheduled) must not all hit the CA at the same
 * moment: it reviews each new token with the API server and refuses what exceeds its own limit (64 TokenReviews by
 * default) with UNAVAILABLE, and every refused CSR comes back later as a retry, after a backoff, as garbage and CPU
 * on both sides. Queued here, they go out as fast as the CA answers.
 */
export const DEFAULT_MAX_CONCURRENT_CSRS = 32;
/** Long enough that a client retrying in a loop costs the CA one review per token per interval; short enough
 * that a token refused by a passing fault (JWKS rotation, API server lag) works again soon. */
export const DEFAULT_REFUSAL_TTL_MS = 10_000;
/** Refused tokens remembered at once; an attacker cycling through more only evicts its own. */
const MAX_REMEMBERED_REFUSALS = 4096;

function abandoned(): CaFailure {
  return new CaFailure('final', 'CANCELLED', 'request abandoned');
}

/** Why a CSR is sent: a new token waiting to be served, or the renewal of an identity that is still being served. */
type CsrPurpose = 'proof' | 'renewal';

/**
 * While renewals wait, at most this many proofs in a row go first. A renewal has until its certificate expires (half
 * its lifetime) while a new pod waits for its first secret, so proofs get most of the CA during a rotation of
 * every identity; renewals still get every (N+1)th slot, so a flood of new tokens cannot starve them.
 */
const PROOFS_BEFORE_A_RENEWAL = 4;

/**
 * A limit on concurrent calls, first come first served within each purpose, proofs ahead of renewals (see
 * PROOFS_BEFORE_A_RENEWAL); a waiter leaves the queue when `signal` aborts.
 */
class Slots {
  private active = 0;
  private readonly waiting: Record<CsrPurpose, (() => void)[]> = { proof: [], renewal: [] };
  /** Proofs granted in a row while a renewal waited. */
  private proofsInARow = 0;

  constructor(private readonly limit: number) {}

  acquire(signal: AbortSignal, purpose: CsrPurpose): Promise<void> {
    if (signal.aborted) return Promise.reject(abandoned());
    if (this.active < this.limit) {
      this.active++;
      return Promise.resolve();
    }
    const queue = this.waiting[purpose];
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        signal.removeEventListener('abort', onAbort);
        this.active++;
        resolve();
      };
      const onAbort = (): void => {
        const index = queue.indexOf(grant);
        if (index !== -1) queue.splice(index, 1);
        reject(abandoned());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      queue.push(grant);
    });
  }

  release(): void {
    this.active--;
    if (this.active >= this.limit) return;
    const { proof, renewal } = this.waiting;
    if (proof.length > 0 && (renewal.length === 0 || this.proofsInARow < PROOFS_BEFORE_A_RENEWAL)) {
      this.proofsInARow = renewal.length > 0 ? this.proofsInARow + 1 : 0;
      proof.shift()!();
      return;
    }
    this.proofsInARow = 0;
    renewal.shift()?.();
  }
}

function hashVersion(ders: readonly Buffer[]): string {
  const hash = createHash('sha256');
  for (const der of ders) hash.update(der);
  return hash.digest('hex').slice(0, 16);
}

export class IdentityCache {
  private readonly entries = new Map<string, IdentityEntry>();
  private readonly credentialIdentity = new Map<string, string>();
  private readonly proving = new Map<string, Promise<string>>();
  private bundle: TrustBundle | null = null;
  private readonly bundleListeners = new Set<(bundle: TrustBundle) => void>();
  private readonly closing = new AbortController();
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly csrSlots: Slots;
  /** Per workload key: the last CSR made with it (retries resend it) and the SPKI in it (the leaf must carry it). */
  private readonly csrs = new WeakMap<KeyObject, { uris: string; pem: string; spki: Buffer }>();
  /** The last bundle an answer carried, by its exact text: every answer carries the same one. */
  private bundleMemo: { text: string; bundle: TrustBundle } | null = null;
  private readonly admission: ProofAdmission;
  private readonly refusals: RefusalCache<AgentErrorCode>;
  private readonly failures: FailedIssuance[] = [];

  constructor(private readonly options: IdentityCacheOptions) {
    this.random = options.random ?? Math.random;
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    this.csrSlots = new Slots(options.maxConcurrentCsrs ?? DEFAULT_MAX_CONCURRENT_CSRS);
    this.admission = new ProofAdmission(options.proofLimits ?? DEFAULT_PROOF_LIMITS);
    this.refusals = new RefusalCache(options.refusalTtlMs ?? DEFAULT_REFUSAL_TTL_MS, MAX_REMEMBERED_REFUSALS, () => this.clock.now());
  }

  /** New tokens being proven now, and waiting for their turn. */
  get proofs(): { running: number; queued: number } {
    return { running: this.admission.running, queued: this.admission.queued };
  }

  /**
   * Proves `credential` (a CSR to the CA on first sight) and returns a lease on the identity the CA granted.
   * Rejects with an AgentError naming the cause: expired or refused token, CA unreachable, unusable CA answer.
   */
  async acquire(credential: WorkloadCredential, context: AcquireContext = {}): Promise<IdentityLease> {
    for (;;) {
      if (this.closing.signal.aborted) throw new AgentError('unavailable', 'the agent is shutting down');
      if (credential.expiresAt !== null && credential.expiresAt <= this.clock.now()) {
        // The token proves nothing any more: it no longer leads to the identity (its leases end at renewal).
        this.credentialIdentity.delete(credential.key);
        this.options.metrics.refusedTokens.inc({ reason: 'expired_token' });
        throw this.noteFailure(
          credential,
          new AgentError('unauthenticated', `the workload token (${credential.label}) expired at ${new Date(credential.expiresAt).toISOString()}; send a fresh token`),
        );
      }
      const known = this.credentialIdentity.get(credential.key);
      const entry = known === undefined ? undefined : this.entries.get(known);
      if (entry) {
        const use = entry.credentials.get(credential.key);
        if (use) use.lastUsed = this.clock.now();
        return this.lease(entry, credential.key);
      }
      let proof = this.proving.get(credential.key);
      if (!proof) {
        const refusal = this.refusals.get(credential.key);
        if (refusal) {
          this.options.metrics.refusedTokens.inc({ reason: 'refused_by_ca_recently' });
          throw new AgentError(refusal.code, `${refusal.message} (not asked again until ${new Date(refusal.until).toISOString()})`);
        }
        proof = this.admitAndProve(credential, context);
        this.proving.set(credential.key, proof);
        const clear = (): void => void this.proving.delete(credential.key);
        proof.then(clear, clear);
      }
      let identity: string;
      try {
        identity = await proof;
      } catch (error) {
        // The caller that started this proof ended while it waited; this one did not: start over.
        if (error instanceof AbandonedProof && !context.signal?.aborted) continue;
        throw error;
      }
      const proven = this.entries.get(identity);
      // The entry can only be gone if it was dropped between proof and now; prove again.
      if (proven && this.credentialIdentity.get(credential.key) === identity) return this.lease(proven, credential.key);
    }
  }

  trustBundle(): TrustBundle | null {
    return this.bundle;
  }

  onTrustBundle(listener: (bundle: TrustBundle) => void): () => void {
    this.bundleListeners.add(listener);
    return () => this.bundleListeners.delete(listener);
  }

  /** Identities currently cached. */
  get size(): number {
    return this.entries.size;
  }

  /** The current credentials of every cached identity (for metrics and logs). */
  identities(): CachedIdentity[] {
    return [...this.entries.values()].map((entry) => entry.secret);
  }

  /** What the cache holds and does now, without keys or tokens (for the status server's debug view). */
  snapshot(): CacheSnapshot {
    return {
      at: this.clock.now(),
      identities: [...this.entries.values()].map((entry) => ({
        identity: entry.identity,
        leaf: entry.secret.leaf,
        receivedAt: entry.secret.receivedAt,
        nextRenewalAt: entry.renewalDueAt,
        expiresAt: entry.secret.expiresAt,
        streams: entry.leases.size,
        credentials: entry.credentials.size,
        state: entry.renewing ? 'renewing' : entry.lastError ? 'failed' : 'issued',
        lastError: entry.lastError,
      })),
      roots: this.bundle?.roots ?? null,
      recentFailures: [...this.failures],
    };
  }

  close(): void {
    this.closing.abort(new AgentError('unavailable', 'the agent is shutting down'));
    for (const entry of [...this.entries.values()]) this.drop(entry, 'agent shutting down');
    this.bundleListeners.clear();
  }

  // --- proof and issuance --------------------------------------------------------------------------------------

  /** Waits for this connection's turn (bounded), then proves the token. */
  private async admitAndProve(credential: WorkloadCredential, context: AcquireContext): Promise<string> {
    let release: () => void;
    try {
      release = await this.admission.enter(context.connection, context.signal);
    } catch (error) {
      if (error instanceof AgentError && error.code === 'resource_exhausted') this.options.metrics.refusedTokens.inc({ reason: 'connection_busy' });
      throw error;
    }
    try {
      return await this.prove(credential);
    } catch (error) {
      if (!(error instanceof AbandonedProof)) this.noteFailure(credential, error);
      throw error;
    } finally {
      release();
    }
  }

  /** Remembers a failed first issuance for the snapshot (the latest MAX_REMEMBERED_FAILURES); returns `error`. */
  private noteFailure(credential: WorkloadCredential, error: unknown): unknown {
    const code = error instanceof AgentError ? error.code : 'internal';
    this.failures.push({ credential: credential.label, code, message: (error as Error).message, at: this.clock.now() });
    if (this.failures.length > MAX_REMEMBERED_FAILURES) this.failures.shift();
    return error;
  }

  private async prove(credential: WorkloadCredential): Promise<string> {
    const deadline = this.clock.now() + (this.options.initialIssueTimeoutMs ?? DEFAULT_INITIAL_ISSUE_TIMEOUT_MS);
    const holder: KeyHolder = {};
    let lastError: unknown;
    for (let attempt = 0; ; attempt++) {
      try {
        const secret = await this.requestSecret(credential, holder, 'proof');
        const lender = holder.lender;
        holder.lender = undefined;
        if (lender && secret.identity !== lender.identity) {
          // The CA granted the token another identity than it claimed: that certificate names the lender's key, so
          // it is never used, the lender gets a fresh key, and this token is proven again with a key of its own.
          this.log.warn(
            { claimed: lender.identity, granted: secret.identity, credential: credential.label },
            'the CA granted a workload token another identity than the one it claims; proving it again with a fresh key',
          );
          void this.renew(lender, 'its key was certified for another identity');
          holder.ownKeyOnly = true;
          continue;
        }
        return this.adopt(secret, credential, lender !== undefined);
      } catch (error) {
        holder.lender = undefined;
        lastError = error;
        if (!isRetryableCaError(error) || this.closing.signal.aborted) {
          this.releaseKey(holder, error);
          const cacheError = this.cacheError(error, credential);
          if (isCaRefusal(error)) this.refusals.add(credential.key, cacheError.code, cacheError.message);
          throw cacheError;
        }
      }
      const delay = backoffDelayMs(attempt, this.random);
      if (this.clock.now() + delay > deadline) break;
      this.options.metrics.outgoingRetries.inc({ request_type: 'csr' });
      this.log.warn({ caAddress: this.options.ca.address, err: (lastError as Error).message, retryInMs: delay }, 'CA request failed; retrying');
      await sleepOn(this.clock, delay, this.closing.signal).catch(() => undefined);
    }
    this.releaseKey(holder, lastError);
    throw new AgentError(
      'unavailable',
      `the CA at ${this.options.ca.address} could not issue a certificate: ${(lastError as Error).message} (gave up after retrying)`,
    );
  }

  private cacheError(error: unknown, credential: WorkloadCredential): AgentError {
    if (error instanceof AgentError) return error;
    if (error instanceof CaFailure) {
      if (error.refusal) return new AgentError(error.refusal, `the CA refused the workload token (${credential.label}): ${error.details}`);
      if (error.kind === 'retryable') return new AgentError('unavailable', `the CA at ${this.options.ca.address} is unavailable: ${error.details}`);
      return new AgentError('internal', `the CA rejected the certificate request: ${error.message}`);
    }
    return new AgentError('internal', `could not get a certificate: ${(error as Error).message}`);
  }

  /**
   * After a failed CSR: the key goes back to the pool only when the CA refused the token (it issued nothing);
   * after any other failure it may have certified the key, so the key is never handed to anyone else.
   */
  private releaseKey(holder: KeyHolder, error: unknown): void {
    const key = holder.pendingKey;
    if (!key) return;
    holder.pendingKey = undefined;
    if (isCaRefusal(error) && !this.closing.signal.aborted) this.options.keys.giveBack(key);
    else this.options.keys.spent(key);
  }

  /**
   * One CSR to the CA, counted in the metrics; the answer is checked before anything uses it. The key is taken
   * only once a CA request slot is granted (and kept in `holder` for retries), so requests waiting for the CA
   * cost no key generation.
   */
  private async requestSecret(credential: WorkloadCredential, holder: KeyHolder, purpose: CsrPurpose): Promise<CachedIdentity> {
    const token = await credential.read();
    const claimed = credential.claimedAccount;
    let uris: string[] = [];
    if (claimed) {
      try {
        uris = [WorkloadId.of({ trustDomain: this.options.trustDomain, ...claimed }).uri];
      } catch {
        uris = []; // Only a hint for the CA; it writes the identity it verified.
      }
    }
    await this.csrSlots.acquire(this.closing.signal, purpose);
    const metrics = this.options.metrics;
    const started = performance.now();
    let chain: string[];
    let key: KeyObject;
    try {
      // A second workload of an identity this agent already holds: the identity's own CSR carries the proof of
      // the new token (the CA still verifies it and says which identity it grants), with no key generation and no
      // new CSR signature. A fresh key is taken only for a first identity, or one due for renewal.
      if (purpose === 'proof') holder.lender = holder.pendingKey === undefined && !holder.ownKeyOnly ? this.lenderFor(uris) : undefined;
      key = holder.lender?.secret.key ?? (holder.pendingKey ??= await this.options.keys.take());
      const csrPem = this.csrFor(key, uris);
      metrics.outgoingRequests.inc({ request_type: 'csr' });
      chain = await this.options.ca.createCertificate({ csrPem, token, ttlSeconds: this.options.ttlSeconds }, this.closing.signal);
    } catch (error) {
      metrics.failedOutgoingRequests.inc({ request_type: 'csr', error_code: error instanceof CaFailure ? error.status : 'UNKNOWN' });
      // Back before the slot is released, so that the request the slot goes to next gets this key, not a new one.
      if (isCaRefusal(error)) this.releaseKey(holder, error);
      throw error;
    } finally {
      this.csrSlots.release();
      metrics.outgoingLatency.inc({ request_type: 'csr' }, performance.now() - started);
    }
    if (holder.lender) return this.checkChain(chain, key);
    let secret: CachedIdentity;
    try {
      secret = this.checkChain(chain, key);
    } finally {
      // Certified (or answered with something unusable): this key is never handed out again.
      holder.pendingKey = undefined;
      this.options.keys.spent(key);
    }
    return secret;
  }

  /**
   * The cached entry whose key may prove a new token claiming `uris`: exactly that one identity, issued, not
   * renewing and not yet due for renewal (a renewal always makes a new key).
   */
  private lenderFor(uris: string[]): IdentityEntry | undefined {
    if (uris.length !== 1) return undefined;
    const entry = this.entries.get(uris[0]!);
    if (!entry || entry.dropped || entry.renewing || this.clock.now() >= entry.secret.renewAt) return undefined;
    return entry;
  }

  /** The CSR for `key` and `uris`: made once and sent again on retries (a CSR proves the key, not the moment). */
  private csrFor(key: KeyObject, uris: string[]): string {
    const wanted = uris.join('\n');
    let csr = this.csrs.get(key);
    if (csr?.uris !== wanted) {
      const pem = createCsr({ privateKey: key, uris });
      // The SPKI the CSR carries is the key's own encoding (createCsr writes it from the key): reading it back
      // costs microseconds where exporting the key again costs a decoder set-up in OpenSSL 3.
      csr = { uris: wanted, pem, spki: parseCsr(pem).spkiDer };
      this.csrs.set(key, csr);
    }
    return csr.pem;
  }

  /** True when the leaf certifies `key`: its SPKI bytes equal our CSR's, else (another encoding) by the decoded key. */
  private leafIsForKey(leaf: ParsedCertificate, key: KeyObject): boolean {
    const spki = this.csrs.get(key)?.spki;
    return (spki !== undefined && leaf.spkiDer.equals(spki)) || keysMatch(key, certificatePublicKey(leaf));
  }

  /** The trust bundle element of an answer, parsed once per distinct text and shared with the current bundle when equal. */
  private bundleOf(text: string): TrustBundle {
    if (this.bundleMemo?.text === text) return this.bundleMemo.bundle;
    const roots = certificatesFromPem(text).map(parseCertificate);
    const version = hashVersion(roots.map((root) => root.der));
    const bundle = this.bundle?.version === version ? this.bundle : { roots, version };
    this.bundleMemo = { text, bundle };
    return bundle;
  }

  /** Fail closed: the leaf must be for our key, name a SPIFFE identity and chain to the bundle in the answer. */
  private checkChain(answer: string[], key: KeyObject): CachedIdentity {
    const unusable = (why: string): AgentError => new AgentError('internal', `the CA returned an unusable certificate chain: ${why}`);
    if (answer.length < 2) throw unusable(`${answer.length} element(s), expected at least the leaf and the root`);
    const leafDers = certificatesFromPem(answer[0]!);
    if (leafDers.length !== 1) throw unusable(`the first element holds ${leafDers.length} certificates, expected the leaf alone`);
    const leaf = parseCertificate(leafDers[0]!);
    if (!this.leafIsForKey(leaf, key)) throw unusable("the leaf certificate is not for the key in the agent's CSR");
    const ids = leaf.sans.uris.filter((uri) => uri.startsWith('spiffe://'));
    if (ids.length === 0) throw unusable('the leaf certificate names no spiffe:// identity');
    for (const id of ids) parseSpiffeId(id);
    const bundle = this.bundleOf(answer[answer.length - 1]!);
    if (bundle.roots.length === 0) throw unusable('the last element holds no root certificate');
    const intermediates = answer.slice(1, -1).flatMap((pem) => certificatesFromPem(pem)).map(parseCertificate);
    const validity = { notBefore: leaf.notBefore.getTime(), notAfter: leaf.notAfter.getTime() };
    if (validity.notAfter <= validity.notBefore) throw unusable('the leaf certificate has an empty validity period');
    const receivedAt = this.clock.now();
    try {
      // A node clock a few minutes off must not refuse what the CA just issued; beyond MAX_CLOCK_SKEW_MS it does.
      verifyChain(leaf, { intermediates, roots: [...bundle.roots], at: new Date(verificationTime(validity, receivedAt)) });
    } catch (error) {
      throw unusable(`${(error as Error).message} (checked at ${new Date(receivedAt).toISOString()} by this node's clock, allowing ${MAX_CLOCK_SKEW_MS / 60_000} min of clock skew)`);
    }
    const chain = [leaf.der, ...intermediates.map((certificate) => certificate.der)];
    const graceRatio = drawGraceRatio(this.options.grace, this.random);
    const schedule = renewalSchedule(validity, receivedAt, this.options.ttlSeconds * 1000, graceRatio);
    if (schedule.clock !== 'in-sync') {
      this.log.warn(
        {
          clock: schedule.clock,
          notBefore: leaf.notBefore.toISOString(),
          notAfter: leaf.notAfter.toISOString(),
          localTime: new Date(receivedAt).toISOString(),
          lifetimeSeconds: Math.round(schedule.lifetimeMs / 1000),
        },
        `this node's clock seems ${schedule.clock === 'behind' ? 'behind' : 'ahead of'} the CA's (a fresh certificate's validity does not fit the local time); ` +
          "timing renewal from the certificate's own validity; check time sync (NTP) on this node",
      );
    }
    return {
      identity: [...ids].sort().join(','),
      key,
      chain,
      bundle,
      leaf,
      receivedAt,
      renewAt: schedule.renewAt,
      expiresAt: schedule.expiresAt,
      version: hashVersion([...chain, ...bundle.roots.map((root) => root.der)]),
    };
  }

  /** Stores freshly proven credentials under the identity the CA granted, and maps the credential to it. */
  private adopt(secret: CachedIdentity, credential: WorkloadCredential, ownKey = false): string {
    const now = this.clock.now();
    let entry = this.entries.get(secret.identity);
    if (entry) {
      // Another workload of the same identity is already served; keep its secret unless it is due for renewal
      // (and never take an answer for the entry's own key as its renewal: a renewal makes a new key).
      if (now >= entry.secret.renewAt && !ownKey) {
        this.revokeExpired(entry);
        this.replaceSecret(entry, secret, 'renewed by a new workload');
      }
    } else {
      entry = {
        identity: secret.identity,
        secret,
        credentials: new Map(),
        leases: new Set(),
        renewing: false,
        renewAttempt: 0,
        dropped: false,
        renewalDueAt: secret.renewAt,
        lastError: null,
      };
      this.entries.set(secret.identity, entry);
      this.options.metrics.secretsCached.set(this.entries.size);
      this.logIssued(entry, 'issued certificate');
      this.scheduleRenewal(entry);
      this.startIdleTimer(entry);
    }
    entry.credentials.set(credential.key, { credential, lastUsed: now });
    this.credentialIdentity.set(credential.key, secret.identity);
    this.observeTrustBundle(secret);
    return secret.identity;
  }

  private logIssued(entry: IdentityEntry, message: string): void {
    const s = entry.secret;
    this.log.info(
      {
        identity: entry.identity,
        serial: s.leaf.serialHex,
        notAfter: s.leaf.notAfter.toISOString(),
        renewAt: new Date(s.renewAt).toISOString(),
      },
      message,
    );
  }

  private replaceSecret(entry: IdentityEntry, secret: CachedIdentity, message: string): void {
    entry.secret = secret;
    entry.renewAttempt = 0;
    entry.lastError = null;
    this.logIssued(entry, message);
    this.scheduleRenewal(entry);
    for (const lease of entry.leases) for (const listener of lease.changeListeners) listener(secret);
  }

  private observeTrustBundle(secret: CachedIdentity): void {
    if (this.bundle?.version === secret.bundle.version) return;
    const previous = this.bundle;
    this.bundle = secret.bundle;
    if (previous) this.log.info({ roots: this.bundle.roots.map((r) => r.subject) }, 'trust bundle changed; re-issuing workload certificates');
    for (const listener of this.bundleListeners) listener(this.bundle);
    if (!previous) return;
    // Certificates from the old chain are replaced so that every workload moves to the new signing chain.
    for (const entry of this.entries.values()) {
      if (entry.secret.bundle.version !== secret.bundle.version) void this.renew(entry, 'trust bundle changed');
    }
  }

  // --- renewal -----------------------------------------------------------------------------------------------

  private scheduleRenewal(entry: IdentityEntry, at = entry.secret.renewAt): void {
    entry.cancelRenewal?.();
    entry.renewalDueAt = at;
    entry.cancelRenewal = timerAt(this.clock, at, () => void this.renew(entry, 'scheduled'));
  }

  private async renew(entry: IdentityEntry, reason: string): Promise<void> {
    if (entry.renewing || entry.dropped) return;
    entry.renewing = true;
    try {
      const usable = this.revokeExpired(entry);
      // The token that stays valid longest first (a token file is re-read, so it is always fresh).
      const validUntil = (use: CredentialUse): number => use.credential.expiresAt ?? Number.POSITIVE_INFINITY;
      usable.sort((a, b) => validUntil(b) - validUntil(a) || b.lastUsed - a.lastUsed);
      let lastError: unknown = null;
      for (const use of usable) {
        if (entry.dropped) return;
        try {
          const secret = await this.requestSecret(use.credential, entry, 'renewal');
          if (secret.identity !== entry.identity) {
            // Never let a token's answer land in another identity's entry.
            this.revoke(entry, use.credential, `the CA now grants this token ${secret.identity}, not ${entry.identity}; reconnect`);
            continue;
          }
          if (entry.dropped) return;
          this.options.metrics.rotations.inc({ result: 'success' });
          this.replaceSecret(entry, secret, reason === 'scheduled' ? 'renewed certificate' : `renewed certificate (${reason})`);
          this.observeTrustBundle(secret);
          return;
        } catch (error) {
          lastError = error;
          if (isCaRefusal(error) && use.credential.revocable) {
            this.refusals.add(use.credential.key, error.refusal!, `the CA refused the workload token (${use.credential.label}): ${error.details}`);
            this.revoke(entry, use.credential, `the CA no longer accepts the workload token (${use.credential.label}): ${error.details}; reconnect with a fresh token`);
          }
        }
      }
      if (entry.dropped) return;
      this.options.metrics.rotations.inc({ result: 'failure' });
      if (entry.credentials.size === 0) {
        entry.lastError = { message: 'no valid workload token left to renew this certificate; waiting for a workload to reconnect', at: this.clock.now() };
        entry.renewalDueAt = null;
        this.log.warn({ identity: entry.identity }, 'no valid workload token left to renew this certificate; waiting for a workload to reconnect');
        return;
      }
      const delay = backoffDelayMs(entry.renewAttempt++, this.random);
      this.options.metrics.outgoingRetries.inc({ request_type: 'csr' });
      const now = this.clock.now();
      const details = {
        identity: entry.identity,
        caAddress: this.options.ca.address,
        err: lastError instanceof Error ? lastError.message : String(lastError),
        notAfter: entry.secret.leaf.notAfter.toISOString(),
        retryInMs: delay,
      };
      entry.lastError = { message: details.err, at: now };
      if (now >= entry.secret.expiresAt) this.log.error(details, 'certificate expired and the CA could not renew it; still serving it and retrying');
      else this.log.warn(details, 'certificate renewal failed; serving the current certificate and retrying');
      this.scheduleRenewal(entry, now + delay);
    } finally {
      entry.renewing = false;
    }
  }

  /**
   * A token proves an identity until its exp: leases proven only with an expired token keep the credentials they
   * have but get no renewed ones; they end ('unauthenticated') so that the client reconnects with a fresh token.
   * Returns the credentials still valid, which renewal may use.
   */
  private revokeExpired(entry: IdentityEntry): CredentialUse[] {
    const now = this.clock.now();
    const usable: CredentialUse[] = [];
    for (const use of [...entry.credentials.values()]) {
      if (use.credential.revocable && use.credential.expiresAt !== null && use.credential.expiresAt <= now) {
        this.revoke(entry, use.credential, `the workload token (${use.credential.label}) expired; reconnect with a fresh token`);
      } else {
        usable.push(use);
      }
    }
    return usable;
  }

  /** Forgets a credential and ends the leases that relied on it (clients reconnect with a fresh token). */
  private revoke(entry: IdentityEntry, credential: WorkloadCredential, message: string): void {
    entry.credentials.delete(credential.key);
    if (this.credentialIdentity.get(credential.key) === entry.identity) this.credentialIdentity.delete(credential.key);
    const error = new AgentError('unauthenticated', message);
    let streams = 0;
    for (const lease of [...entry.leases]) {
      if (lease.credentialKey !== credential.key) continue;
      streams++;
      // Detached first: whatever the holder does with the error, it gets no later credentials of this identity.
      entry.leases.delete(lease);
      for (const listener of lease.revokeListeners) listener(error);
    }
    this.log.warn({ identity: entry.identity, credential: credential.label, streams }, 'workload token no longer valid; ending its streams');
  }

  // --- leases and idle expiry ------------------------------------------------------------------------------

  private lease(entry: IdentityEntry, credentialKey: string): IdentityLease {
    const record: LeaseRecord = { credentialKey, changeListeners: new Set(), revokeListeners: new Set() };
    entry.leases.add(record);
    entry.cancelIdle?.();
    entry.cancelIdle = undefined;
    return {
      identity: entry.identity,
      current: () => entry.secret,
      onChange: (listener) => {
        record.changeListeners.add(listener);
        return () => record.changeListeners.delete(listener);
      },
      onRevoked: (listener) => {
        record.revokeListeners.add(listener);
        return () => record.revokeListeners.delete(listener);
      },
      release: once(() => {
        entry.leases.delete(record);
        if (entry.leases.size === 0 && !entry.dropped) this.startIdleTimer(entry);
      }),
    };
  }

  private startIdleTimer(entry: IdentityEntry): void {
    entry.cancelIdle?.();
    entry.cancelIdle = timerAt(this.clock, this.clock.now() + this.options.idleTtlMs, () => {
      if (entry.leases.size === 0) this.drop(entry, 'no stream watches it any more');
    });
  }

  private drop(entry: IdentityEntry, why: string): void {
    if (entry.dropped) return;
    entry.dropped = true;
    entry.cancelRenewal?.();
    entry.cancelIdle?.();
    // A renewal key whose CSR may have been certified is never handed to anyone else.
    if (entry.pendingKey) this.options.keys.spent(entry.pendingKey);
    entry.pendingKey = undefined;
    for (const key of entry.credentials.keys()) {
      if (this.credentialIdentity.get(key) === entry.identity) this.credentialIdentity.delete(key);
    }
    entry.credentials.clear();
    this.entries.delete(entry.identity);
    this.options.metrics.secretsCached.set(this.entries.size);
    this.log.info({ identity: entry.identity, reason: why }, 'dropped cached secret');
  }
}
