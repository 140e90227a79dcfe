/**
 * Plugged-in CA certificates (`ROOT_CA_DIR`, Istio's `cacerts` Secret): the Istio four-file layout or the
 * cert-manager `tls.crt`/`tls.key`/`ca.crt` layout, validated as a whole at load and reloaded live when the
 * directory changes (including Kubernetes' `..data` symlink swap). A broken update never replaces working
 * material: it is logged, counted, and the current material stays in use.
 */
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readdirSync, watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import { Counter, type Registry } from 'prom-client';
import type { Logger } from '../../../log.js';
import {
  certificatePublicKey,
  decodePem,
  describeCertificate,
  keysMatch,
  loadPrivateKey,
  parseCertificate,
  verifyChain,
  type ParsedCertificate,
} from '../../../pki/index.js';
import type { KeyObject } from 'node:crypto';
import { systemClock, timerAt, type Clock } from '../../../util/clock.js';
import { CaConfigError } from '../../errors.js';
import { ManagedLocalSigner } from '../../managed-signer.js';
import { buildCaMaterial, fingerprint, type CaMaterial } from '../../material.js';

export const ISTIO_CACERTS_FILES = {
  cert: 'ca-cert.pem',
  key: 'ca-key.pem',
  chain: 'cert-chain.pem',
  roots: 'root-cert.pem',
} as const;

export const TLS_CACERTS_FILES = {
  cert: 'tls.crt',
  key: 'tls.key',
  ca: 'ca.crt',
} as const;

const KNOWN_FILES: readonly string[] = [...Object.values(ISTIO_CACERTS_FILES), ...Object.values(TLS_CACERTS_FILES)];

/** Kubernetes Secret volumes publish files through this symlink, swapped atomically on update. */
const KUBE_DATA_LINK = '..data';

export const CACERTS_RELOAD_ERRORS_METRIC = 'meshca_cacerts_reload_errors_total';

export type CacertsLayout = 'istio' | 'cert-manager';

/** One code per kind of broken `cacerts`, so callers and tests can tell them apart. */
export type CacertsProblem =
  | 'empty'
  | 'incomplete'
  | 'unreadable'
  | 'bad-certificate'
  | 'bad-key'
  | 'key-mismatch'
  | 'not-ca'
  | 'no-keycertsign'
  | 'expired'
  | 'not-yet-valid'
  | 'chain';

export class CacertsError extends CaConfigError {
  constructor(
    readonly problem: CacertsProblem,
    /** The file at fault (or the directory for `empty`). */
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CacertsError';
  }
}

/** True when `dir` holds any of the known CA files, which makes `cacerts` the default key source. */
export function cacertsDirHoldsFiles(dir: string): boolean {
  try {
    const entries = readdirSync(dir);
    if (entries.some((e) => KNOWN_FILES.includes(e))) return true;
    return entries.includes(KUBE_DATA_LINK) && KNOWN_FILES.some((f) => existsSync(path.join(dir, KUBE_DATA_LINK, f)));
  } catch {
    return false;
  }
}

/** The raw content of a cacerts directory, read from one consistent place. */
export interface CacertsSnapshot {
  dir: string;
  files: ReadonlyMap<string, string>;
  /** SHA-256 over names and contents: unchanged content is not reloaded. */
  fingerprint: string;
}

