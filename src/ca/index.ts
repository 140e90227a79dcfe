/**
 * Public surface of the CA: the signing policy, and the choice of key source from configuration.
 * Key sources implement WorkloadSigner; choosing one is the only place that knows them all.
 */
import type { Command } from 'commander';
import type { Logger } from '../log.js';
import { parseKeySpec, type KeySpec } from '../pki/index.js';
import { readDuration, readEnum, readInteger, readString, type Env } from '../config/env.js';
import { loadOrCreateSelfSignedCa } from './selfsigned.js';
import type { WorkloadSigner } from './signer.js';

export { CertificateAuthority, formatSeconds, type AuthorityOptions, type IssueRequest, type IssueResult } from './authority.js';
export { CaError, CaConfigError, type CaErrorCode } from './errors.js';
export { LocalSigner } from './local-signer.js';
export { buildCaMaterial, fingerprint, type CaMaterial } from './material.js';
export { loadOrCreateSelfSignedCa, createSelfSignedRoot, SELF_SIGNED_FILES } from './selfsigned.js';
export type { WorkloadSigner, WorkloadSignRequest, SignedChain, SignerStatus } from './signer.js';

export const CA_SOURCES = ['self-signed', 'cacerts', 'vault'] as const;
export type CaSource = (typeof CA_SOURCES)[number];

/** Flags of the key-source choice, as commander hands them over. */
export interface KeySourceFlags {
  caSource?: string;
  stateDir?: string;
  caKeyType?: string;
  trustDomain?: string;
}

export interface KeySourceConfig {
  source: CaSource;
  stateDir: string;
  trustDomain: string;
  selfSigned: { keySpec: KeySpec; ttlSeconds: number };
}

/** Registers the key-source flags on a command (`meshca ca`, `meshca dev`). */
export function addKeySourceOptions(command: Command): Command {
  return command
    .option('--ca-source <source>', 'where the signing key comes from: self-signed | cacerts | vault (default: cacerts when ROOT_CA_DIR holds files, else self-signed)')
    .option('--state-dir <dir>', 'directory for the self-signed root and other state', './.meshca')
    .option('--ca-key-type <type>', 'key type of a new self-signed root: rsa-2048 | rsa-3072 | rsa-4096 | ec-p256 | ec-p384 (env CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE sets the RSA size)');
}

export function readKeySourceConfig(flags: KeySourceFlags, env: Env): KeySourceConfig {
  const source = readEnum(flags.caSource, env, { flag: '--ca-source', env: 'MESHCA_CA_SOURCE' }, CA_SOURCES, 'self-signed');
  const trustDomain = readString(flags.trustDomain, env, { flag: '--trust-domain', env: 'TRUST_DOMAIN' }, 'cluster.local');
  let keySpec: KeySpec;
  if (flags.caKeyType) {
    keySpec = parseKeySpec(flags.caKeyType);
  } else {
    const bits = readInteger(undefined, env, { env: 'CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE' }, 2048, { min: 2048, max: 4096 });
    keySpec = parseKeySpec(`rsa-${bits}`);
  }
  const ttlSeconds = readDuration(undefined, env, { env: 'CITADEL_SELF_SIGNED_CA_CERT_TTL' }, 3650 * 86400, { min: 60 });
  return { source, stateDir: flags.stateDir ?? './.meshca', trustDomain, selfSigned: { keySpec, ttlSeconds } };
}

/** Opens the configured key source. Throws CaConfigError / ConfigError with one human line on failure. */
export async function openSigner(config: KeySourceConfig, logger: Logger): Promise<WorkloadSigner> {
  switch (config.source) {
    case 'self-signed': {
      const result = await loadOrCreateSelfSignedCa({
        stateDir: config.stateDir,
        trustDomain: config.trustDomain,
        keySpec: config.selfSigned.keySpec,
        ttlSeconds: config.selfSigned.ttlSeconds,
      });
      const status = result.signer.status();
      logger.info(
        { source: 'self-signed', created: result.created, cert: result.files.cert, serial: status.signingCertSerial, notAfter: status.signingCertNotAfter },
        result.created ? 'created a new self-signed root CA' : 'loaded the self-signed root CA',
      );
      return result.signer;
    }
    default:
      throw new Error(`--ca-source ${config.source} is not available in this build`);
  }
}
