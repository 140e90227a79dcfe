/**
 * A signing key that lives in a PKCS#11 token (an HSM, a cloud HSM or KMS through its PKCS#11 library, or
 * SoftHSM2): found by token label and key label and/or CKA_ID, logged in with a PIN read from a file or an
 * environment variable, used through a small pool of sessions. The private key never leaves the token: meshca
 * hashes in Node.js, the token signs the digest (CKM_ECDSA, or CKM_RSA_PKCS over a DigestInfo: the two forms
 * every module offers), and the signature comes back in the encoding X.509 wants (ECDSA as DER
 * Ecdsa-Sig-Value, RSA as PKCS#1 v1.5 bytes). The token's signing runs on libuv's thread pool (C_SignAsync), so
 * a slow module never stalls the event loop.
 *
 * When the token goes away (removed, reset, a network HSM unreachable, the login lost), signatures fail with
 * UPSTREAM_UNAVAILABLE and the key reconnects: it finds the token, logs in again and finds the same key again.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type * as Pkcs11Js from 'pkcs11js';
import { nullValue, octetString, oid, sequence, unsignedInteger } from '../../../pki/der.js';
import { OID } from '../../../pki/oids.js';
import { CaConfigError, CaError } from '../../errors.js';
import { loadPkcs11Binding, type Pkcs11Binding } from './binding.js';

export type DigestAlgorithm = 'sha256' | 'sha384' | 'sha512';

export interface Pkcs11KeyConfig {
  /** The PKCS#11 library (for SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so). */
  modulePath: string;
  /** CKA_LABEL of the token (the label given at initialisation, without the padding). */
  tokenLabel: string;
  /** CKA_LABEL of the private key; with keyId, both must match. */
  keyLabel?: string;
  /** CKA_ID of the private key, hex. */
  keyIdHex?: string;
  /** A file that holds the user PIN (one line). Exactly one of pinFile and pinEnv. */
  pinFile?: string;
  /** The name of an environment variable that holds the user PIN. */
  pinEnv?: string;
  /** Sessions kept open for signing (each runs one signature at a time); default 4, libuv's thread pool size. */
  maxSessions?: number;
  /** Accept a key that is extractable or not sensitive. Default false: such a key is refused at open. */
  allowExtractable?: boolean;
  /** The clock (epoch ms) of the reconnection backoff; default Date.now. */
  now?: () => number;
  /** Told of every signature the token made or refused, with the seconds it took (for a metric). */
  observe?: (seconds: number, outcome: 'ok' | 'unavailable' | 'error') => void;
}

/** What the token says about the private key object. */
export interface Pkcs11KeyFacts {
  kind: 'ec' | 'rsa';
  /** P-256 or P-384 for EC keys. */
  curve?: 'P-256' | 'P-384';
  label: string;
  idHex: string;
  extractable: boolean;
  sensitive: boolean;
}

const CURVES: Record<'P-256' | 'P-384', { params: Buffer; pointLength: number }> = {
  'P-256': { params: oid(OID.prime256v1), pointLength: 65 },
  'P-384': { params: oid(OID.secp384r1), pointLength: 97 },
};

const HASH_OIDS: Record<DigestAlgorithm, string> = {
  sha256: '2.16.840.1.101.3.4.2.1',
  sha384: '2.16.840.1.101.3.4.2.2',
  sha512: '2.16.840.1.101.3.4.2.3',
};

/** RFC 8017 DigestInfo ::= SEQUENCE { AlgorithmIdentifier, OCTET STRING digest }: what CKM_RSA_PKCS signs. */
export function digestInfo(algorithm: DigestAlgorithm, digest: Buffer): Buffer {
  return sequence(sequence(oid(HASH_OIDS[algorithm]), nullValue()), octetString(digest));
}

/** PKCS#11's ECDSA signature r || s (two halves of equal length) as X.509's Ecdsa-Sig-Value SEQUENCE { r, s }. */
export function ecdsaRawToDer(raw: Buffer): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new Error(`an ECDSA signature r || s has an even length, not ${raw.length}`);
  const half = raw.length / 2;
  return sequence(unsignedInteger(raw.subarray(0, half)), unsignedInteger(raw.subarray(half)));
}

