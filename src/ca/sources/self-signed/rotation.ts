/**
 * Self-signed root rotation, as a small state machine over the stored CA state:
 *
 *   stable --(less than GRACE_PERIOD_PERCENTILE of the root's life left)--> next root created and published
 *   in the trust bundle (old ∪ new) --(--root-rotation-overlap later)--> signing switches to the new root
 *   --(old root expires)--> old root dropped from the bundle.
 *
 * Each transition is one store update (a file set written in a crash-safe order, or one Secret update with a
 * resourceVersion check), and the plan is derived from the stored state alone, so a process that crashes between
 * steps, or a second replica, resumes at the right step.
 */
import type { Logger } from '../../../log.js';
import { certificatesFromPem, certificateToPem, CLOCK_SKEW_GRACE_MS, type ParsedCertificate } from '../../../pki/index.js';
import type { LocalSigner } from '../../local-signer.js';
import { ManagedLocalSigner } from '../../managed-signer.js';
import { fingerprint, type CaMaterial } from '../../material.js';
import {
  CaStateConflictError,
  materialFromState,
  parseStoredState,
  type CaStateStore,
  type ParsedCaState,
  type StoredCaState,
} from '../../selfsigned.js';
import { rearmTimer } from '../../../util/timers.js';

export interface RotationPolicy {
  /** CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL; 0 disables rotation. */
  checkIntervalSeconds: number;
  /** CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE: rotate when less than this share of the life is left. */
  gracePeriodPercentile: number;
  /** --root-rotation-overlap: how long the new root is published before it signs. */
  overlapSeconds: number;
}

export const DEFAULT_ROTATION_POLICY: RotationPolicy = { checkIntervalSeconds: 3600, gracePeriodPercentile: 20, overlapSeconds: 3600 };

export type RotationStep =
  | { kind: 'prepare' }
  | { kind: 'publish' }
  | { kind: 'switch' }
  | { kind: 'drop-expired'; expired: ParsedCertificate[] }
  | { kind: 'wait'; until: number };

/**
 * When rotation of `cert` starts. Our roots are backdated by the clock-skew grace, which is not part of the
 * lifetime the operator asked for, so it is left out of the percentile.
 */
export function rotationDueAt(cert: ParsedCertificate, gracePeriodPercentile: number): number {
  const notAfter = cert.notAfter.getTime();
  const start = Math.min(cert.notBefore.getTime() + CLOCK_SKEW_GRACE_MS, notAfter);
  return notAfter - ((notAfter - start) * gracePeriodPercentile) / 100;
}

/** The next step for the stored state at `now` (pure; the same state always gives the same step). */
export function planRotation(state: ParsedCaState, policy: RotationPolicy, now: number): RotationStep {
  const signing = state.signingCert;
  const expired = state.bundle.filter((c) => c.notAfter.getTime() <= now && !c.der.equals(signing.der));
  if (expired.length > 0) return { kind: 'drop-expired', expired };
  const signingExpired = signing.notAfter.getTime() <= now;
  if (state.next) {
    const nextCert = state.next.cert;
    const published = state.bundle.some((c) => c.der.equals(nextCert.der));
    if (!published || state.nextPublishedAt === undefined) return { kind: 'publish' };
    const switchAt = state.nextPublishedAt + policy.overlapSeconds * 1000;
    if (now >= switchAt || signingExpired) return { kind: 'switch' };
    return { kind: 'wait', until: switchAt };
  }
  const dueAt = rotationDueAt(signing, policy.gracePeriodPercentile);
  if (now >= dueAt) return { kind: 'prepare' };
  const expiries = state.bundle.filter((c) => !c.der.equals(signing.der)).map((c) => c.notAfter.getTime() + 1);
  return { kind: 'wait', until: Math.min(dueAt, ...expiries) };
}

function bundleWithout(rootsPem: string, drop: readonly ParsedCertificate[]): string {
  return certificatesFromPem(rootsPem)
    .filter((der) => !drop.some((c) => c.der.equals(der)))
    .map(certificateToPem)
    .join('');
}

function bundleWith(rootsPem: string, certPem: string): string {
  const existing = certificatesFromPem(rootsPem);
  const added = certificatesFromPem(certPem).filter((der) => !existing.some((e) => e.equals(der)));
  return existing.concat(added).map(certificateToPem).join('');
}

