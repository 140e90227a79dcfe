/**
 * The PKCS#11 source's settings. The PIN has no flag on purpose: a command line is visible to every local user
 * (`ps`); it comes from --pkcs11-pin-file or MESHCA_PKCS11_PIN.
 */
import { ConfigError, readBoolean, readDuration, readEnum, readOptionalString, type Env } from '../../../config/env.js';
import { sourceOf, type EnvOnlySpec, type FlagSpec } from '../../../config/flags.js';
import type { Pkcs11KeyConfig } from './pkcs11-key.js';

export const PKCS11_MODES = ['intermediate', 'direct'] as const;
export type Pkcs11Mode = (typeof PKCS11_MODES)[number];

/** The variable that holds the PIN when no PIN file is given. */
export const PKCS11_PIN_ENV = 'MESHCA_PKCS11_PIN';

export const PKCS11_FLAGS = {
  pkcs11Module: {
    flags: '--pkcs11-module <path>',
    description: "the HSM's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so",
    env: ['MESHCA_PKCS11_MODULE'],
  },
  pkcs11TokenLabel: { flags: '--pkcs11-token-label <label>', description: 'label of the token that holds the CA key', env: ['MESHCA_PKCS11_TOKEN_LABEL'] },
  pkcs11KeyLabel: { flags: '--pkcs11-key-label <label>', description: "CKA_LABEL of the CA's private key in the token", env: ['MESHCA_PKCS11_KEY_LABEL'] },
  pkcs11KeyId: { flags: '--pkcs11-key-id <hex>', description: "CKA_ID of the CA's private key, hex (with a label, both must match)", env: ['MESHCA_PKCS11_KEY_ID'] },
  pkcs11PinFile: { flags: '--pkcs11-pin-file <file>', description: `file holding the token's user PIN (instead of ${PKCS11_PIN_ENV}); re-read at each login`, env: ['MESHCA_PKCS11_PIN_FILE'] },
  pkcs11Cert: {
    flags: '--pkcs11-cert <file>',
    description: "PEM certificate of the token's key, optionally followed by the certificates above it",
    env: ['MESHCA_PKCS11_CERT'],
  },
  pkcs11Roots: {
    flags: '--pkcs11-roots <file>',
    description: 'PEM trust bundle (the roots)',
    env: ['MESHCA_PKCS11_ROOTS'],
    defaultText: 'the self-signed certificate at the top of --pkcs11-cert',
  },
  pkcs11Mode: {
    flags: '--pkcs11-mode <mode>',
    description: 'intermediate: the token key signs a short-lived in-memory intermediate that signs workloads | direct: the token signs every workload certificate',
    env: ['MESHCA_PKCS11_MODE'],
    defaultText: 'intermediate',
  },
  pkcs11IntermediateTtl: {
    flags: '--pkcs11-intermediate-ttl <duration>',
    description: 'intermediate mode: lifetime of the in-memory intermediate; renewed at 2/3, so signing outlasts a token outage of 1/3 of it; at least 3x the workload certificate TTL, or late leaves are cut short',
    env: ['MESHCA_PKCS11_INTERMEDIATE_TTL'],
    defaultText: '72h',
  },
  pkcs11AllowExtractable: {
    flags: '--pkcs11-allow-extractable',
    description: 'accept a token key that is extractable or not sensitive (refused by default: its private part can leave the token)',
    env: ['MESHCA_PKCS11_ALLOW_EXTRACTABLE'],
  },
} as const satisfies Record<string, FlagSpec>;

export const PKCS11_ENV_ONLY: readonly EnvOnlySpec[] = [{ env: PKCS11_PIN_ENV, description: "pkcs11: the token's user PIN (or --pkcs11-pin-file)" }];

const P = PKCS11_FLAGS;