async function readOptional(file: string, shownAs: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new CacertsError('unreadable', shownAs, `${shownAs} cannot be read: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Reads every known file. When the directory is a Kubernetes Secret volume, files are read through the resolved
 * `..data` target so that a concurrent swap cannot mix old and new files.
 */
export async function readCacertsSnapshot(dir: string): Promise<CacertsSnapshot> {
  const resolveData = async (): Promise<string> => {
    try {
      const resolved = await fs.realpath(path.join(dir, KUBE_DATA_LINK));
      if ((await fs.stat(resolved)).isDirectory()) return resolved;
    } catch {
      // No `..data` link: a plain directory.
    }
    return dir;
  };
  const read = async (from: string): Promise<Map<string, string>> => {
    const files = new Map<string, string>();
    for (const name of KNOWN_FILES) {
      const content = await readOptional(path.join(from, name), path.join(dir, name));
      if (content !== undefined) files.set(name, content);
    }
    return files;
  };
  let base = await resolveData();
  let files = await read(base);
  // The kubelet may swap `..data` and delete the old directory while we read it: read the new one instead.
  for (let attempt = 0; attempt < 3 && base !== dir; attempt++) {
    const now = await resolveData();
    if (now === base) break;
    base = now;
    files = await read(base);
  }
  if (files.size === 0 && base !== dir) files = await read(dir);
  const hash = createHash('sha256');
  for (const [name, content] of [...files].sort(([a], [b]) => a.localeCompare(b))) hash.update(`${name}\0${content}\0`);
  return { dir, files, fingerprint: hash.digest('hex') };
}

/** What a valid cacerts directory yields, before the published bundle is assembled. */
export interface ValidatedCacerts {
  layout: CacertsLayout;
  signingCert: ParsedCertificate;
  privateKey: KeyObject;
  /** Certificates above the signing cert as given in the files (chain file / rest of tls.crt / ca.crt). */
  chain: ParsedCertificate[];
  /** The trust anchors named by the files (root-cert.pem / ca.crt). */
  roots: ParsedCertificate[];
  /** The verified path, signing cert first, root last. */
  path: ParsedCertificate[];
}

function parseCertificates(text: string, file: string): ParsedCertificate[] {
  let blocks;
  try {
    blocks = decodePem(text).filter((b) => b.label === 'CERTIFICATE');
  } catch (error) {
    throw new CacertsError('bad-certificate', file, `${file} is not valid PEM: ${(error as Error).message}`, { cause: error });
  }
  if (blocks.length === 0) throw new CacertsError('bad-certificate', file, `${file} holds no PEM certificate`);
  return blocks.map((block, index) => {
    try {
      return parseCertificate(block.der);
    } catch (error) {
      throw new CacertsError('bad-certificate', file, `${file}: certificate #${index + 1} cannot be parsed: ${(error as Error).message}`, {
        cause: error,
      });
    }
  });
}

function checkValidity(cert: ParsedCertificate, file: string, now: Date, what: string): void {
  if (cert.notAfter < now) {
    throw new CacertsError('expired', file, `${file}: ${what} ${describeCertificate(cert)} expired at ${cert.notAfter.toISOString()}`);
  }
  if (cert.notBefore > now) {
    throw new CacertsError(
      'not-yet-valid',
      file,
      `${file}: ${what} ${describeCertificate(cert)} is not valid before ${cert.notBefore.toISOString()} (check the clock)`,
    );
  }
}

/**
 * Validates a snapshot: all files of one layout present; certificates and key readable; key matches the signing
 * certificate; the signing certificate is a CA allowed to sign certificates; nothing expired; and the chain leads
 * from the signing certificate to a root in the bundle. Throws CacertsError with one line naming the file.
 */