/** The stored state after `step`. `newRoot` is required for `prepare`. */
export function applyRotationStep(
  stored: StoredCaState,
  step: Exclude<RotationStep, { kind: 'wait' }>,
  now: number,
  newRoot?: { certPem: string; keyPem: string },
): StoredCaState {
  switch (step.kind) {
    case 'prepare': {
      if (!newRoot) throw new Error('prepare needs a new root');
      return { ...stored, next: newRoot, rootsPem: bundleWith(stored.rootsPem, newRoot.certPem), nextPublishedAt: now };
    }
    case 'publish': {
      if (!stored.next) throw new Error('publish needs a next root');
      return { ...stored, rootsPem: bundleWith(stored.rootsPem, stored.next.certPem), nextPublishedAt: now };
    }
    case 'switch': {
      if (!stored.next) throw new Error('switch needs a next root');
      // The old root stays in the bundle (it still anchors live workload certificates) until it expires.
      return { certPem: stored.next.certPem, keyPem: stored.next.keyPem, rootsPem: bundleWith(stored.rootsPem, stored.next.certPem) };
    }
    case 'drop-expired':
      return { ...stored, rootsPem: bundleWithout(stored.rootsPem, step.expired) };
  }
}

export interface RootRotatorOptions {
  store: CaStateStore;
  policy: RotationPolicy;
  /** Makes a new self-signed root (key and certificate PEM). */
  createRoot: () => Promise<{ certPem: string; keyPem: string }>;
  logger: Logger;
  now?: () => number;
}

const RETRY_AFTER_ERROR_MS = 30_000;

/** Drives rotation for one signer: loads, plans, persists, and swaps the signer's material after each step. */
export class RootRotator {
  private signer: LocalSigner | undefined;
  private material: CaMaterial | undefined;
  private appliedKey: string | undefined;
  private lastState: StoredCaState | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<RotationStep> | undefined;
  private unwatch: (() => void) | undefined;
  private closed = false;

  constructor(private readonly options: RootRotatorOptions) {}

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  private get enabled(): boolean {
    return this.options.policy.checkIntervalSeconds > 0;
  }

  /**
   * Loads the stored root (creating one when there is none; with a shared store the first creator wins) and
   * performs steps that are already due, e.g. after a crash or a long downtime. Throws CaConfigError.
   */
  async initialize(): Promise<{ material: CaMaterial; created: boolean }> {
    let created = false;
    if (!(await this.options.store.load())) {
      const root = await this.options.createRoot();
      const result = await this.options.store.create({ certPem: root.certPem, keyPem: root.keyPem, rootsPem: root.certPem });
      created = result.created;
    }
    await this.advance();
    return { material: this.material!, created };
  }

  attach(signer: LocalSigner): void {
    this.signer = signer;
  }

  current(): CaMaterial | undefined {
    return this.material;
  }

  /** Arms the timer and, for shared stores, follows changes made by other replicas. */
  start(): void {
    if (this.closed) return;
    this.unwatch = this.options.store.watch?.(() => this.kick(100));
    if (this.enabled) this.kick(this.options.policy.checkIntervalSeconds * 1000);
  }

