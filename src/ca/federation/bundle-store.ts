/**
 * Federated bundles on disk: a bundle file an admin gives (SPIFFE bundle JSON or PEM), and the last good bundle
 * of each federated trust domain kept in `<state-dir>/federation/<trust-domain>.json`.
 *
 * A persisted file is the SPIFFE bundle document plus one member of meshca's own, `meshca`, saying where the
 * bundle came from (`endpoint`: fetched; `set`: `meshca bundle set`) and when. A JWK Set may carry members its
 * readers do not know (RFC 7517, section 5), so the file stays a bundle any SPIFFE tool reads. Bundles are public:
 * the files are written 0644, atomically (a reader sees the old file or the new one).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  certificatesFromPem,
  formatSpiffeBundle,
  MAX_BUNDLE_BYTES,
  parseCertificate,
  parseSpiffeBundle,
  spiffeBundleOf,
  validateTrustDomain,
  type SpiffeBundle,
} from '../../pki/index.js';
import { writeFileAtomic } from '../../util/fs.js';

export type PersistedOrigin = 'endpoint' | 'set';

export interface PersistedBundle {
  bundle: SpiffeBundle;
  origin: PersistedOrigin;
  updatedAt: Date;
  /** The file as read, to tell a later change from this one. */
  text: string;
}

export const BUNDLE_FILE_MODE = 0o644;
/** How often a running CA re-reads static bundle files and the persisted bundles (for `meshca bundle set`). */
export const FILE_CHECK_INTERVAL_MS = 5000;

/**
 * A bundle file for `trustDomain`: SPIFFE bundle JSON (checked as strictly as a fetched one), or PEM certificates,
 * each of which must be a CA certificate. Throws PkiError ERR_BUNDLE naming what is wrong.
 */
export function parseBundleFile(trustDomain: string, content: string | Buffer): SpiffeBundle {
  const text = typeof content === 'string' ? content : content.toString('utf8');
  if (text.trimStart().startsWith('{') || !text.includes('-----BEGIN')) return parseSpiffeBundle(trustDomain, text);
  const ders = certificatesFromPem(text);
  const certs = ders.map((der) => parseCertificate(der));
  // Through the document form, so a PEM file meets the same rules as JSON (no authority of another trust domain).
  return parseSpiffeBundle(trustDomain, formatSpiffeBundle(spiffeBundleOf(trustDomain, certs)));
}

/** Reads a bundle file (at most MAX_BUNDLE_BYTES) with errors that name the file. */
export async function readBundleFile(trustDomain: string, file: string): Promise<SpiffeBundle> {
  const text = await readBounded(file);
  try {
    return parseBundleFile(trustDomain, text);
  } catch (error) {
    throw new Error(`${file}: ${(error as Error).message}`);
  }
}

/** The file's text; refuses one larger than any bundle could be without reading it whole. */
export async function readBounded(file: string): Promise<string> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    if (size > MAX_BUNDLE_BYTES) throw new Error(`${file} is ${size} bytes, more than the ${MAX_BUNDLE_BYTES} a bundle may have`);
    return (await handle.readFile()).toString('utf8');
  } finally {
    await handle.close();
  }
}

export function federationDir(stateDir: string): string {
  return path.join(stateDir, 'federation');
}

export function persistedBundlePath(stateDir: string, trustDomain: string): string {
  // A validated trust domain has no "/" and is not "." or "..": it names a file inside the directory.
  validateTrustDomain(trustDomain);
  if (trustDomain === '.' || trustDomain === '..') throw new Error(`"${trustDomain}" is not a trust domain`);
  return path.join(federationDir(stateDir), `${trustDomain}.json`);
}

/** The text a persisted bundle is written as. */
export function persistedText(bundle: SpiffeBundle, origin: PersistedOrigin, updatedAt: Date): string {
  const document = JSON.parse(formatSpiffeBundle(bundle)) as Record<string, unknown>;
  return `${JSON.stringify({ ...document, meshca: { origin, updated_at: updatedAt.toISOString() } }, null, 2)}\n`;
}

/** Writes the persisted bundle (creating the directory); returns the text written. */
export async function writePersistedBundle(stateDir: string, bundle: SpiffeBundle, origin: PersistedOrigin, updatedAt: Date): Promise<string> {
  const target = persistedBundlePath(stateDir, bundle.trustDomain);
  // The state directory holds keys: create it private if it is missing; the federation folder is public data.
  await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
  await fs.mkdir(federationDir(stateDir), { recursive: true, mode: 0o755 });
  const text = persistedText(bundle, origin, updatedAt);
  await writeFileAtomic(target, text, BUNDLE_FILE_MODE);
  return text;
}

function metaOf(text: string, fallbackTime: Date): { origin: PersistedOrigin; updatedAt: Date } {
  let meta: unknown;
  try {
    meta = (JSON.parse(text) as Record<string, unknown>).meshca;
  } catch {
    meta = undefined;
  }
  const record = typeof meta === 'object' && meta !== null ? (meta as Record<string, unknown>) : {};
  const origin: PersistedOrigin = record.origin === 'endpoint' ? 'endpoint' : 'set';
  const time = typeof record.updated_at === 'string' ? new Date(record.updated_at) : fallbackTime;
  return { origin, updatedAt: Number.isNaN(time.getTime()) ? fallbackTime : time };
}

/**
 * The persisted bundle of `trustDomain`, undefined when there is none. A file copied there by hand (no `meshca`
 * member) counts as set by the admin, updated when the file was written. Throws when the file is unreadable or not
 * a valid bundle of that trust domain.
 */
export async function readPersistedBundle(stateDir: string, trustDomain: string): Promise<PersistedBundle | undefined> {
  const file = persistedBundlePath(stateDir, trustDomain);
  let text: string;
  let mtime: Date;
  try {
    mtime = (await fs.stat(file)).mtime;
    text = await readBounded(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  let bundle: SpiffeBundle;
  try {
    bundle = parseBundleFile(trustDomain, text);
  } catch (error) {
    throw new Error(`${file}: ${(error as Error).message}`);
  }
  return { bundle, ...metaOf(text, mtime), text };
}

/** Every `<trust-domain>.json` in the federation directory, read and checked; a bad one is listed with its error. */
export async function listPersistedBundles(stateDir: string): Promise<({ trustDomain: string } & ({ persisted: PersistedBundle } | { error: string }))[]> {
  let names: string[];
  try {
    names = await fs.readdir(federationDir(stateDir));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const result: ({ trustDomain: string } & ({ persisted: PersistedBundle } | { error: string }))[] = [];
  for (const name of names.filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort()) {
    const trustDomain = name.slice(0, -'.json'.length);
    try {
      const persisted = await readPersistedBundle(stateDir, trustDomain);
      if (persisted) result.push({ trustDomain, persisted });
    } catch (error) {
      result.push({ trustDomain, error: (error as Error).message });
    }
  }
  return result;
}
