/**
 * The embedded default key source: a self-signed root created on first start and kept in a store: the state
 * directory (ca-cert.pem, ca-key.pem 0600, root-cert.pem) or, for several replicas, a Kubernetes Secret
 * (kube-store.ts). On restart the same root is loaded; a partial or inconsistent set is refused and never
 * overwritten, because overwriting would silently break every workload.
 *
 * During a root rotation (rotation.ts) the store also holds the next root (next-ca-cert.pem, next-ca-key.pem)
 * and when it was published (rotation.json); root-cert.pem is always the published trust bundle.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  certificatePublicKey,
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  exportPrivateKeyPem,
  generateKeyPairForAsync,
  isPkiError,
  keysMatch,
  loadPrivateKey,
  parseCertificate,
  type KeySpec,
  type ParsedCertificate,
} from '../pki/index.js';
import { ensurePrivateDirectory, syncDirectory, writeFileAtomic } from '../util/fs.js';
import { CaConfigError } from './errors.js';
import { LocalSigner } from './local-signer.js';
import { buildCaMaterial, type CaMaterial } from './material.js';

export const SELF_SIGNED_FILES = {
  cert: 'ca-cert.pem',
  key: 'ca-key.pem',
  roots: 'root-cert.pem',
  nextCert: 'next-ca-cert.pem',
  nextKey: 'next-ca-key.pem',
  rotation: 'rotation.json',
} as const;

export interface SelfSignedOptions {
  stateDir: string;
  trustDomain: string;
  /** CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE / --ca-key-type. */
  keySpec: KeySpec;
  /** CITADEL_SELF_SIGNED_CA_CERT_TTL. */
  ttlSeconds: number;
  /** Organization of the root's subject; defaults to the trust domain (as Istio does). */
  organization?: string;
  now?: () => number;
}

export interface SelfSignedResult {
  signer: LocalSigner;
  created: boolean;
  files: { cert: string; key: string; roots: string };
}

/** The self-signed CA as stored: PEM text only, so every store keeps exactly the same thing. */
export interface StoredCaState {
  certPem: string;
  keyPem: string;
  /** The published trust bundle: the signing root, a pending next root, and older roots until they expire. */
  rootsPem: string;
  /** A rotation in progress: the root that will sign after the overlap. */
  next?: { certPem: string; keyPem: string };
  /** When `next` was first published in `rootsPem` (ms since the epoch). */
  nextPublishedAt?: number;
}

export interface ParsedCaState {
  signingCert: ParsedCertificate;
  privateKey: KeyObject;
  bundle: ParsedCertificate[];
  next?: { cert: ParsedCertificate; key: KeyObject };
  nextPublishedAt?: number;
}

/** Thrown by `update` when the stored state changed since it was read (another replica won). */
export class CaStateConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CaStateConflictError';
  }
}

/** Where the state lives, for messages. */
export interface StateLocation {
  /** "state directory ./.meshca", "Secret istio-system/istio-ca-secret". */
  readonly description: string;
  /** One entry: ".meshca/ca-key.pem", "ca-key.pem in Secret istio-system/istio-ca-secret". */
  entry(name: string): string;
}

export interface CaStateStore extends StateLocation {
  load(): Promise<{ state: StoredCaState; version: string } | null>;
  /** Create-if-absent: when the state already exists (another replica was first), returns it with created=false. */
  create(state: StoredCaState): Promise<{ state: StoredCaState; version: string; created: boolean }>;
  /** Replaces the state if it is still at `version`; throws CaStateConflictError otherwise. */
  update(state: StoredCaState, version: string): Promise<{ state: StoredCaState; version: string }>;
  /** Calls `onChange` when someone else may have changed the state. Returns a stop function. */
  watch?(onChange: () => void): () => void;
}

function firstCertificate(pem: string, what: string): ParsedCertificate {
  try {
    const certs = certificatesFromPem(pem);
    if (certs.length === 0) throw new Error('no CERTIFICATE block');
    return parseCertificate(certs[0]!);
  } catch (error) {
    throw new CaConfigError(`${what} is not a readable PEM certificate: ${(error as Error).message}`);
  }
}

function privateKeyOf(pem: string, what: string): KeyObject {
  try {
    return loadPrivateKey(pem, what);
  } catch (error) {
    throw new CaConfigError((error as Error).message);
  }
}