export function validateCacerts(snapshot: CacertsSnapshot, now: Date = new Date()): ValidatedCacerts {
  const { dir, files } = snapshot;
  const shown = (name: string): string => path.join(dir, name);
  let layout: CacertsLayout;
  let names: { cert: string; key: string; chain?: string; roots: string };
  if (files.has(TLS_CACERTS_FILES.cert)) {
    layout = 'cert-manager';
    names = { cert: TLS_CACERTS_FILES.cert, key: TLS_CACERTS_FILES.key, roots: TLS_CACERTS_FILES.ca };
    const missing = [TLS_CACERTS_FILES.key, TLS_CACERTS_FILES.ca].filter((n) => !files.has(n));
    if (missing.length > 0) {
      throw new CacertsError(
        'incomplete',
        shown(missing[0]!),
        `incomplete signing CA bundle in ${dir}: tls.crt is present but ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} missing (the cert-manager layout needs tls.crt, tls.key and ca.crt)`,
      );
    }
  } else {
    layout = 'istio';
    names = { cert: ISTIO_CACERTS_FILES.cert, key: ISTIO_CACERTS_FILES.key, chain: ISTIO_CACERTS_FILES.chain, roots: ISTIO_CACERTS_FILES.roots };
    const required = Object.values(ISTIO_CACERTS_FILES);
    const missing = required.filter((n) => !files.has(n));
    if (missing.length === required.length) {
      throw new CacertsError(
        'empty',
        dir,
        `${dir} holds no CA files: put ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem (or tls.crt, tls.key and ca.crt) there, or use --ca-source self-signed`,
      );
    }
    if (missing.length > 0) {
      throw new CacertsError(
        'incomplete',
        shown(missing[0]!),
        `incomplete signing CA bundle in ${dir}: missing ${missing.join(', ')} (all of ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem are required)`,
      );
    }
  }

  const certFile = shown(names.cert);
  const keyFile = shown(names.key);
  const rootsFile = shown(names.roots);
  const certBlocks = parseCertificates(files.get(names.cert)!, certFile);
  const signingCert = certBlocks[0]!;
  const roots = parseCertificates(files.get(names.roots)!, rootsFile);
  const chainFile = names.chain ? shown(names.chain) : certFile;
  const chainCerts = names.chain ? parseCertificates(files.get(names.chain)!, chainFile) : [];
  // cert-manager: tls.crt carries the chain after the signing cert, and ca.crt may be an intermediate too.
  const chain = [...certBlocks.slice(1), ...chainCerts].filter((c) => !c.der.equals(signingCert.der));

  let privateKey: KeyObject;
  try {
    privateKey = loadPrivateKey(files.get(names.key)!, keyFile);
  } catch (error) {
    throw new CacertsError('bad-key', keyFile, `${keyFile}: ${(error as Error).message}`, { cause: error });
  }
  if (!keysMatch(privateKey, certificatePublicKey(signingCert))) {
    throw new CacertsError('key-mismatch', keyFile, `${keyFile} does not belong to the certificate in ${certFile} (the key and certificate must be a pair)`);
  }
  if (signingCert.basicConstraints?.ca !== true) {
    throw new CacertsError(
      'not-ca',
      certFile,
      `${certFile} is not a CA certificate (basicConstraints CA:true is missing), so it is not authorized to sign other certificates`,
    );
  }
  if (signingCert.keyUsage && !signingCert.keyUsage.includes('keyCertSign')) {
    throw new CacertsError('no-keycertsign', certFile, `${certFile} lacks keyUsage keyCertSign, so it is not authorized to sign other certificates`);
  }
  checkValidity(signingCert, certFile, now, 'the signing CA certificate');
  for (const root of roots) checkValidity(root, rootsFile, now, 'root');
  for (const cert of chain) checkValidity(cert, chainFile, now, 'chain certificate');

  let verified: ParsedCertificate[];
  try {
    verified = verifyChain(signingCert, { intermediates: chain, roots, at: now });
  } catch (error) {
    const chainNote = names.chain ? `${chainFile} does not lead from ${names.cert} to a root in ${names.roots}` : `${certFile} does not chain to a root in ${rootsFile}`;
    throw new CacertsError('chain', chainFile, `${chainNote}: ${(error as Error).message}`, { cause: error });
  }
  return { layout, signingCert, privateKey, chain, roots, path: verified };
}

/**
 * The published bundle after a reload: the new files' roots plus earlier roots that are still trusted.
 * A root is carried over when the new root set replaces the old one entirely (a swap), so workloads holding
 * certificates from the old root keep verifying until it expires. When the admin edits root-cert.pem and some
 * roots remain, a root they removed is honoured as removed.
 */