/** The PIN, from a file (its first line) or an environment variable; never from a flag, which `ps` would show. */
export function readPin(config: Pick<Pkcs11KeyConfig, 'pinFile' | 'pinEnv'>, env: NodeJS.ProcessEnv = process.env): string {
  if ((config.pinFile === undefined) === (config.pinEnv === undefined)) {
    throw new CaConfigError('PKCS#11: give the PIN in exactly one way, a PIN file or the name of an environment variable that holds it');
  }
  let pin: string | undefined;
  if (config.pinFile !== undefined) {
    try {
      pin = readFileSync(config.pinFile, 'utf8').split(/\r?\n/)[0];
    } catch (error) {
      throw new CaConfigError(`PKCS#11: cannot read the PIN file ${config.pinFile}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    }
  } else {
    const variable = config.pinEnv!;
    pin = env[variable];
  }
  if (!pin) {
    throw new CaConfigError(config.pinFile !== undefined ? `PKCS#11: the PIN file ${config.pinFile} is empty` : `PKCS#11: the environment variable ${config.pinEnv} is not set or empty`);
  }
  return pin;
}

/** The PKCS#11 return code's name (CKR_PIN_INCORRECT, ...) of a pkcs11js error, or undefined. */
function ckr(binding: Pkcs11Binding, error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'number' || code === 0) return undefined;
  return Object.keys(binding).find((name) => name.startsWith('CKR_') && (binding as unknown as Record<string, unknown>)[name] === code);
}

/**
 * One C_Initialize per library per process, shared by every key opened from it (PKCS#11 allows one per
 * application); C_Finalize when the last key closes.
 */
interface LoadedModule {
  p11: Pkcs11Js.PKCS11;
  users: number;
  /** Bumped when the module is initialised again: handles of an earlier epoch mean nothing now. */
  epoch: number;
}
const modules = new Map<string, LoadedModule>();

function acquireModule(binding: Pkcs11Binding, modulePath: string): Pkcs11Js.PKCS11 {
  const loaded = modules.get(modulePath);
  if (loaded) {
    loaded.users++;
    return loaded.p11;
  }
  const p11 = new binding.PKCS11();
  try {
    p11.load(modulePath);
  } catch (error) {
    throw new CaConfigError(`PKCS#11: cannot load the module ${modulePath}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`, { cause: error });
  }
  try {
    // OS locking: signatures run on the thread pool, so the module must expect calls from several threads.
    p11.C_Initialize({ flags: binding.CKF_OS_LOCKING_OK });
  } catch (error) {
    p11.close();
    throw new CaConfigError(`PKCS#11: the module ${modulePath} did not initialise (${ckr(binding, error) ?? String(error)})`, { cause: error });
  }
  modules.set(modulePath, { p11, users: 1, epoch: 0 });
  return p11;
}

function moduleEpoch(modulePath: string): number {
  return modules.get(modulePath)?.epoch ?? -1;
}

/**
 * C_Finalize and C_Initialize again, which some modules need before a token that went away is seen again
 * (SoftHSM2 after its token directory returns; network HSM clients after a lost connection). Only for a module
 * that one key alone uses: every other handle of the process would go with it. Returns whether it happened.
 */
function reinitializeModule(binding: Pkcs11Binding, modulePath: string): boolean {
  const loaded = modules.get(modulePath);
  if (!loaded || loaded.users !== 1) return false;
  try {
    loaded.p11.C_Finalize();
  } catch {
    // Already torn down by the failure.
  }
  loaded.epoch++;
  loaded.p11.C_Initialize({ flags: binding.CKF_OS_LOCKING_OK });
  return true;
}

function releaseModule(modulePath: string): void {
  const loaded = modules.get(modulePath);
  if (!loaded || --loaded.users > 0) return;
  modules.delete(modulePath);
  try {
    loaded.p11.C_Finalize();
  } finally {
    loaded.p11.close();
  }
}

/**
 * PKCS#11 return codes after which the key's handle or sessions are gone: the token was removed or reset, the
 * module lost its connection to a network HSM, or the login ended. The key reconnects (finds the token, logs in
 * again, finds the key again) before its next signature; until that works, signing is UNAVAILABLE.
 */
const LOST = new Set([
  'CKR_DEVICE_REMOVED',
  'CKR_DEVICE_ERROR',
  'CKR_DEVICE_MEMORY',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_OBJECT_HANDLE_INVALID',
  'CKR_KEY_HANDLE_INVALID',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_GENERAL_ERROR',
  'CKR_FUNCTION_FAILED',
]);

/** How long a failed reconnection is not retried: signatures in between fail at once, without a call to the module. */
export const RECONNECT_BACKOFF_MS = 1000;

export class Pkcs11Key {
  readonly publicKey: KeyObject;
  readonly facts: Pkcs11KeyFacts;
  private readonly idle: Buffer[] = [];
  private readonly waiting: { resolve: (session: Buffer) => void; reject: (error: Error) => void }[] = [];
  /** Sessions open, idle or signing; the module is released when the key is closed and this reaches 0. */
  private open = 0;
  private closed = false;
  /** Set when the token stopped answering for the key: the next signature reconnects first. */
  private lost: string | undefined;
  /** Bumped at each reconnection; a session of an older generation is closed when it comes back. */
  private generation = 0;
  /** Each session's key generation and module epoch. */
  private readonly sessionOrigin = new WeakMap<Buffer, { generation: number; epoch: number }>();
  private reconnecting: Promise<void> | undefined;
  private lastFailedReconnect: { at: number; reason: string } | undefined;
  private readonly publicSpki: Buffer;

  /** Use openPkcs11Key. */
  constructor(
    private readonly binding: Pkcs11Binding,
    private readonly p11: Pkcs11Js.PKCS11,
    private readonly config: Pkcs11KeyConfig,
    private slot: Buffer,
    private privateKey: Buffer,
    firstSession: Buffer,
    publicKey: KeyObject,
    facts: Pkcs11KeyFacts,
    private readonly env: NodeJS.ProcessEnv,
  ) {
    this.publicKey = publicKey;
    this.publicSpki = publicKey.export({ format: 'der', type: 'spki' });
    this.facts = facts;
    this.adopt(firstSession);
    this.idle.push(firstSession);
  }

  /** Whether the key answers (false between losing the token and reconnecting to it). */
  get available(): boolean {
    return this.lost === undefined && !this.closed;
  }

  /**
   * Signs `data` with the token's key: hashed here with `digestAlgorithm`, the digest signed in the token.
   * Returns the signature as X.509 carries it in a certificate's BIT STRING (ECDSA DER, RSA PKCS#1 v1.5).
   * Throws CaError UPSTREAM_UNAVAILABLE while the token is gone (it reconnects on a later call).
   */
  async sign(digestAlgorithm: DigestAlgorithm, data: Buffer): Promise<Buffer> {
    const digest = createHash(digestAlgorithm).update(data).digest();
    const rsa = this.facts.kind === 'rsa';
    const input = rsa ? digestInfo(digestAlgorithm, digest) : digest;
    const mechanism = rsa ? this.binding.CKM_RSA_PKCS : this.binding.CKM_ECDSA;
    if (this.lost !== undefined) await this.reconnect();
    const session = await this.acquire();
    const handle = this.privateKey;
    const started = process.hrtime.bigint();
    const observe = (outcome: 'ok' | 'unavailable' | 'error'): void => this.config.observe?.(Number(process.hrtime.bigint() - started) / 1e9, outcome);
    try {
      this.p11.C_SignInit(session, { mechanism }, handle);
      const signature = await this.p11.C_SignAsync(session, input, Buffer.alloc(512));
      observe('ok');
      return rsa ? Buffer.from(signature) : ecdsaRawToDer(signature);
    } catch (error) {
      const code = ckr(this.binding, error);
      const lost = code !== undefined && LOST.has(code);
      observe(lost ? 'unavailable' : 'error');
      if (lost) {
        this.markLost(code, session);
        throw new CaError('UPSTREAM_UNAVAILABLE', `PKCS#11: the token stopped answering for ${this.describe()} (${code}); reconnecting`, { cause: error });
      }
      // A failed C_Sign ends the operation (PKCS#11 5.13); the session itself stays usable.
      throw new CaError('CERT_GEN_ERROR', `PKCS#11: signing with ${this.describe()} failed (${code ?? String(error)})`, { cause: error });
    } finally {
      this.release(session);
    }
  }

  /**
   * Closes this key's sessions and, when no other key uses the module, finalises it. Signatures waiting for a
   * session fail; those already in the token finish first (finalising under them would pull the module away).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const waiter of this.waiting.splice(0)) waiter.reject(new Error(`PKCS#11: ${this.describe()} was closed`));
    for (const session of this.idle.splice(0)) this.closeSession(session);
  }

  private describe(): string {
    return `key ${JSON.stringify(this.facts.label)} (id ${this.facts.idHex || 'none'}) in token ${JSON.stringify(this.config.tokenLabel)}`;
  }

  private now(): number {
    return this.config.now?.() ?? Date.now();
  }

  private adopt(session: Buffer): void {
    this.sessionOrigin.set(session, { generation: this.generation, epoch: moduleEpoch(this.config.modulePath) });
    this.open++;
  }

  private current(session: Buffer): boolean {
    return this.sessionOrigin.get(session)?.generation === this.generation;
  }

  private markLost(reason: string, session?: Buffer): void {
    // A failure on a session of an earlier generation belongs to a loss already seen.
    if (session && !this.current(session)) return;
    this.lost = reason;
    this.lastFailedReconnect = undefined;
    for (const waiter of this.waiting.splice(0)) waiter.reject(new CaError('UPSTREAM_UNAVAILABLE', `PKCS#11: ${this.describe()} is unavailable (${reason}); reconnecting`));
    // Idle sessions belong to the lost login; those signing now are closed when they come back.
    this.generation++;
    for (const idle of this.idle.splice(0)) this.closeSession(idle);
  }

  /**
   * Finds the token, logs in (the PIN is read again, so a rotated PIN file takes effect here) and finds the key
   * again, which must be the same key (same public key): another key under the label is refused. At most one
   * attempt runs at a time, and after a failure none for RECONNECT_BACKOFF_MS.
   */
  private reconnect(): Promise<void> {
    const failed = this.lastFailedReconnect;
    if (failed && this.now() - failed.at < RECONNECT_BACKOFF_MS) {
      return Promise.reject(new CaError('UPSTREAM_UNAVAILABLE', `PKCS#11: ${this.describe()} is unavailable: ${failed.reason}`));
    }
    this.reconnecting ??= (async () => {
      try {
        try {
          this.attach();
        } catch (error) {
          // Nothing of this key is in flight (the lost sessions are all back): the module may start over.
          if (this.open !== 0 || !reinitializeModule(this.binding, this.config.modulePath)) throw error;
          this.attach();
        }
        this.lost = undefined;
        this.lastFailedReconnect = undefined;
      } catch (error) {
        const code = ckr(this.binding, error);
        const reason = error instanceof CaConfigError ? error.message.replace(/^PKCS#11: /, '') : code ? `the token does not answer (${code})` : (error as Error).message;
        this.lastFailedReconnect = { at: this.now(), reason };
        throw new CaError('UPSTREAM_UNAVAILABLE', `PKCS#11: ${this.describe()} is unavailable: ${reason}`, { cause: error });
      }
    })().finally(() => {
      this.reconnecting = undefined;
    });
    return this.reconnecting;
  }

  /** Finds the token, opens a session, logs in and finds the same key; on success the session joins the pool. */
  private attach(): void {
    const slot = this.p11.C_GetSlotList(true).find((candidate) => this.p11.C_GetTokenInfo(candidate).label.trim() === this.config.tokenLabel);
    if (!slot) throw new Error(`no token labelled ${JSON.stringify(this.config.tokenLabel)} is present`);
    const session = this.p11.C_OpenSession(slot, this.binding.CKF_SERIAL_SESSION);
    try {
      login(this.binding, this.p11, session, this.config, this.env);
      const found = locateKey(this.binding, this.p11, this.config, session);
      if (!found.publicKey.export({ format: 'der', type: 'spki' }).equals(this.publicSpki)) {
        throw new Error(`the token now holds a different key under ${keyNaming(this.config)}; restart meshca if the key was replaced on purpose`);
      }
      this.slot = slot;
      this.privateKey = found.handle;
    } catch (error) {
      try {
        this.p11.C_CloseSession(session);
      } catch {
        // The session went with the failure.
      }
      throw error;
    }
    this.generation++;
    this.adopt(session);
    this.idle.push(session);
  }

  private async acquire(): Promise<Buffer> {
    if (this.closed) throw new CaError('UPSTREAM_UNAVAILABLE', `PKCS#11: ${this.describe()} is closed`);
    const ready = this.idle.pop();
    if (ready) return ready;
    if (this.open < (this.config.maxSessions ?? 4)) {
      // Sessions of one application share its login: a new session is logged in already.
      let session: Buffer;
      try {
        session = this.p11.C_OpenSession(this.slot, this.binding.CKF_SERIAL_SESSION);
      } catch (error) {
        const code = ckr(this.binding, error) ?? String(error);
        this.markLost(code);
        throw new CaError('UPSTREAM_UNAVAILABLE', `PKCS#11: cannot open a session on token ${JSON.stringify(this.config.tokenLabel)} (${code}); reconnecting`, { cause: error });
      }
      this.adopt(session);
      return session;
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  private release(session: Buffer): void {
    if (this.closed || !this.current(session)) {
      this.closeSession(session);
      return;
    }
    const next = this.waiting.shift();
    if (next) {
      next.resolve(session);
    } else {
      this.idle.push(session);
    }
  }

  private closeSession(session: Buffer): void {
    this.open--;
    // A handle from before the module was initialised again may now name another session: leave it.
    if (this.sessionOrigin.get(session)?.epoch === moduleEpoch(this.config.modulePath)) {
      try {
        this.p11.C_CloseSession(session);
      } catch {
        // Closing a session the token already dropped: nothing left to free.
      }
    }
    if (this.closed && this.open === 0) releaseModule(this.config.modulePath);
  }
}

/** Logs the session's application in as the user; already logged in (another key of this process) is fine. */
function login(
  binding: Pkcs11Binding,
  p11: Pkcs11Js.PKCS11,
  session: Buffer,
  config: Pick<Pkcs11KeyConfig, 'tokenLabel' | 'pinFile' | 'pinEnv'>,
  env: NodeJS.ProcessEnv,
): void {
  try {
    p11.C_Login(session, binding.CKU_USER, readPin(config, env));
  } catch (error) {
    if (error instanceof CaConfigError) throw error;
    const code = ckr(binding, error);
    if (code === 'CKR_USER_ALREADY_LOGGED_IN') return;
    const why = code === 'CKR_PIN_INCORRECT' ? 'wrong PIN' : code === 'CKR_PIN_LOCKED' ? 'the PIN is locked' : (code ?? String(error));
    throw new CaConfigError(`PKCS#11: login to token ${JSON.stringify(config.tokenLabel)} failed: ${why}`, { cause: error });
  }
}

/** A logged-in session on the configured token; `release` closes it and lets go of the module. */
export interface TokenSession {
  binding: Pkcs11Binding;
  p11: Pkcs11Js.PKCS11;
  slot: Buffer;
  session: Buffer;
  release(): void;
}

/**
 * Loads the module (shared per process), finds the token by label, opens a session (read-write for creating
 * objects) and logs in with the configured PIN. Failures are one-line CaConfigErrors. PKCS#11 logs in per
 * application: while another key of this process is open on the token, the PIN is not checked again.
 */
export async function openTokenSession(
  config: Pick<Pkcs11KeyConfig, 'modulePath' | 'tokenLabel' | 'pinFile' | 'pinEnv'>,
  env: NodeJS.ProcessEnv,
  readWrite = false,
): Promise<TokenSession> {
  readPin(config, env);
  const binding = await loadPkcs11Binding();
  const p11 = acquireModule(binding, config.modulePath);
  let session: Buffer | undefined;
  const release = (): void => {
    if (session) {
      try {
        p11.C_CloseSession(session);
      } catch {
        // Already gone with the failure.
      }
    }
    releaseModule(config.modulePath);
  };
  try {
    const slot = p11.C_GetSlotList(true).find((candidate) => p11.C_GetTokenInfo(candidate).label.trim() === config.tokenLabel);
    if (!slot) throw new CaConfigError(`PKCS#11: no token labelled ${JSON.stringify(config.tokenLabel)} in ${config.modulePath}`);
    session = p11.C_OpenSession(slot, binding.CKF_SERIAL_SESSION | (readWrite ? binding.CKF_RW_SESSION : 0));
    login(binding, p11, session, config, env);
    return { binding, p11, slot, session, release };
  } catch (error) {
    release();
    throw error;
  }
}

/**
 * Loads the module, finds the token and the key, logs in and reads the public key. Every failure is a
 * CaConfigError of one line: module not loadable, token or key not found, wrong PIN, an extractable key.
 */
export async function openPkcs11Key(config: Pkcs11KeyConfig, env: NodeJS.ProcessEnv = process.env): Promise<Pkcs11Key> {
  if (config.keyLabel === undefined && config.keyIdHex === undefined) {
    throw new CaConfigError('PKCS#11: name the key by its label, its id (hex), or both');
  }
  const token = await openTokenSession(config, env);
  try {
    // The key takes the session over (its first pooled one) and releases the module when it closes.
    const found = locateKey(token.binding, token.p11, config, token.session);
    return new Pkcs11Key(token.binding, token.p11, config, token.slot, found.handle, token.session, found.publicKey, found.facts, env);
  } catch (error) {
    token.release();
    throw error;
  }
}

/** "label \"x\" and id 01": how the configuration names the key, for messages. */
function keyNaming(config: Pick<Pkcs11KeyConfig, 'keyLabel' | 'keyIdHex'>): string {
  return [config.keyLabel !== undefined ? `label ${JSON.stringify(config.keyLabel)}` : '', config.keyIdHex !== undefined ? `id ${config.keyIdHex}` : '']
    .filter(Boolean)
    .join(' and ');
}

interface LocatedKey {
  handle: Buffer;
  publicKey: KeyObject;
  facts: Pkcs11KeyFacts;
}

/** Finds the configured private key in a logged-in session, checks it may be used, and reads its public key. */
function locateKey(binding: Pkcs11Binding, p11: Pkcs11Js.PKCS11, config: Pkcs11KeyConfig, session: Buffer): LocatedKey {
  const what = keyNaming(config);
  const naming: Pkcs11Js.Template = [];
  if (config.keyLabel !== undefined) naming.push({ type: binding.CKA_LABEL, value: config.keyLabel });
  if (config.keyIdHex !== undefined) naming.push({ type: binding.CKA_ID, value: Buffer.from(config.keyIdHex, 'hex') });
  const find = (objectClass: number): Buffer[] => {
    p11.C_FindObjectsInit(session, [{ type: binding.CKA_CLASS, value: objectClass }, ...naming]);
    try {
      return p11.C_FindObjects(session, 2);
    } finally {
      p11.C_FindObjectsFinal(session);
    }
  };
  const privates = find(binding.CKO_PRIVATE_KEY);
  if (privates.length === 0) throw new CaConfigError(`PKCS#11: no private key with ${what} in token ${JSON.stringify(config.tokenLabel)}`);
  if (privates.length > 1) throw new CaConfigError(`PKCS#11: more than one private key with ${what} in token ${JSON.stringify(config.tokenLabel)}; name it by label and id`);
  const privateKey = privates[0]!;
  const read = (object: Buffer, type: number): Buffer => p11.C_GetAttributeValue(session, object, [{ type }])[0]?.value ?? Buffer.alloc(0);
  const flag = (type: number): boolean => read(privateKey, type)[0] === 1;

  // CK_ULONG in the machine's byte order: little-endian on the platforms Node.js ships for; 6 bytes hold any key type.
  const keyTypeBytes = read(privateKey, binding.CKA_KEY_TYPE);
  const keyType = keyTypeBytes.length === 0 ? -1 : keyTypeBytes.readUIntLE(0, Math.min(6, keyTypeBytes.length));
  const facts: Pkcs11KeyFacts = {
    kind: keyType === binding.CKK_RSA ? 'rsa' : 'ec',
    label: read(privateKey, binding.CKA_LABEL).toString('utf8'),
    idHex: read(privateKey, binding.CKA_ID).toString('hex'),
    extractable: flag(binding.CKA_EXTRACTABLE),
    sensitive: flag(binding.CKA_SENSITIVE),
  };
  if (keyType !== binding.CKK_RSA && keyType !== binding.CKK_EC) {
    throw new CaConfigError(`PKCS#11: the key with ${what} is neither RSA nor EC (CKA_KEY_TYPE ${keyType}); meshca signs with RSA, P-256 and P-384`);
  }
  if ((facts.extractable || !facts.sensitive) && !config.allowExtractable) {
    throw new CaConfigError(
      `PKCS#11: the key with ${what} is ${facts.extractable ? 'extractable' : 'not sensitive'}, so its private part can leave the token; make a key with CKA_EXTRACTABLE false and CKA_SENSITIVE true`,
    );
  }

  let publicKey: KeyObject;
  if (facts.kind === 'rsa') {
    // An RSA private key object carries its modulus and public exponent, so no public object is needed.
    publicKey = rsaPublicKey(read(privateKey, binding.CKA_MODULUS), read(privateKey, binding.CKA_PUBLIC_EXPONENT));
  } else {
    const params = read(privateKey, binding.CKA_EC_PARAMS);
    const curve = (Object.keys(CURVES) as ('P-256' | 'P-384')[]).find((name) => CURVES[name].params.equals(params));
    if (!curve) throw new CaConfigError(`PKCS#11: the EC key with ${what} is on a curve meshca does not sign with (CKA_EC_PARAMS ${params.toString('hex')}); use P-256 or P-384`);
    facts.curve = curve;
    // The EC point is an attribute of the public key object only: find it by the same label/id.
    const publics = find(binding.CKO_PUBLIC_KEY);
    if (publics.length !== 1) throw new CaConfigError(`PKCS#11: no single public key object with ${what} beside the private key; its EC point is needed`);
    publicKey = ecPublicKey(curve, read(publics[0]!, binding.CKA_EC_POINT));
  }
  return { handle: privateKey, publicKey, facts };
}

function rsaPublicKey(modulus: Buffer, exponent: Buffer): KeyObject {
  // JWK integers are unsigned big-endian without leading zero bytes.
  const strip = (bytes: Buffer): Buffer => {
    const first = bytes.findIndex((byte) => byte !== 0);
    return first === -1 ? bytes.subarray(bytes.length - 1) : bytes.subarray(first);
  };
  return createPublicKey({ key: { kty: 'RSA', n: strip(modulus).toString('base64url'), e: strip(exponent).toString('base64url') }, format: 'jwk' });
}

/**
 * CKA_EC_POINT is the DER OCTET STRING around the uncompressed point 04 || X || Y (PKCS#11 2.40; some older
 * modules give the bare point, accepted too).
 */
function ecPublicKey(curve: 'P-256' | 'P-384', ecPoint: Buffer): KeyObject {
  const { pointLength } = CURVES[curve];
  const point = ecPoint.length === pointLength ? ecPoint : ecPoint[0] === 0x04 && ecPoint[1] === pointLength ? ecPoint.subarray(2) : undefined;
  if (!point || point.length !== pointLength || point[0] !== 0x04) {
    throw new CaConfigError(`PKCS#11: the token's EC point for the ${curve} key is not an uncompressed point (${ecPoint.toString('hex').slice(0, 16)}...)`);
  }
  const size = (pointLength - 1) / 2;
  return createPublicKey({
    key: { kty: 'EC', crv: curve, x: point.subarray(1, 1 + size).toString('base64url'), y: point.subarray(1 + size).toString('base64url') },
    format: 'jwk',
  });
}