export interface Pkcs11Flags {
  pkcs11Module?: string;
  pkcs11TokenLabel?: string;
  pkcs11KeyLabel?: string;
  pkcs11KeyId?: string;
  pkcs11PinFile?: string;
  pkcs11Cert?: string;
  pkcs11Roots?: string;
  pkcs11Mode?: string;
  pkcs11IntermediateTtl?: string;
  pkcs11AllowExtractable?: boolean;
}

/** The token key's settings (exactly one of pinFile and pinEnv), and the source's own. */
export interface Pkcs11SourceConfig extends Pick<Pkcs11KeyConfig, 'modulePath' | 'tokenLabel' | 'keyLabel' | 'keyIdHex' | 'pinFile' | 'pinEnv'> {
  certFile: string;
  rootsFile?: string;
  mode: Pkcs11Mode;
  intermediateTtlSeconds: number;
  allowExtractable: boolean;
}

/** Reads and checks the settings; called only when the source is chosen, so each missing one is reported. */
export function readPkcs11Config(flags: Pkcs11Flags, env: Env): Pkcs11SourceConfig {
  const required = (value: string | undefined, spec: FlagSpec, example: string): string => {
    const text = readOptionalString(value, env, sourceOf(spec));
    if (!text) throw new ConfigError(`--ca-source pkcs11 needs ${sourceOf(spec).flag} (or ${spec.env?.[0]}), ${example}`);
    return text;
  };
  const modulePath = required(flags.pkcs11Module, P.pkcs11Module, 'the path of the PKCS#11 library');
  const tokenLabel = required(flags.pkcs11TokenLabel, P.pkcs11TokenLabel, 'the label the token was initialised with');
  const keyLabel = readOptionalString(flags.pkcs11KeyLabel, env, sourceOf(P.pkcs11KeyLabel));
  const keyIdHex = readOptionalString(flags.pkcs11KeyId, env, sourceOf(P.pkcs11KeyId));
  if (keyLabel === undefined && keyIdHex === undefined) {
    throw new ConfigError('--ca-source pkcs11 needs --pkcs11-key-label or --pkcs11-key-id (MESHCA_PKCS11_KEY_LABEL / MESHCA_PKCS11_KEY_ID) to find the CA key');
  }
  if (keyIdHex !== undefined && !/^([0-9a-fA-F]{2})+$/.test(keyIdHex)) {
    throw new ConfigError(`invalid --pkcs11-key-id "${keyIdHex}": expected hex bytes, such as 01 or a1b2`);
  }
  const pinFile = readOptionalString(flags.pkcs11PinFile, env, sourceOf(P.pkcs11PinFile));
  if (pinFile === undefined && !env.MESHCA_PKCS11_PIN) {
    throw new ConfigError(`--ca-source pkcs11 needs the token's PIN: --pkcs11-pin-file FILE, or ${PKCS11_PIN_ENV} in the environment (never as a flag)`);
  }
  const certFile = required(flags.pkcs11Cert, P.pkcs11Cert, "the PEM file of the token key's certificate");
  const rootsFile = readOptionalString(flags.pkcs11Roots, env, sourceOf(P.pkcs11Roots));
  return {
    modulePath,
    tokenLabel,
    ...(keyLabel !== undefined ? { keyLabel } : {}),
    ...(keyIdHex !== undefined ? { keyIdHex: keyIdHex.toLowerCase() } : {}),
    ...(pinFile !== undefined ? { pinFile } : { pinEnv: PKCS11_PIN_ENV }),
    certFile,
    ...(rootsFile !== undefined ? { rootsFile } : {}),
    mode: readEnum(flags.pkcs11Mode, env, sourceOf(P.pkcs11Mode), PKCS11_MODES, 'intermediate'),
    intermediateTtlSeconds: readDuration(flags.pkcs11IntermediateTtl, env, sourceOf(P.pkcs11IntermediateTtl), 72 * 3600, { min: 60 }),
    allowExtractable: readBoolean(flags.pkcs11AllowExtractable, env, sourceOf(P.pkcs11AllowExtractable), false),
  };
}