  /** Runs the state machine until it has to wait; one run at a time. */
  runOnce(): Promise<RotationStep> {
    if (!this.running) {
      this.running = this.advance().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private kick(delayMs: number): void {
    if (this.closed) return;
    this.timer = rearmTimer(this.timer, delayMs, () => void this.tick());
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    let delay: number;
    try {
      const step = await this.runOnce();
      const intervalMs = this.options.policy.checkIntervalSeconds * 1000;
      delay = step.kind === 'wait' ? Math.min(Math.max(step.until - this.now(), 0), intervalMs) : 0;
      if (!this.enabled) return;
    } catch (error) {
      this.options.logger.error(
        { store: this.options.store.description, err: (error as Error).message },
        'self-signed root rotation step failed; the current root keeps signing, will retry',
      );
      delay = Math.min(RETRY_AFTER_ERROR_MS, Math.max(1000, this.options.policy.checkIntervalSeconds * 1000));
    }
    this.kick(delay);
  }

  private apply(state: StoredCaState): void {
    const parsed = parseStoredState(state, this.options.store);
    const now = this.now();
    const material = materialFromState(parsed, this.options.store, now);
    const key = `${state.certPem}\0${material.rootsPem}`;
    this.lastState = state;
    if (key === this.appliedKey) return;
    this.appliedKey = key;
    this.material = material;
    this.signer?.replace(material);
  }

  private async advance(): Promise<RotationStep> {
    const store = this.options.store;
    for (let attempt = 0; attempt < 8 && !this.closed; attempt++) {
      let loaded = await store.load();
      if (!loaded) {
        if (!this.lastState) throw new Error(`the CA state in ${store.description} disappeared`);
        // Someone deleted the stored root: put back the one every workload trusts instead of minting a new one.
        this.options.logger.warn({ store: store.description }, 'the stored self-signed root disappeared; restoring the current one');
        loaded = await store.create(this.lastState);
      }
      const parsed = parseStoredState(loaded.state, store);
      const now = this.now();
      if (this.enabled && parsed.signingCert.notAfter.getTime() <= now) {
        // The root expired while no CA was running: nothing valid can sign, so rotate at once (below) rather than
        // refusing to start; workloads need new certificates either way.
        this.options.logger.warn(
          { store: store.description, notAfter: parsed.signingCert.notAfter.toISOString() },
          'the self-signed root has expired; rotating to a new root now',
        );
      } else {
        this.apply(loaded.state);
      }
      const step = this.enabled ? planRotation(parsed, this.options.policy, now) : ({ kind: 'wait', until: Number.POSITIVE_INFINITY } as const);
      if (step.kind === 'wait') {
        if (!this.material) this.apply(loaded.state);
        return step;
      }
      const newRoot = step.kind === 'prepare' ? await this.options.createRoot() : undefined;
      const next = applyRotationStep(loaded.state, step, now, newRoot);
      try {
        const saved = await store.update(next, loaded.version);
        // An expired root is not applied; the switch to the new one follows in the next pass.
        if (parseStoredState(saved.state, store).signingCert.notAfter.getTime() > this.now()) this.apply(saved.state);
      } catch (error) {
        if (error instanceof CaStateConflictError) {
          this.options.logger.debug({ store: store.description, step: step.kind }, 'the CA state changed underneath (another replica); re-reading');
          continue;
        }
        throw error;
      }
      this.logStep(step, loaded.state, next);
    }
    return { kind: 'wait', until: this.now() + 1000 };
  }

  private logStep(step: Exclude<RotationStep, { kind: 'wait' }>, before: StoredCaState, after: StoredCaState): void {
    const bundle = (this.material?.roots ?? []).map(fingerprint);
    const store = this.options.store.description;
    switch (step.kind) {
      case 'prepare': {
        const next = parseStoredState(after, this.options.store).next!.cert;
        this.options.logger.info(
          { store, nextRoot: fingerprint(next), nextRootNotAfter: next.notAfter.toISOString(), switchAfterSeconds: this.options.policy.overlapSeconds, bundle },
          'self-signed root rotation: created a new root and published it in the trust bundle; the current root keeps signing',
        );
        break;
      }
      case 'publish':
        this.options.logger.info({ store, bundle }, 'self-signed root rotation: published the pending new root in the trust bundle');
        break;
      case 'switch': {
        const old = parseStoredState(before, this.options.store).signingCert;
        this.options.logger.info(
          { store, signingRoot: this.material ? fingerprint(this.material.signingCert) : undefined, previousRoot: fingerprint(old), bundle },
          'self-signed root rotation: switched signing to the new root; the previous root stays trusted until it expires',
        );
        break;
      }
      case 'drop-expired':
        this.options.logger.info({ store, dropped: step.expired.map(fingerprint), bundle }, 'self-signed root rotation: dropped expired roots from the trust bundle');
        break;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.unwatch?.();
    await this.running?.catch(() => undefined);
  }
}

export interface SelfSignedSignerOptions {
  store: CaStateStore;
  /** Makes a new root with the configured key type, lifetime and subject. */
  createRoot: () => Promise<{ certPem: string; keyPem: string }>;
  policy: RotationPolicy;
  logger: Logger;
  now?: () => number;
}

/**
 * The self-signed key source with rotation: loads or creates the root in the store, catches up on due rotation
 * steps, and keeps rotating in the background until the signer is closed.
 */
export async function openSelfSignedSigner(options: SelfSignedSignerOptions): Promise<{ signer: ManagedLocalSigner; created: boolean; rotator: RootRotator }> {
  const rotator = new RootRotator(options);
  const { material, created } = await rotator.initialize();
  const signer = new ManagedLocalSigner('self-signed', material);
  rotator.attach(signer);
  rotator.start();
  signer.addCleanup(() => rotator.close());
  return { signer, created, rotator };
}