export function carriedRoots(
  previous: { fileRoots: readonly ParsedCertificate[]; carried: readonly ParsedCertificate[] } | null,
  nextFileRoots: readonly ParsedCertificate[],
  now: Date,
): ParsedCertificate[] {
  if (!previous) return [];
  const inNext = (c: ParsedCertificate): boolean => nextFileRoots.some((r) => r.der.equals(c.der));
  const swapped = !previous.fileRoots.some(inNext);
  const candidates = [...previous.carried, ...(swapped ? previous.fileRoots : [])];
  const seen = new Set<string>();
  return candidates.filter((c) => {
    const key = c.der.toString('base64');
    if (seen.has(key) || inNext(c) || c.notAfter <= now) return false;
    seen.add(key);
    return true;
  });
}

function materialFrom(validated: ValidatedCacerts, carried: readonly ParsedCertificate[], now: Date): CaMaterial {
  return buildCaMaterial({
    signingCert: validated.signingCert,
    privateKey: validated.privateKey,
    chain: validated.path.slice(1),
    roots: [...validated.roots, ...carried],
    now,
  });
}

/** One-shot load and validation (no watching). */
export async function loadCacerts(dir: string, now: Date = new Date()): Promise<{ validated: ValidatedCacerts; material: CaMaterial; snapshot: CacertsSnapshot }> {
  const snapshot = await readCacertsSnapshot(dir);
  const validated = validateCacerts(snapshot, now);
  return { validated, snapshot, material: materialFrom(validated, [], now) };
}

export interface CacertsSourceOptions {
  dir: string;
  logger: Logger;
  /** Debounce of directory events (Kubernetes writes several entries per update). */
  debounceMs?: number;
  /** Safety-net re-read in case a watch event is missed (e.g. the directory itself was replaced). */
  pollIntervalMs?: number;
  /** Gets `meshca_cacerts_reload_errors_total`. */
  registry?: Registry;
  /** Called for every reload that was refused. */
  onReloadError?: (error: CacertsError) => void;
  /** Set false to load once without watching. */
  watch?: boolean;
  /** Time for validity checks and for dropping old roots when they expire; the system clock by default. */
  clock?: Clock;
}

function reloadErrorCounter(registry: Registry | undefined): Counter | undefined {
  if (!registry) return undefined;
  const existing = registry.getSingleMetric(CACERTS_RELOAD_ERRORS_METRIC);
  if (existing instanceof Counter) return existing;
  return new Counter({
    name: CACERTS_RELOAD_ERRORS_METRIC,
    help: 'Reloads of the plugged-in CA directory (ROOT_CA_DIR) that were refused; the previous material stayed in use',
    registers: [registry],
  });
}

/** Keeps a signer in step with the directory. */
class CacertsReloader {
  private watcher: FSWatcher | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private cancelExpiryTimer: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private lastFailed: string | undefined;
  private readonly counter: Counter | undefined;
  private closed = false;

  constructor(
    private readonly signer: ManagedLocalSigner,
    private readonly options: CacertsSourceOptions,
    private state: { fingerprint: string; fileRoots: ParsedCertificate[]; carried: ParsedCertificate[] },
  ) {
    this.counter = reloadErrorCounter(options.registry);
    this.counter?.inc(0);
  }

  private now(): Date {
    return new Date((this.options.clock ?? systemClock).now());
  }

  start(): void {
    this.ensureWatcher();
    const pollMs = this.options.pollIntervalMs ?? 10_000;
    this.pollTimer = setInterval(() => {
      this.ensureWatcher();
      this.trigger(false);
    }, pollMs);
    this.pollTimer.unref();
    this.armExpiryTimer();
  }