/** Parses stored PEM text. Throws CaConfigError naming the store and the entry. */
export function parseStoredState(state: StoredCaState, where: StateLocation): ParsedCaState {
  const signingCert = firstCertificate(state.certPem, where.entry(SELF_SIGNED_FILES.cert));
  const privateKey = privateKeyOf(state.keyPem, where.entry(SELF_SIGNED_FILES.key));
  let bundle: ParsedCertificate[];
  try {
    bundle = certificatesFromPem(state.rootsPem).map(parseCertificate);
    if (bundle.length === 0) throw new Error('no CERTIFICATE block');
  } catch (error) {
    throw new CaConfigError(`${where.entry(SELF_SIGNED_FILES.roots)} is not a readable PEM certificate bundle: ${(error as Error).message}`);
  }
  const parsed: ParsedCaState = { signingCert, privateKey, bundle };
  if (state.next) {
    parsed.next = {
      cert: firstCertificate(state.next.certPem, where.entry(SELF_SIGNED_FILES.nextCert)),
      key: privateKeyOf(state.next.keyPem, where.entry(SELF_SIGNED_FILES.nextKey)),
    };
  }
  if (state.nextPublishedAt !== undefined) parsed.nextPublishedAt = state.nextPublishedAt;
  return parsed;
}

/** Signing material from the stored state; expired roots are left out of the published bundle. */
export function materialFromState(parsed: ParsedCaState, where: StateLocation, now: number): CaMaterial {
  const roots = parsed.bundle.filter((c) => c.notAfter.getTime() > now || c.der.equals(parsed.signingCert.der));
  if (!roots.some((r) => r.der.equals(parsed.signingCert.der))) {
    throw new CaConfigError(`self-signed CA in ${where.description} is unusable: ${SELF_SIGNED_FILES.cert} is not in ${SELF_SIGNED_FILES.roots}`);
  }
  try {
    return buildCaMaterial({ signingCert: parsed.signingCert, privateKey: parsed.privateKey, chain: [], roots, now: new Date(now) });
  } catch (error) {
    const detail = isPkiError(error) ? error.message : String(error);
    throw new CaConfigError(
      `self-signed CA in ${where.description} is unusable: ${detail} (${SELF_SIGNED_FILES.key} must belong to ${SELF_SIGNED_FILES.cert}, which must be in ${SELF_SIGNED_FILES.roots})`,
    );
  }
}

/** A stable version string for stores without one of their own. */
export function stateVersion(state: StoredCaState): string {
  return createHash('sha256')
    .update(JSON.stringify([state.certPem, state.keyPem, state.rootsPem, state.next?.certPem ?? null, state.next?.keyPem ?? null, state.nextPublishedAt ?? null]))
    .digest('hex');
}

function sameCertificate(a: string, b: string): boolean {
  try {
    const [x] = certificatesFromPem(a);
    const [y] = certificatesFromPem(b);
    return x !== undefined && y !== undefined && x.equals(y);
  } catch {
    return false;
  }
}

function keyBelongsTo(keyPem: string, certPem: string): boolean {
  try {
    const [der] = certificatesFromPem(certPem);
    return der !== undefined && keysMatch(loadPrivateKey(keyPem), certificatePublicKey(parseCertificate(der)));
  } catch {
    return false;
  }
}

async function readIfPresent(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CaConfigError(`cannot read ${file}: ${(error as Error).message}`);
  }
}

/**
 * The state directory as a store. Files are written one at a time (each atomically), in an order that `load`
 * can always make sense of: next root key, next root cert, signing key, signing cert, bundle, rotation.json,
 * and the next-root files are removed last. A crash between any two writes is resolved on the next load.
 */
export class FileCaStore implements CaStateStore {
  readonly description: string;
  readonly files: Readonly<Record<keyof typeof SELF_SIGNED_FILES, string>>;

  entry(name: string): string {
    return path.join(this.stateDir, name);
  }

