/**
 * A real SoftHSM2 token for the PKCS#11 tests, made fresh in a temp dir: its own softhsm2.conf (its own token
 * directory, nothing of the machine's /var/lib/softhsm touched) and a token initialised with softhsm2-util.
 * SoftHSM2 comes from the OS: scripts/install-softhsm.sh installs it when run as root and otherwise fails with
 * the command to run, so a machine without it fails these tests loudly instead of skipping them.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { generatePkcs11KeyPair } from '../../src/ca/sources/pkcs11/keygen.js';
import { openPkcs11Key } from '../../src/ca/sources/pkcs11/pkcs11-key.js';
import { caCertificateTbs, certificateFromTbs, certificateToPem, type KeySpec } from '../../src/pki/index.js';
import { REPO_ROOT, makeTempDir } from './process.js';

let moduleCache: string | undefined;

/** The path of libsofthsm2.so, installing SoftHSM2 first if the script can (see scripts/install-softhsm.sh). */
export function softHsmModule(): string {
  if (moduleCache !== undefined) return moduleCache;
  const result = spawnSync('bash', [path.join(REPO_ROOT, 'scripts/install-softhsm.sh')], { encoding: 'utf8' });
  if (result.status !== 0) {
    throw new Error(`SoftHSM2 is not available (scripts/install-softhsm.sh exited ${result.status}):\n${result.stderr}`);
  }
  moduleCache = result.stdout.trim();
  return moduleCache;
}

export interface SoftHsmToken {
  /** libsofthsm2.so */
  module: string;
  /** The temp softhsm2.conf; SOFTHSM2_CONF must name it before the module's C_Initialize. */
  conf: string;
  label: string;
  pin: string;
  soPin: string;
  /** The temp dir (config, tokens and anything the test writes beside them). */
  dir: string;
  remove(): void;
}

/**
 * Initialises a token labelled `label` in a new temp token directory and points this process's SOFTHSM2_CONF at
 * it (SoftHSM2 reads the variable when the module is initialised, so a module already initialised in this
 * process keeps the directory it had).
 */
export function initSoftHsmToken(label = 'meshca-test', pin = '246813', soPin = '975310'): SoftHsmToken {
  const module = softHsmModule();
  const temp = makeTempDir('meshca-softhsm-');
  const tokens = path.join(temp.dir, 'tokens');
  const conf = path.join(temp.dir, 'softhsm2.conf');
  mkdirSync(tokens, { mode: 0o700 });
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  process.env.SOFTHSM2_CONF = conf;
  return { module, conf, label, pin, soPin, dir: temp.dir, remove: temp.cleanup };
}

/**
 * Makes a CA key pair inside the token (sensitive, never extractable) and its self-signed root certificate, signed
 * in the token; returns the root's PEM. The key is found later by `label`.
 */
export async function makeTokenRoot(token: SoftHsmToken, label: string, spec: KeySpec, days = 30): Promise<string> {
  const pinEnv = `MESHCA_TEST_PIN_${label.replace(/[^A-Za-z0-9]/g, '_').toUpperCase()}`;
  process.env[pinEnv] = token.pin;
  const config = { modulePath: token.module, tokenLabel: token.label, pinEnv };
  await generatePkcs11KeyPair({ ...config, keyLabel: label, keyIdHex: Buffer.from(label).toString('hex'), spec });
  const key = await openPkcs11Key({ ...config, keyLabel: label });
  try {
    const now = Date.now();
    const { tbs, profile } = caCertificateTbs(
      { subject: { organization: 'cluster.local', commonName: `meshca HSM root ${label}` }, subjectKey: key.publicKey, notBefore: new Date(now - 3600_000), notAfter: new Date(now + days * 86400_000) },
      key.publicKey,
    );
    return certificateToPem(certificateFromTbs(tbs, profile.algorithmIdentifier, await key.sign(profile.hash, tbs)));
  } finally {
    key.close();
  }
}