  private ensureWatcher(): void {
    if (this.watcher || this.closed) return;
    try {
      this.watcher = watch(this.options.dir, { persistent: false }, () => this.schedule());
      this.watcher.on('error', () => {
        // The directory went away or was replaced; the poll re-creates the watch when it is back.
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch {
      this.watcher = undefined;
    }
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      this.trigger(false);
    }, this.options.debounceMs ?? 100);
    this.debounceTimer.unref();
  }

  /** Runs one reload at a time; a trigger during a reload causes one more pass after it. */
  trigger(force: boolean): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let forceThis = force;
      do {
        this.again = false;
        await this.reloadOnce(forceThis);
        forceThis = false;
      } while (this.again && !this.closed);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async reloadOnce(force: boolean): Promise<void> {
    if (this.closed) return;
    let snapshot: CacertsSnapshot | undefined;
    try {
      snapshot = await readCacertsSnapshot(this.options.dir);
      if (!force && snapshot.fingerprint === this.state.fingerprint) return;
      if (!force && snapshot.fingerprint === this.lastFailed) return;
      const now = this.now();
      const validated = validateCacerts(snapshot, now);
      const carried = carriedRoots(this.state, validated.roots, now);
      const material = materialFrom(validated, carried, now);
      if (this.closed) return;
      const before = this.signer.current();
      this.signer.replace(material);
      this.state = { fingerprint: snapshot.fingerprint, fileRoots: validated.roots, carried };
      this.lastFailed = undefined;
      this.armExpiryTimer();
      const changedIssuer = !before.signingCert.der.equals(material.signingCert.der);
      this.options.logger.info(
        {
          dir: this.options.dir,
          layout: validated.layout,
          signingCertSerial: material.signingCert.serialHex,
          signingCertNotAfter: material.signingCert.notAfter.toISOString(),
          roots: material.roots.map(fingerprint),
          carriedRoots: carried.map(fingerprint),
          issuerChanged: changedIssuer,
        },
        'reloaded the plugged-in CA certificates',
      );
    } catch (error) {
      const failure =
        error instanceof CacertsError
          ? error
          : new CacertsError('unreadable', this.options.dir, `cannot reload ${this.options.dir}: ${(error as Error).message}`, { cause: error });
      this.lastFailed = snapshot?.fingerprint;
      this.counter?.inc();
      this.options.logger.error(
        { dir: this.options.dir, problem: failure.problem, file: failure.file },
        `refused to reload the plugged-in CA certificates, keeping the current ones: ${failure.message}`,
      );
      this.options.onReloadError?.(failure);
    }
  }

  /** Drops carried roots from the bundle when they expire. */
  private armExpiryTimer(): void {
    this.cancelExpiryTimer?.();
    this.cancelExpiryTimer = undefined;
    if (this.state.carried.length === 0 || this.closed) return;
    const earliest = Math.min(...this.state.carried.map((c) => c.notAfter.getTime()));
    // A second past NotAfter, so the reload sees the root as expired on the same clock.
    this.cancelExpiryTimer = timerAt(this.options.clock ?? systemClock, earliest + 1000, () => void this.trigger(true));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    this.cancelExpiryTimer?.();
    if (this.pollTimer) clearInterval(this.pollTimer);
    await this.running;
  }
}

/**
 * Loads the plugged-in CA and (unless `watch: false`) keeps it current. Throws CacertsError (a CaConfigError) with
 * one line naming the file and the problem when the directory cannot be used at start.
 */
export async function openCacertsSigner(options: CacertsSourceOptions): Promise<ManagedLocalSigner> {
  const now = new Date((options.clock ?? systemClock).now());
  const { validated, material, snapshot } = await loadCacerts(options.dir, now);
  const signer = new ManagedLocalSigner('cacerts', material, validated.layout);
  options.logger.info(
    {
      source: 'cacerts',
      dir: options.dir,
      layout: validated.layout,
      signingCertSerial: material.signingCert.serialHex,
      signingCertSubject: material.signingCert.subject,
      signingCertNotAfter: material.signingCert.notAfter.toISOString(),
      chainLength: material.chain.length,
      roots: material.roots.map(fingerprint),
    },
    'loaded the plugged-in CA certificates',
  );
  if (options.watch !== false) {
    const reloader = new CacertsReloader(signer, options, { fingerprint: snapshot.fingerprint, fileRoots: validated.roots, carried: [] });
    reloader.start();
    signer.addCleanup(() => reloader.close());
  }
  return signer;
}