  constructor(readonly stateDir: string) {
    this.description = `state directory ${stateDir}`;
    const join = (name: string): string => path.join(stateDir, name);
    this.files = {
      cert: join(SELF_SIGNED_FILES.cert),
      key: join(SELF_SIGNED_FILES.key),
      roots: join(SELF_SIGNED_FILES.roots),
      nextCert: join(SELF_SIGNED_FILES.nextCert),
      nextKey: join(SELF_SIGNED_FILES.nextKey),
      rotation: join(SELF_SIGNED_FILES.rotation),
    };
  }

  async load(): Promise<{ state: StoredCaState; version: string } | null> {
    const f = this.files;
    const [certPem, keyPem, rootsPem, nextCertPem, nextKeyPem, rotationText] = await Promise.all(
      [f.cert, f.key, f.roots, f.nextCert, f.nextKey, f.rotation].map(readIfPresent),
    );
    const present = [certPem, keyPem, rootsPem].filter((v) => v !== null).length;
    if (present === 0) return null;
    if (present < 3) {
      const named: [string, string | null][] = [
        [SELF_SIGNED_FILES.cert, certPem],
        [SELF_SIGNED_FILES.key, keyPem],
        [SELF_SIGNED_FILES.roots, rootsPem],
      ];
      const missing = named.filter(([, content]) => content === null).map(([name]) => name);
      throw new CaConfigError(
        `self-signed CA state in ${this.stateDir} is incomplete (missing ${missing.join(', ')}); restore the missing files, or move the directory away to create a new root (every workload will then need new certificates)`,
      );
    }
    // A next root counts only when both halves were written and belong together (a crash may leave one).
    const next = nextCertPem !== null && nextKeyPem !== null && keyBelongsTo(nextKeyPem, nextCertPem) ? { certPem: nextCertPem, keyPem: nextKeyPem } : undefined;
    let state: StoredCaState = { certPem: certPem!, keyPem: keyPem!, rootsPem: rootsPem! };
    if (next && !keyBelongsTo(keyPem!, certPem!) && keyBelongsTo(keyPem!, next.certPem)) {
      // Crashed while switching: the new key is in place, the certificate not yet. Finish the switch on disk.
      state = { certPem: next.certPem, keyPem: keyPem!, rootsPem: rootsPem! };
      await writeFileAtomic(this.files.cert, next.certPem, 0o644);
      await this.remove([this.files.rotation, this.files.nextKey, this.files.nextCert]);
    } else if (next && sameCertificate(certPem!, next.certPem)) {
      // Crashed after switching, before the next-root files were removed.
      await this.remove([this.files.rotation, this.files.nextKey, this.files.nextCert]);
    } else if (!next && (nextCertPem !== null || nextKeyPem !== null)) {
      // Half of a next root from a crash while preparing: never published, so it is dropped.
      await this.remove([this.files.rotation, this.files.nextKey, this.files.nextCert]);
    } else if (next) {
      state.next = next;
      const publishedAt = parsePublishedAt(rotationText);
      if (publishedAt !== undefined) state.nextPublishedAt = publishedAt;
    }
    return { state, version: stateVersion(state) };
  }

  async create(state: StoredCaState): Promise<{ state: StoredCaState; version: string; created: boolean }> {
    try {
      await ensurePrivateDirectory(this.stateDir);
    } catch (error) {
      throw new CaConfigError(`cannot create state directory ${this.stateDir}: ${(error as Error).message} (set --state-dir to a writable directory)`);
    }
    const existing = await this.load();
    if (existing) return { ...existing, created: false };
    // Leftovers of an earlier rotation must not attach themselves to a new root.
    await this.remove([this.files.nextKey, this.files.nextCert, this.files.rotation]);
    // Key first: a crash after it leaves a partial set that is refused (never silently replaced).
    await writeFileAtomic(this.files.key, state.keyPem, 0o600);
    await writeFileAtomic(this.files.cert, state.certPem, 0o644);
    await writeFileAtomic(this.files.roots, state.rootsPem, 0o644);
    const plain: StoredCaState = { certPem: state.certPem, keyPem: state.keyPem, rootsPem: state.rootsPem };
    if (state.next) {
      return { ...(await this.update({ ...state }, stateVersion(plain))), created: true };
    }
    return { state: plain, version: stateVersion(plain), created: true };
  }

