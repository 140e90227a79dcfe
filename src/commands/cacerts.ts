/**
 * `meshca cacerts`: an offline root and per-cluster intermediates in Istio's `cacerts` layout, ready for
 * `kubectl create secret generic cacerts -n istio-system --from-file=DIR` (instead of the openssl Makefiles).
 *
 *   meshca cacerts root --out DIR [--key rsa-4096] [--ttl 3650d] [--org Istio]
 *     → DIR/root-cert.pem, DIR/root-key.pem (0600)
 *   meshca cacerts intermediate --root DIR --out DIR --cluster NAME [--key rsa-4096] [--ttl 730d] [--org Istio]
 *     → DIR/ca-cert.pem, DIR/ca-key.pem (0600), DIR/cert-chain.pem, DIR/root-cert.pem
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { loadCacerts } from '../ca/sources/cacerts/cacerts.js';
import { fingerprint } from '../ca/material.js';
import { ConfigError, durationExpectation, parseDurationSeconds } from '../config/env.js';
import {
  certificatePublicKey,
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  exportPrivateKeyPem,
  generateKeyPairForAsync,
  keysMatch,
  loadPrivateKey,
  parseCertificate,
  parseKeySpec,
  type KeySpec,
  type ParsedCertificate,
} from '../pki/index.js';
import { ensurePrivateDirectory, fileExists, writeFileAtomic } from '../util/fs.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

const ROOT_FILES = { cert: 'root-cert.pem', key: 'root-key.pem' } as const;

/** A refusal of the files or keys at hand; a bad flag value is a ConfigError instead (exit 2, a usage error). */
class CacertsCommandError extends Error {}

function keySpecOf(text: string): KeySpec {
  try {
    return parseKeySpec(text);
  } catch (error) {
    throw new ConfigError(`invalid --key "${text}": ${(error as Error).message}`);
  }
}

function ttlOf(text: string): number {
  const seconds = parseDurationSeconds(text);
  if (seconds === null && /^\s*\d+(\.\d+)?\s*$/.test(text)) throw new ConfigError(`invalid --ttl "${text}": expected ${durationExpectation(text)}`);
  if (seconds === null || seconds < 60) throw new ConfigError(`invalid --ttl "${text}": expected a duration of at least 1m, such as 3650d or 8760h`);
  return seconds;
}

async function refuseOverwrite(dir: string, names: readonly string[], force: boolean | undefined): Promise<void> {
  if (force) return;
  for (const name of names) {
    const file = path.join(dir, name);
    if (await fileExists(file)) throw new CacertsCommandError(`${file} already exists; choose another --out, or pass --force to replace it (anything signed by the old key stops verifying)`);
  }
}

async function readRoot(dir: string): Promise<{ cert: ParsedCertificate; certPem: string; key: ReturnType<typeof loadPrivateKey> }> {
  const certFile = path.join(dir, ROOT_FILES.cert);
  const keyFile = path.join(dir, ROOT_FILES.key);
  let certPem: string;
  let keyPem: string;
  try {
    [certPem, keyPem] = await Promise.all([fs.readFile(certFile, 'utf8'), fs.readFile(keyFile, 'utf8')]);
  } catch (error) {
    throw new CacertsCommandError(`cannot read the root in ${dir}: ${(error as Error).message} (make one with: meshca cacerts root --out ${dir})`);
  }
  let cert: ParsedCertificate;
  try {
    const [der] = certificatesFromPem(certPem);
    if (!der) throw new Error('no CERTIFICATE block');
    cert = parseCertificate(der);
  } catch (error) {
    throw new CacertsCommandError(`${certFile} is not a PEM certificate: ${(error as Error).message}`);
  }
  let key;
  try {
    key = loadPrivateKey(keyPem, keyFile);
  } catch (error) {
    throw new CacertsCommandError((error as Error).message);
  }
  if (!keysMatch(key, certificatePublicKey(cert))) throw new CacertsCommandError(`${keyFile} does not belong to ${certFile}`);
  if (cert.basicConstraints?.ca !== true) throw new CacertsCommandError(`${certFile} is not a CA certificate`);
  if (cert.notAfter.getTime() <= Date.now()) throw new CacertsCommandError(`${certFile} expired at ${cert.notAfter.toISOString()}`);
  return { cert, certPem: certificateToPem(cert.der), key };
}

interface RootOptions {
  out: string;
  key: string;
  ttl: string;
  org: string;
  force?: boolean;
}

interface IntermediateOptions extends RootOptions {
  root: string;
  cluster: string;
}

async function createRootCa(options: RootOptions): Promise<{ certFile: string; keyFile: string; cert: ParsedCertificate }> {
  const spec = keySpecOf(options.key);
  const ttlSeconds = ttlOf(options.ttl);
  await ensurePrivateDirectory(options.out);
  await refuseOverwrite(options.out, [ROOT_FILES.cert, ROOT_FILES.key], options.force);
  const keys = await generateKeyPairForAsync(spec);
  const der = createCaCertificate({
    subject: { organization: options.org, commonName: 'Root CA' },
    subjectKey: keys.privateKey,
    notAfter: new Date(Date.now() + ttlSeconds * 1000),
  });
  const certFile = path.join(options.out, ROOT_FILES.cert);
  const keyFile = path.join(options.out, ROOT_FILES.key);
  await writeFileAtomic(keyFile, exportPrivateKeyPem(keys.privateKey), 0o600);
  await writeFileAtomic(certFile, certificateToPem(der), 0o644);
  return { certFile, keyFile, cert: parseCertificate(der) };
}

