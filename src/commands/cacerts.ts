/**
 * `meshca cacerts`: an offline root and per-cluster intermediates in Istio's `cacerts` layout, ready for
 * `kubectl create secret generic cacerts -n istio-system --from-file=DIR` (instead of the openssl Makefiles).
 *
 *   meshca cacerts root --out DIR [--key rsa-4096] [--ttl 3650d] [--org Istio]
 *     → DIR/root-cert.pem, DIR/root-key.pem (0600)
 *   meshca cacerts intermediate --root DIR --out DIR --cluster NAME [--key rsa-4096] [--ttl 730d] [--org Istio]
 *     → DIR/ca-cert.pem, DIR/ca-key.pem (0600), DIR/cert-chain.pem, DIR/root-cert.pem
 *
 * With `--pkcs11-module/--pkcs11-token-label/--pkcs11-key-label` the new CA's key is generated inside a PKCS#11
 * token (private, sensitive, never extractable) and signs there: no *-key.pem is written, only certificates. With
 * `--root-pkcs11-key-label` an intermediate is signed by a root whose key is in the (same) token.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { KeyObject } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import type { Command } from 'commander';
import { loadCacerts } from '../ca/sources/cacerts/cacerts.js';
import { signCaCertificateInToken } from '../ca/sources/pkcs11/ca-certificate.js';
import { generatePkcs11KeyPair } from '../ca/sources/pkcs11/keygen.js';
import { openPkcs11Key, type Pkcs11Key, type Pkcs11KeyConfig } from '../ca/sources/pkcs11/pkcs11-key.js';
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
  spkiDer,
  verifyPemChain,
  type CaCertificateOptions,
  type KeySpec,
  type ParsedCertificate,
  validateTrustDomain,
} from '../pki/index.js';
import { ensurePrivateDirectory, fileExists, writeFileAtomic } from '../util/fs.js';
import { shellQuote as q } from '../util/shell.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

const ROOT_FILES = { cert: 'root-cert.pem', key: 'root-key.pem' } as const;
/** The environment variable the token's PIN is read from when no --pkcs11-pin-file is given. */
const PIN_ENV = 'MESHCA_PKCS11_PIN';

/** The trust domain intermediates name when none is given: Istio's and `meshca ca --trust-domain`'s default. */
const DEFAULT_TRUST_DOMAIN = 'cluster.local';

/** A refusal of the files or keys at hand; a bad flag value is a ConfigError instead (exit 2, a usage error). */
class CacertsCommandError extends Error {}

function keySpecOf(text: string): KeySpec {
  try {
    return parseKeySpec(text);
  } catch (error) {
    throw new ConfigError(`invalid --key "${text}": ${(error as Error).message}`);
  }
}

/**
 * The CA certificate's SPIFFE ID, `spiffe://<trust domain>` (no path): the X.509-SVID standard says a signing
 * certificate SHOULD be an SVID of the trust domain it issues in, so SPIFFE tools and federated peers can tell whose
 * bundle it is. None when no trust domain is given (a root shared by several trust domains).
 */