  async update(state: StoredCaState, version: string): Promise<{ state: StoredCaState; version: string }> {
    const current = await this.load();
    if (!current || current.version !== version) throw new CaStateConflictError(`the CA state in ${this.stateDir} changed since it was read`);
    const cur = current.state;
    const f = this.files;
    if (state.next && (state.next.certPem !== cur.next?.certPem || state.next.keyPem !== cur.next?.keyPem)) {
      await writeFileAtomic(f.nextKey, state.next.keyPem, 0o600);
      await writeFileAtomic(f.nextCert, state.next.certPem, 0o644);
    }
    if (state.keyPem !== cur.keyPem) await writeFileAtomic(f.key, state.keyPem, 0o600);
    if (state.certPem !== cur.certPem) await writeFileAtomic(f.cert, state.certPem, 0o644);
    if (state.rootsPem !== cur.rootsPem) await writeFileAtomic(f.roots, state.rootsPem, 0o644);
    if (state.next && state.nextPublishedAt !== undefined) {
      if (state.nextPublishedAt !== cur.nextPublishedAt) {
        await writeFileAtomic(f.rotation, JSON.stringify({ nextPublishedAt: new Date(state.nextPublishedAt).toISOString() }) + '\n', 0o644);
      }
    } else {
      await this.remove([f.rotation]);
    }
    if (!state.next) await this.remove([f.nextKey, f.nextCert]);
    const stored: StoredCaState = { certPem: state.certPem, keyPem: state.keyPem, rootsPem: state.rootsPem };
    if (state.next) {
      stored.next = state.next;
      if (state.nextPublishedAt !== undefined) stored.nextPublishedAt = state.nextPublishedAt;
    }
    return { state: stored, version: stateVersion(stored) };
  }

  private async remove(files: string[]): Promise<void> {
    let removed = false;
    for (const file of files) {
      try {
        await fs.rm(file);
        removed = true;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    }
    if (removed) await syncDirectory(this.stateDir);
  }
}

function parsePublishedAt(text: string | null): number | undefined {
  if (!text) return undefined;
  try {
    const value = (JSON.parse(text) as { nextPublishedAt?: unknown }).nextPublishedAt;
    const time = typeof value === 'string' ? Date.parse(value) : NaN;
    return Number.isFinite(time) ? time : undefined;
  } catch {
    return undefined;
  }
}

/** Creates a new self-signed root key pair and certificate (not persisted). */
export async function createSelfSignedRoot(options: SelfSignedOptions): Promise<{ certPem: string; keyPem: string; material: CaMaterial }> {
  const now = options.now?.() ?? Date.now();
  const keys = await generateKeyPairForAsync(options.keySpec);
  const der = createCaCertificate({
    subject: { organization: options.organization ?? options.trustDomain },
    subjectKey: keys.privateKey,
    // The trust domain's SPIFFE ID (the X.509-SVID spec's advice for signing certificates): a federated peer can
    // then tell a bundle of this trust domain from one of another.
    uris: [`spiffe://${options.trustDomain}`],
    notBefore: new Date(Math.floor(now / 1000) * 1000 - 2 * 60 * 1000),
    notAfter: new Date(now + options.ttlSeconds * 1000),
  });
  const cert = parseCertificate(der);
  return {
    certPem: certificateToPem(der),
    keyPem: exportPrivateKeyPem(keys.privateKey),
    material: buildCaMaterial({ signingCert: cert, privateKey: keys.privateKey, chain: [], roots: [cert], now: new Date(now) }),
  };
}

/**
 * Loads the root from `stateDir`, or creates and persists one when none of the files exist (no rotation; see
 * `openSelfSignedSigner` in rotation.ts for the managed form). Throws CaConfigError on partial or inconsistent state.
 */
export async function loadOrCreateSelfSignedCa(options: SelfSignedOptions): Promise<SelfSignedResult> {
  const store = new FileCaStore(options.stateDir);
  const files = { cert: store.files.cert, key: store.files.key, roots: store.files.roots };
  let loaded = await store.load();
  let created = false;
  if (!loaded) {
    const root = await createSelfSignedRoot(options);
    const result = await store.create({ certPem: root.certPem, keyPem: root.keyPem, rootsPem: root.certPem });
    loaded = result;
    created = result.created;
  }
  const now = options.now?.() ?? Date.now();
  const material = materialFromState(parseStoredState(loaded.state, store), store, now);
  return { signer: new LocalSigner('self-signed', material), created, files };
}