async function createIntermediateCa(options: IntermediateOptions): Promise<{ dir: string; cert: ParsedCertificate; clamped: boolean }> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(options.cluster)) {
    throw new ConfigError(`invalid --cluster "${options.cluster}": use letters, digits, '.', '_' and '-'`);
  }
  if (path.resolve(options.out) === path.resolve(options.root)) {
    throw new ConfigError('--out must not be the --root directory: the cacerts Secret would then carry the root key');
  }
  const spec = keySpecOf(options.key);
  const ttlSeconds = ttlOf(options.ttl);
  const root = await readRoot(options.root);
  await ensurePrivateDirectory(options.out);
  const names = ['ca-cert.pem', 'ca-key.pem', 'cert-chain.pem', 'root-cert.pem'];
  await refuseOverwrite(options.out, names, options.force);
  const keys = await generateKeyPairForAsync(spec);
  const wanted = new Date(Date.now() + ttlSeconds * 1000);
  // pathLen 0: the cluster CA signs workloads, never further CAs.
  const der = createCaCertificate({
    subject: { organization: options.org, commonName: `Intermediate CA ${options.cluster}` },
    subjectKey: keys.publicKey,
    issuer: { certificate: root.cert, privateKey: root.key },
    notAfter: wanted,
    pathLen: 0,
  });
  const cert = parseCertificate(der);
  const certPem = certificateToPem(der);
  const dir = options.out;
  await writeFileAtomic(path.join(dir, 'ca-key.pem'), exportPrivateKeyPem(keys.privateKey), 0o600);
  await writeFileAtomic(path.join(dir, 'ca-cert.pem'), certPem, 0o644);
  await writeFileAtomic(path.join(dir, 'cert-chain.pem'), certPem + root.certPem, 0o644);
  await writeFileAtomic(path.join(dir, 'root-cert.pem'), root.certPem, 0o644);
  // The same validation the CA runs at start, so a directory this command writes is known to load.
  await loadCacerts(dir);
  return { dir, cert, clamped: cert.notAfter.getTime() < wanted.getTime() - 1000 };
}

const describe = (cert: ParsedCertificate): string => `${cert.subject}, expires ${cert.notAfter.toISOString()}, sha256 ${fingerprint(cert)}`;

/** The options both kinds of CA take, after their own: the same key types, subject and overwrite rule. */
function addCaOptions(command: Command, ttl: { help: string; default: string }): Command {
  return command
    .option('--key <type>', 'key type: rsa-2048 | rsa-3072 | rsa-4096 | ec-p256 | ec-p384', 'rsa-4096')
    .option('--ttl <duration>', ttl.help, ttl.default)
    .option('--org <name>', 'organization in the subject', 'Istio')
    .option('--force', 'replace existing files');
}

export function registerCacertsCommand(program: Command): void {
  const cacerts = program.command('cacerts').description(COMMAND_DESCRIPTIONS.cacerts);
  const root = cacerts
    .command('root')
    .description('create a root CA: root-cert.pem and root-key.pem (0600); keep the key offline')
    .requiredOption('--out <dir>', 'output directory');
  addCaOptions(root, { help: 'lifetime', default: '3650d' }).action(async (options: RootOptions) => {
    const result = await createRootCa(options);
    process.stdout.write(
      [
        `wrote ${result.certFile} and ${result.keyFile} (0600)`,
        `  root: ${describe(result.cert)}`,
        `  next: meshca cacerts intermediate --root ${options.out} --out <dir> --cluster <name>`,
        '',
      ].join('\n'),
    );
  });
  const intermediate = cacerts
    .command('intermediate')
    .description('create a cluster CA signed by the root: ca-cert.pem, ca-key.pem (0600), cert-chain.pem, root-cert.pem')
    .requiredOption('--root <dir>', 'directory holding root-cert.pem and root-key.pem')
    .requiredOption('--out <dir>', 'output directory (becomes the cacerts Secret)')
    .requiredOption('--cluster <name>', 'cluster name, put in the subject');
  addCaOptions(intermediate, { help: 'lifetime (capped at the root expiry)', default: '730d' }).action(async (options: IntermediateOptions) => {
    const result = await createIntermediateCa(options);
    process.stdout.write(
      [
        `wrote ${path.join(result.dir, 'ca-cert.pem')}, ca-key.pem (0600), cert-chain.pem and root-cert.pem`,
        `  signing CA: ${describe(result.cert)}${result.clamped ? ' (capped at the root expiry)' : ''}`,
        `  next: kubectl create secret generic cacerts -n istio-system --from-file=${result.dir}`,
        '',
      ].join('\n'),
    );
  });
}