function caSpiffeIds(trustDomain: string | undefined): string[] {
  if (trustDomain === undefined) return [];
  try {
    return [`spiffe://${validateTrustDomain(trustDomain)}`];
  } catch (error) {
    throw new ConfigError(`invalid --trust-domain "${trustDomain}": ${(error as Error).message}`);
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

/** A key file beside certificates whose key is in a token would belong to another CA: refused even with --force. */
async function refuseStrayKey(dir: string, name: string): Promise<void> {
  const file = path.join(dir, name);
  if (await fileExists(file)) {
    throw new CacertsCommandError(`${file} exists, but this CA's key is in the token and no ${name} is written; choose another --out (the old key file belongs to another CA)`);
  }
}

/**
 * Runs `make` with the output directory created (0700). A directory this run created is removed again, if still
 * empty, when `make` fails: a wrong PIN or a taken label leaves nothing behind.
 */
async function inOutDir<T>(dir: string, make: () => Promise<T>): Promise<T> {
  const existed = await fileExists(dir);
  await ensurePrivateDirectory(dir);
  try {
    return await make();
  } catch (error) {
    if (!existed) await fs.rmdir(dir).catch(() => undefined);
    throw error;
  }
}

interface Pkcs11Flags {
  pkcs11Module?: string;
  pkcs11TokenLabel?: string;
  pkcs11KeyLabel?: string;
  pkcs11KeyId?: string;
  pkcs11PinFile?: string;
}

/** The token every --pkcs11-* key of one run is in: module, token and PIN source. */
type TokenSettings = Pick<Pkcs11KeyConfig, 'modulePath' | 'tokenLabel' | 'pinFile' | 'pinEnv'>;

/** A key in the token, named by label and CKA_ID (hex). */
interface TokenKeyName {
  label?: string;
  idHex?: string;
}

function keyIdOf(flag: string, text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const hex = text.replace(/^0x/i, '').replace(/:/g, '').toLowerCase();
  if (!/^([0-9a-f]{2})+$/.test(hex)) throw new ConfigError(`invalid ${flag} "${text}": expected hex bytes, such as 01 or a1b2c3`);
  return hex;
}

/**
 * The token settings when any key of this run is in a token (`wanted`), checked before anything is generated:
 * the module and token label are then needed, the PIN comes from --pkcs11-pin-file or MESHCA_PKCS11_PIN.
 */
function tokenSettingsOf(flags: Pkcs11Flags, wanted: boolean, why: string): TokenSettings | undefined {
  if (!wanted) {
    const given = { '--pkcs11-module': flags.pkcs11Module, '--pkcs11-token-label': flags.pkcs11TokenLabel, '--pkcs11-pin-file': flags.pkcs11PinFile };
    const stray = Object.entries(given).find(([, value]) => value !== undefined);
    if (stray) throw new ConfigError(`${stray[0]} is given but no key is in a token: ${why}`);
    return undefined;
  }
  if (flags.pkcs11Module === undefined) throw new ConfigError('--pkcs11-module is missing: the path of the token\'s PKCS#11 library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)');
  if (flags.pkcs11TokenLabel === undefined) throw new ConfigError('--pkcs11-token-label is missing: the label the token was initialised with');
  if (flags.pkcs11PinFile !== undefined) return { modulePath: flags.pkcs11Module, tokenLabel: flags.pkcs11TokenLabel, pinFile: flags.pkcs11PinFile };
  if (!process.env.MESHCA_PKCS11_PIN) {
    throw new ConfigError(`no PIN for token "${flags.pkcs11TokenLabel}": set ${PIN_ENV} or pass --pkcs11-pin-file <file> (the PIN is never a flag, which ps would show)`);
  }
  return { modulePath: flags.pkcs11Module, tokenLabel: flags.pkcs11TokenLabel, pinEnv: PIN_ENV };
}

/** The key a run generates in the token: --pkcs11-key-label, and --pkcs11-key-id or 8 random bytes. */
function newTokenKeyOf(flags: Pkcs11Flags): { label: string; idHex: string } | undefined {
  const idHex = keyIdOf('--pkcs11-key-id', flags.pkcs11KeyId);
  if (flags.pkcs11KeyLabel === undefined) {
    if (idHex !== undefined) throw new ConfigError('--pkcs11-key-id needs --pkcs11-key-label: the new key is made with both');
    return undefined;
  }
  if (flags.pkcs11KeyLabel === '') throw new ConfigError('invalid --pkcs11-key-label "": give the new key a label');
  return { label: flags.pkcs11KeyLabel, idHex: idHex ?? randomBytes(8).toString('hex') };
}

const describeTokenKey = (settings: TokenSettings, key: Pkcs11Key): string =>
  `token "${settings.tokenLabel}", key label "${key.facts.label}", id ${key.facts.idHex || 'none'}`;

/** Generates the pair in the token (refused when the label or id is taken) and opens it to sign with or read. */
async function generateInToken(settings: TokenSettings, name: { label: string; idHex: string }, spec: KeySpec): Promise<Pkcs11Key> {
  await generatePkcs11KeyPair({ ...settings, keyLabel: name.label, keyIdHex: name.idHex, spec });
  return openPkcs11Key({ ...settings, keyLabel: name.label, keyIdHex: name.idHex });
}

async function readRootCertificate(dir: string): Promise<{ cert: ParsedCertificate; certPem: string; certFile: string }> {
  const certFile = path.join(dir, ROOT_FILES.cert);
  let certPem: string;
  try {
    certPem = await fs.readFile(certFile, 'utf8');
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
  if (cert.basicConstraints?.ca !== true) throw new CacertsCommandError(`${certFile} is not a CA certificate`);
  if (cert.notAfter.getTime() <= Date.now()) throw new CacertsCommandError(`${certFile} expired at ${cert.notAfter.toISOString()}`);
  return { cert, certPem: certificateToPem(cert.der), certFile };
}

async function readRootKeyFile(dir: string, certFile: string, cert: ParsedCertificate): Promise<KeyObject> {
  const keyFile = path.join(dir, ROOT_FILES.key);
  let keyPem: string;
  try {
    keyPem = await fs.readFile(keyFile, 'utf8');
  } catch (error) {
    throw new CacertsCommandError(
      `cannot read the root in ${dir}: ${(error as Error).message} (make one with: meshca cacerts root --out ${dir}; if the root key is in a token, pass --root-pkcs11-key-label)`,
    );
  }
  let key;
  try {
    key = loadPrivateKey(keyPem, keyFile);
  } catch (error) {
    throw new CacertsCommandError((error as Error).message);
  }
  if (!keysMatch(key, certificatePublicKey(cert))) throw new CacertsCommandError(`${keyFile} does not belong to ${certFile}`);
  return key;
}

interface RootOptions extends Pkcs11Flags {
  out: string;
  key: string;
  ttl: string;
  org: string;
  /** Put spiffe://<trustDomain> in the certificate (intermediates default to cluster.local, roots to none). */
  trustDomain?: string;
  force?: boolean;
}

interface IntermediateOptions extends RootOptions {
  root: string;
  cluster: string;
  rootPkcs11KeyLabel?: string;
  rootPkcs11KeyId?: string;
}

interface CreatedRoot {
  certFile: string;
  /** root-key.pem, when the key is a file. */
  keyFile?: string;
  /** Where the key is, when it is in a token. */
  inToken?: string;
  cert: ParsedCertificate;
}

async function createRootCa(options: RootOptions): Promise<CreatedRoot> {
  const spec = keySpecOf(options.key);
  const ttlSeconds = ttlOf(options.ttl);
  const newTokenKey = newTokenKeyOf(options);
  const token = tokenSettingsOf(options, newTokenKey !== undefined, 'pass --pkcs11-key-label to make the root key in the token');
  const certFile = path.join(options.out, ROOT_FILES.cert);
  const subject = { organization: options.org, commonName: 'Root CA' };
  const uris = caSpiffeIds(options.trustDomain);
  const notAfter = new Date(Date.now() + ttlSeconds * 1000);
  return inOutDir(options.out, async (): Promise<CreatedRoot> => {
    if (token && newTokenKey) {
      await refuseStrayKey(options.out, ROOT_FILES.key);
      await refuseOverwrite(options.out, [ROOT_FILES.cert], options.force);
      const key = await generateInToken(token, newTokenKey, spec);
      try {
        const der = await signCaCertificateInToken({ subject, subjectKey: key.publicKey, notAfter, uris }, key);
        await writeFileAtomic(certFile, certificateToPem(der), 0o644);
        return { certFile, inToken: describeTokenKey(token, key), cert: parseCertificate(der) };
      } finally {
        key.close();
      }
    }
    await refuseOverwrite(options.out, [ROOT_FILES.cert, ROOT_FILES.key], options.force);
    const keys = await generateKeyPairForAsync(spec);
    const der = createCaCertificate({ subject, subjectKey: keys.privateKey, notAfter, uris });
    const keyFile = path.join(options.out, ROOT_FILES.key);
    await writeFileAtomic(keyFile, exportPrivateKeyPem(keys.privateKey), 0o600);
    await writeFileAtomic(certFile, certificateToPem(der), 0o644);
    return { certFile, keyFile, cert: parseCertificate(der) };
  });
}

/** What signs an intermediate: the root key from root-key.pem, or the root key in the token. */
type RootSigner = { kind: 'file'; key: KeyObject } | { kind: 'token'; key: Pkcs11Key; where: string };

async function signIntermediate(options: Omit<CaCertificateOptions, 'issuer'>, root: ParsedCertificate, signer: RootSigner): Promise<Buffer> {
  if (signer.kind === 'file') return createCaCertificate({ ...options, issuer: { certificate: root, privateKey: signer.key } });
  return signCaCertificateInToken({ ...options, issuer: { certificate: root } }, signer.key);
}

interface CreatedIntermediate {
  dir: string;
  cert: ParsedCertificate;
  clamped: boolean;
  /** Where the intermediate's key is, when it is in a token (no ca-key.pem then). */
  inToken?: string;
  /** Where the root key that signed is, when it is in a token. */
  rootInToken?: string;
}

async function createIntermediateCa(options: IntermediateOptions): Promise<CreatedIntermediate> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(options.cluster)) {
    throw new ConfigError(`invalid --cluster "${options.cluster}": use letters, digits, '.', '_' and '-'`);
  }
  if (path.resolve(options.out) === path.resolve(options.root)) {
    throw new ConfigError('--out must not be the --root directory: the cacerts Secret would then carry the root key');
  }
  const spec = keySpecOf(options.key);
  const ttlSeconds = ttlOf(options.ttl);
  const uris = caSpiffeIds(options.trustDomain ?? DEFAULT_TRUST_DOMAIN);
  const newTokenKey = newTokenKeyOf(options);
  const rootTokenKey: TokenKeyName | undefined =
    options.rootPkcs11KeyLabel !== undefined || options.rootPkcs11KeyId !== undefined
      ? { label: options.rootPkcs11KeyLabel, idHex: keyIdOf('--root-pkcs11-key-id', options.rootPkcs11KeyId) }
      : undefined;
  const token = tokenSettingsOf(
    options,
    newTokenKey !== undefined || rootTokenKey !== undefined,
    'pass --pkcs11-key-label (the new key) and/or --root-pkcs11-key-label (the root key) to use the token',
  );
  const root = await readRootCertificate(options.root);
  const opened: Pkcs11Key[] = [];
  try {
    const signer = await rootSignerOf(options.root, root, token && rootTokenKey ? { token, name: rootTokenKey } : undefined, opened);
    return await inOutDir(options.out, async (): Promise<CreatedIntermediate> => {
      const dir = options.out;
      const shared = ['ca-cert.pem', 'cert-chain.pem', 'root-cert.pem'];
      if (newTokenKey) await refuseStrayKey(dir, 'ca-key.pem');
      await refuseOverwrite(dir, newTokenKey ? shared : ['ca-cert.pem', 'ca-key.pem', 'cert-chain.pem', 'root-cert.pem'], options.force);
      const subject = await newSubjectKey(spec, token && newTokenKey ? { token, name: newTokenKey } : undefined, opened);
      const wanted = new Date(Date.now() + ttlSeconds * 1000);
      // pathLen 0 for a key file: that cluster CA (--ca-source cacerts) signs workloads, never further CAs. A key in
      // the token is for --ca-source pkcs11, whose default intermediate mode has it sign one short-lived CA below.
      const pathLen = subject.inToken ? 1 : 0;
      const der = await signIntermediate(
        { subject: { organization: options.org, commonName: `Intermediate CA ${options.cluster}` }, subjectKey: subject.publicKey, notAfter: wanted, pathLen, uris },
        root.cert,
        signer,
      );
      const cert = parseCertificate(der);
      const certPem = certificateToPem(der);
      if (subject.privateKeyPem !== undefined) await writeFileAtomic(path.join(dir, 'ca-key.pem'), subject.privateKeyPem, 0o600);
      await writeFileAtomic(path.join(dir, 'ca-cert.pem'), certPem, 0o644);
      await writeFileAtomic(path.join(dir, 'cert-chain.pem'), certPem + root.certPem, 0o644);
      await writeFileAtomic(path.join(dir, 'root-cert.pem'), root.certPem, 0o644);
      // The checks the CA runs at start (the cacerts source with a key file; the chain without), so a directory this
      // command writes is known to load.
      if (subject.privateKeyPem !== undefined) await loadCacerts(dir);
      else verifyPemChain(certPem + root.certPem, root.certPem);
      return {
        dir,
        cert,
        clamped: cert.notAfter.getTime() < wanted.getTime() - 1000,
        ...(subject.inToken ? { inToken: subject.inToken } : {}),
        ...(signer.kind === 'token' ? { rootInToken: signer.where } : {}),
      };
    });
  } finally {
    for (const key of opened) key.close();
  }
}

/** The root key: in the token (checked against root-cert.pem; added to `opened`), or DIR/root-key.pem. */
async function rootSignerOf(
  dir: string,
  root: { cert: ParsedCertificate; certFile: string },
  inToken: { token: TokenSettings; name: TokenKeyName } | undefined,
  opened: Pkcs11Key[],
): Promise<RootSigner> {
  if (!inToken) return { kind: 'file', key: await readRootKeyFile(dir, root.certFile, root.cert) };
  const { token, name } = inToken;
  const key = await openPkcs11Key({ ...token, keyLabel: name.label, keyIdHex: name.idHex });
  opened.push(key);
  if (!spkiDer(key.publicKey).equals(root.cert.spkiDer)) {
    throw new CacertsCommandError(`the key in token "${token.tokenLabel}" (label "${key.facts.label}", id ${key.facts.idHex || 'none'}) does not belong to ${root.certFile}`);
  }
  return { kind: 'token', key, where: describeTokenKey(token, key) };
}

/** The new CA's key: generated in the token (added to `opened`), or in memory with its PEM to write. */
async function newSubjectKey(
  spec: KeySpec,
  inToken: { token: TokenSettings; name: { label: string; idHex: string } } | undefined,
  opened: Pkcs11Key[],
): Promise<{ publicKey: KeyObject; privateKeyPem?: string; inToken?: string }> {
  if (inToken) {
    const key = await generateInToken(inToken.token, inToken.name, spec);
    opened.push(key);
    return { publicKey: key.publicKey, inToken: describeTokenKey(inToken.token, key) };
  }
  const keys = await generateKeyPairForAsync(spec);
  return { publicKey: keys.publicKey, privateKeyPem: exportPrivateKeyPem(keys.privateKey) };
}

const describe = (cert: ParsedCertificate): string => `${cert.subject}, expires ${cert.notAfter.toISOString()}, sha256 ${fingerprint(cert)}`;

/** The options both kinds of CA take, after their own: the same key types, subject, SPIFFE ID and overwrite rule. */
function addCaOptions(command: Command, ttl: { help: string; default: string }, trustDomainHelp: string): Command {
  return command
    .option('--key <type>', 'key type: rsa-2048 | rsa-3072 | rsa-4096 | ec-p256 | ec-p384', 'rsa-4096')
    .option('--ttl <duration>', ttl.help, ttl.default)
    .option('--org <name>', 'organization in the subject', 'Istio')
    .option('--trust-domain <domain>', trustDomainHelp)
    .option('--force', 'replace existing files');
}

/** The token options both kinds of CA take: with --pkcs11-key-label the new CA key is made in the token. */
function addPkcs11Options(command: Command, what: string): Command {
  return command
    .option('--pkcs11-module <path>', 'PKCS#11 library of the token (e.g. /usr/lib/softhsm/libsofthsm2.so)')
    .option('--pkcs11-token-label <label>', 'label of the token')
    .option('--pkcs11-key-label <label>', `make the ${what} key inside the token under this label (private, sensitive, never extractable; no key file is written)`)
    .option('--pkcs11-key-id <hex>', 'CKA_ID of the new key in the token (default: 8 random bytes)')
    .option('--pkcs11-pin-file <path>', `file holding the token's user PIN (default: the PIN from env ${PIN_ENV})`);
}

/** ` --pkcs11-pin-file FILE` for a copy-paste command when this run read the PIN from a file. */
const pinFileFlag = (options: Pkcs11Flags): string => (options.pkcs11PinFile !== undefined ? ` --pkcs11-pin-file ${q(options.pkcs11PinFile)}` : '');

export function registerCacertsCommand(program: Command): void {
  const cacerts = program
    .command('cacerts')
    .description(COMMAND_DESCRIPTIONS.cacerts)
    .addHelpText('after', `\nEnvironment:\n  ${PIN_ENV}  the PKCS#11 token's user PIN for --pkcs11-* (when no --pkcs11-pin-file is given)`);
  const root = cacerts
    .command('root')
    .description('create a root CA: root-cert.pem and root-key.pem (0600), or only root-cert.pem with the key in a PKCS#11 token; keep it offline')
    .requiredOption('--out <dir>', 'output directory');
  addCaOptions(root, { help: 'lifetime', default: '3650d' }, 'put the SPIFFE ID spiffe://<domain> in the root (default: none, for a root shared by several trust domains)');
  addPkcs11Options(root, 'root').action(async (options: RootOptions) => {
    const result = await createRootCa(options);
    const next = result.inToken
      ? `meshca cacerts intermediate --root ${q(options.out)} --out <dir> --cluster <name> --pkcs11-module ${q(options.pkcs11Module!)} --pkcs11-token-label ${q(options.pkcs11TokenLabel!)} --root-pkcs11-key-label ${q(options.pkcs11KeyLabel!)}${pinFileFlag(options)}`
      : `meshca cacerts intermediate --root ${options.out} --out <dir> --cluster <name>`;
    process.stdout.write(
      [
        result.inToken ? `wrote ${result.certFile}; the key is in the token only (${result.inToken})` : `wrote ${result.certFile} and ${result.keyFile} (0600)`,
        `  root: ${describe(result.cert)}`,
        `  next: ${next}`,
        '',
      ].join('\n'),
    );
  });
  const intermediate = cacerts
    .command('intermediate')
    .description('create a cluster CA signed by the root: ca-cert.pem, ca-key.pem (0600, none with the key in a PKCS#11 token), cert-chain.pem, root-cert.pem')
    .requiredOption('--root <dir>', 'directory holding root-cert.pem and root-key.pem (or only root-cert.pem with --root-pkcs11-key-label)')
    .requiredOption('--out <dir>', 'output directory (becomes the cacerts Secret)')
    .requiredOption('--cluster <name>', 'cluster name, put in the subject');
  addCaOptions(
    intermediate,
    { help: 'lifetime (capped at the root expiry)', default: '730d' },
    `trust domain of the cluster's workloads, put in the CA certificate as the SPIFFE ID spiffe://<domain> (default: ${DEFAULT_TRUST_DOMAIN}, meshca ca's default)`,
  );
  addPkcs11Options(intermediate, 'intermediate')
    .option('--root-pkcs11-key-label <label>', 'the root key is in the token (same --pkcs11-module, token and PIN) under this label, not in root-key.pem')
    .option('--root-pkcs11-key-id <hex>', 'CKA_ID of the root key in the token')
    .action(async (options: IntermediateOptions) => {
      const result = await createIntermediateCa(options);
      const next = result.inToken
        ? `meshca ca --ca-source pkcs11 --pkcs11-module ${q(options.pkcs11Module!)} --pkcs11-token-label ${q(options.pkcs11TokenLabel!)} --pkcs11-key-label ${q(options.pkcs11KeyLabel!)} --pkcs11-cert ${q(path.join(result.dir, 'cert-chain.pem'))} --pkcs11-roots ${q(path.join(result.dir, 'root-cert.pem'))}${pinFileFlag(options)}`
        : `kubectl create secret generic cacerts -n istio-system --from-file=${result.dir}`;
      process.stdout.write(
        [
          result.inToken
            ? `wrote ${path.join(result.dir, 'ca-cert.pem')}, cert-chain.pem and root-cert.pem; the key is in the token only (${result.inToken})`
            : `wrote ${path.join(result.dir, 'ca-cert.pem')}, ca-key.pem (0600), cert-chain.pem and root-cert.pem`,
          `  signing CA: ${describe(result.cert)}${result.clamped ? ' (capped at the root expiry)' : ''}`,
          ...(result.rootInToken ? [`  signed by the root key in ${result.rootInToken}`] : []),
          `  next: ${next}`,
          '',
        ].join('\n'),
      );
    });
}
