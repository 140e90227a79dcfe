/**
 * Helpers for the key-source tests (cacerts, Vault, rotation, Kubernetes store): CA fixtures made with
 * @peculiar/x509 (independent of meshca's PKI code), the Istio and cert-manager directory layouts, a Kubernetes
 * Secret-volume writer (`..data` symlink swap), and starting `meshca ca` for real.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { CA_KEY_USAGE, generateKeyPair, issueCert, makeSelfSignedCa, privateKeyPem, x509, certPem, type CaMaterial, type KeyAlg } from './standins/pki.js';
import { cleanEnv } from './ca-helpers.js';
import { startMeshca, type LogRecord, type MeshcaProcess } from './support/process.js';

export { cleanEnv };

export interface Fixture extends CaMaterial {
  keyPem: string;
}

const HOUR = 3600_000;

async function withKey(material: CaMaterial): Promise<Fixture> {
  return { ...material, keyPem: await privateKeyPem(material.keys.privateKey, 'traditional') };
}

export async function makeRoot(name: string, alg: KeyAlg, options: { notBefore?: Date; notAfter?: Date } = {}): Promise<Fixture> {
  const now = Date.now();
  return withKey(await makeSelfSignedCa(name, alg, options.notBefore ?? new Date(now - HOUR), options.notAfter ?? new Date(now + 240 * HOUR)));
}

/** A CA certificate signed by `parent`; `keyUsage`/`ca` overridable to make broken fixtures. */
export async function makeSubCa(
  name: string,
  alg: KeyAlg,
  parent: CaMaterial,
  options: { notBefore?: Date; notAfter?: Date; keyUsage?: number; ca?: boolean } = {},
): Promise<Fixture> {
  const now = Date.now();
  const keys = await generateKeyPair(alg);
  const cert = await issueCert(
    {
      subject: `CN=${name}`,
      publicKey: keys.publicKey,
      notBefore: options.notBefore ?? new Date(now - HOUR),
      notAfter: options.notAfter ?? new Date(now + 120 * HOUR),
      ...(options.ca === false ? {} : { ca: {} }),
      keyUsage: options.keyUsage ?? CA_KEY_USAGE,
    },
    parent,
  );
  return withKey({ cert, pem: certPem(cert), keys });
}

export { x509 };

export interface ChainFixture {
  root: Fixture;
  /** Between root and signing CA in 3-level chains. */
  intermediate?: Fixture;
  signing: Fixture;
}

export async function makeChain(alg: KeyAlg, levels: 2 | 3, label = 'test'): Promise<ChainFixture> {
  const root = await makeRoot(`${label} root`, alg);
  if (levels === 2) return { root, signing: await makeSubCa(`${label} signing CA`, alg, root) };
  const intermediate = await makeSubCa(`${label} intermediate`, alg, root);
  return { root, intermediate, signing: await makeSubCa(`${label} signing CA`, alg, intermediate) };
}

const pem = (text: string): string => `${text.trim()}\n`;

/** Istio cacerts files: ca-cert.pem, ca-key.pem, cert-chain.pem (signing → root), root-cert.pem. */
export function istioFiles(chain: ChainFixture, rootsPem?: string): Record<string, string> {
  const chainPems = [chain.signing.pem, ...(chain.intermediate ? [chain.intermediate.pem] : []), chain.root.pem].map(pem).join('');
  return {
    'ca-cert.pem': pem(chain.signing.pem),
    'ca-key.pem': pem(chain.signing.keyPem),
    'cert-chain.pem': chainPems,
    'root-cert.pem': rootsPem ?? pem(chain.root.pem),
  };
}

/** cert-manager files: tls.crt (signing cert + intermediates), tls.key, ca.crt (root). */
export function certManagerFiles(chain: ChainFixture): Record<string, string> {
  return {
    'tls.crt': [chain.signing.pem, ...(chain.intermediate ? [chain.intermediate.pem] : [])].map(pem).join(''),
    'tls.key': pem(chain.signing.keyPem),
    'ca.crt': pem(chain.root.pem),
  };
}

export async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) await fs.writeFile(path.join(dir, name), content, { mode: name.includes('key') ? 0o600 : 0o644 });
}

let generation = 0;

/**
 * Writes `files` the way the kubelet updates a Secret volume: a new timestamped directory, a `..data_tmp`
 * symlink to it renamed over `..data` (the atomic switch), per-file symlinks into `..data`, old directory removed.
 */
export async function writeSecretVolume(dir: string, files: Record<string, string>): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  const stamp = `..${new Date().toISOString().replace(/[-:.TZ]/g, '_')}${process.pid}_${generation++}`;
  const target = path.join(dir, stamp);
  await fs.mkdir(target);
  for (const [name, content] of Object.entries(files)) await fs.writeFile(path.join(target, name), content, { mode: 0o644 });
  let previous: string | undefined;
  try {
    previous = await fs.readlink(path.join(dir, '..data'));
  } catch {
    previous = undefined;
  }
  await fs.symlink(stamp, path.join(dir, '..data_tmp'));
  await fs.rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  for (const name of Object.keys(files)) {
    try {
      await fs.symlink(path.join('..data', name), path.join(dir, name));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
  if (previous) await fs.rm(path.join(dir, previous), { recursive: true, force: true });
}

export interface StartedCa {
  proc: MeshcaProcess;
  ready: LogRecord;
  grpcAddress: string;
}

/** `meshca ca` on ephemeral ports; waits for "CA server ready" (or rejects with the process output). */
export async function startCaProcess(args: string[], env: NodeJS.ProcessEnv = {}): Promise<StartedCa> {
  const proc = startMeshca(['ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', ...args], { env: cleanEnv(env) });
  try {
    const ready = await proc.waitForLog(/^CA server ready$/, 40_000);
    return { proc, ready, grpcAddress: String(ready.grpcAddress) };
  } catch (error) {
    await proc.stop('SIGKILL');
    throw error;
  }
}

/** Runs `meshca ca` expecting a start-up failure; resolves with the exit code and stderr. */
export async function expectStartFailure(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stderr: string }> {
  const proc = startMeshca(['ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', ...args], { env: cleanEnv(env) });
  const timer = setTimeout(() => void proc.stop('SIGKILL'), 30_000);
  const code = await proc.exited;
  clearTimeout(timer);
  return { code, stderr: proc.lines.filter((l) => l.startsWith('meshca: ')).join('\n') || proc.lines.join('\n') };
}

// In a module of their own, so that a test needing only these does not load what this file imports.
export { eventually, sleep } from './support/eventually.js';
