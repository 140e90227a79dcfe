/**
 * The embedded default key source: a self-signed root created on first start and persisted in the state
 * directory (ca-cert.pem, ca-key.pem 0600, root-cert.pem). On restart the same root is loaded; a partial or
 * inconsistent set is refused and never overwritten, because overwriting would silently break every workload.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  exportPrivateKeyPem,
  generateKeyPairForAsync,
  isPkiError,
  loadPrivateKey,
  parseCertificate,
  type KeySpec,
  type ParsedCertificate,
} from '../pki/index.js';
import { ensurePrivateDirectory, writeFileAtomic } from '../util/fs.js';
import { CaConfigError } from './errors.js';
import { LocalSigner } from './local-signer.js';
import { buildCaMaterial, type CaMaterial } from './material.js';

export const SELF_SIGNED_FILES = {
  cert: 'ca-cert.pem',
  key: 'ca-key.pem',
  roots: 'root-cert.pem',
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

async function readIfPresent(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CaConfigError(`cannot read ${file}: ${(error as Error).message}`);
  }
}

/** Creates a new self-signed root key pair and certificate (not persisted). */
export async function createSelfSignedRoot(options: SelfSignedOptions): Promise<{ certPem: string; keyPem: string; material: CaMaterial }> {
  const now = options.now?.() ?? Date.now();
  const keys = await generateKeyPairForAsync(options.keySpec);
  const der = createCaCertificate({
    subject: { organization: options.organization ?? options.trustDomain },
    subjectKey: keys.privateKey,
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
 * Loads the root from `stateDir`, or creates and persists one when none of the files exist.
 * Throws CaConfigError (one line, names the file and the fix) on partial or inconsistent state.
 */
export async function loadOrCreateSelfSignedCa(options: SelfSignedOptions): Promise<SelfSignedResult> {
  const files = {
    cert: path.join(options.stateDir, SELF_SIGNED_FILES.cert),
    key: path.join(options.stateDir, SELF_SIGNED_FILES.key),
    roots: path.join(options.stateDir, SELF_SIGNED_FILES.roots),
  };
  try {
    await ensurePrivateDirectory(options.stateDir);
  } catch (error) {
    throw new CaConfigError(`cannot create state directory ${options.stateDir}: ${(error as Error).message} (set --state-dir to a writable directory)`);
  }
  const [certPem, keyPem, rootsPem] = await Promise.all([readIfPresent(files.cert), readIfPresent(files.key), readIfPresent(files.roots)]);
  const present = [certPem, keyPem, rootsPem].filter((v) => v !== null).length;
  if (present === 0) {
    const created = await createSelfSignedRoot(options);
    // Key first: a crash after it leaves a partial set that is refused (never silently replaced).
    await writeFileAtomic(files.key, created.keyPem, 0o600);
    await writeFileAtomic(files.cert, created.certPem, 0o644);
    await writeFileAtomic(files.roots, created.certPem, 0o644);
    return { signer: new LocalSigner('self-signed', created.material), created: true, files };
  }
  if (present < 3) {
    const named: [string, string | null][] = [
      [SELF_SIGNED_FILES.cert, certPem],
      [SELF_SIGNED_FILES.key, keyPem],
      [SELF_SIGNED_FILES.roots, rootsPem],
    ];
    const missing = named.filter(([, content]) => content === null).map(([name]) => name);
    throw new CaConfigError(
      `self-signed CA state in ${options.stateDir} is incomplete (missing ${missing.join(', ')}); restore the missing files, or move the directory away to create a new root (every workload will then need new certificates)`,
    );
  }
  return { signer: new LocalSigner('self-signed', loadSelfSignedMaterial(files, certPem!, keyPem!, rootsPem!, options)), created: false, files };
}

function loadSelfSignedMaterial(
  files: { cert: string; key: string; roots: string },
  certPem: string,
  keyPem: string,
  rootsPem: string,
  options: SelfSignedOptions,
): CaMaterial {
  let cert: ParsedCertificate;
  let roots: ParsedCertificate[];
  try {
    const certs = certificatesFromPem(certPem);
    if (certs.length === 0) throw new Error('no CERTIFICATE block');
    cert = parseCertificate(certs[0]!);
  } catch (error) {
    throw new CaConfigError(`${files.cert} is not a readable PEM certificate: ${(error as Error).message}`);
  }
  try {
    roots = certificatesFromPem(rootsPem).map(parseCertificate);
    if (roots.length === 0) throw new Error('no CERTIFICATE block');
  } catch (error) {
    throw new CaConfigError(`${files.roots} is not a readable PEM certificate bundle: ${(error as Error).message}`);
  }
  let key;
  try {
    key = loadPrivateKey(keyPem, files.key);
  } catch (error) {
    throw new CaConfigError(`${files.key}: ${(error as Error).message}`);
  }
  try {
    return buildCaMaterial({ signingCert: cert, privateKey: key, chain: [], roots, now: new Date(options.now?.() ?? Date.now()) });
  } catch (error) {
    const detail = isPkiError(error) ? error.message : String(error);
    throw new CaConfigError(`self-signed CA in ${options.stateDir} is unusable: ${detail} (${files.key} must belong to ${files.cert}, which must be in ${files.roots})`);
  }
}
