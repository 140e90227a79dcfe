/**
 * Configuration of `meshca agent`, the per-node SDS agent. Istio's environment variable names are kept
 * (CA_ADDR, SECRET_TTL, WORKLOAD_RSA_KEY_SIZE, ...) so an istio-agent's settings carry over unchanged.
 */
import {
  bad,
  ConfigError,
  raw,
  readAddress,
  readBoolean,
  readDuration,
  readEnum,
  readInteger,
  readList,
  readNumber,
  readOptionalString,
  readString,
  type Env,
} from './env.js';
import { sourceOf, type FlagSpec } from './flags.js';

const AGENT_MODES = ['node', 'sidecar'] as const;
export type AgentMode = (typeof AGENT_MODES)[number];

export const DEFAULT_SDS_SOCKET = './var/run/secrets/workload-spiffe-uds/socket';
const DEFAULT_TOKEN_FILE = './var/run/secrets/tokens/istio-token';
export const DEFAULT_CA_ROOT_CERT = './var/run/secrets/istio/root-cert.pem';
export const DEFAULT_CA_ADDR = 'localhost:15012';
const DEFAULT_STATUS_ADDR = '127.0.0.1:15020';
/**
 * Sidecar mode: where file-cert:/file-root: resources may be read from unless --file-resource-dirs says otherwise.
 * The places Istio mounts certificates in a proxy container: /etc/certs (Istio's file-mounted workload certs and
 * the usual userVolumeMount for DestinationRule client certs), /etc/istio (gateway certs such as
 * /etc/istio/ingressgateway-certs), /var/run/secrets/istio (the mesh root) and
 * /var/run/secrets/workload-spiffe-credentials (file-mounted workload identity). Not the service-account token,
 * not the rest of the filesystem.
 */
export const DEFAULT_SIDECAR_FILE_RESOURCE_DIRS: readonly string[] = [
  '/etc/certs',
  '/etc/istio',
  '/var/run/secrets/istio',
  '/var/run/secrets/workload-spiffe-credentials',
];

/** Every flag of `meshca agent` (README's agent table is checked against them by test/flags.test.ts). */
export const AGENT_FLAGS = {
  mode: {
    flags: '--mode <mode>',
    description: 'node: every workload sends its own token on the stream; sidecar: one workload, token from --token-file',
    env: ['MESHCA_AGENT_MODE'],
    defaultText: 'node',
  },
  sdsSocket: { flags: '--sds-socket <path>', description: 'SDS Unix socket', env: ['MESHCA_SDS_SOCKET'], defaultText: DEFAULT_SDS_SOCKET },
  sdsSocketMode: {
    flags: '--sds-socket-mode <mode>',
    description:
      'file mode of the socket, octal (0666 like Istio: Envoys run as other users; every call proves a workload with its own token, ' +
      "and a token that is not an unexpired JWT costs no key or CA call). 0660 narrows it to the agent's group, if every Envoy shares it",
    env: ['MESHCA_SDS_SOCKET_MODE'],
    defaultText: '0666',
  },
  tokenFile: {
    flags: '--token-file <file>',
    description: "sidecar mode: the workload's service-account token, re-read for every CSR",
    env: ['MESHCA_TOKEN_FILE'],
    defaultText: DEFAULT_TOKEN_FILE,
  },
  idleSecretTtl: {
    flags: '--idle-secret-ttl <duration>',
    description: 'drop a cached identity this long after its last stream ends',
    env: ['MESHCA_IDLE_SECRET_TTL'],
    defaultText: '5m',
  },
  keyPoolSize: { flags: '--key-pool-size <n>', description: 'pre-generated keys kept ready', env: ['MESHCA_KEY_POOL_SIZE'], defaultText: '2' },
  caAddr: { flags: '--ca-addr <host:port>', description: 'CA address', env: ['CA_ADDR'], defaultText: DEFAULT_CA_ADDR },
  caRootCert: { flags: '--ca-root-cert <file>', description: "root certificate that verifies the CA's TLS", env: ['CA_ROOT_CA'], defaultText: DEFAULT_CA_ROOT_CERT },
  istiodSan: { flags: '--istiod-san <name>', description: 'TLS server name to verify instead of the host of --ca-addr', env: ['ISTIOD_SAN'] },
  certSigner: { flags: '--cert-signer <name>', description: 'CertSigner metadata sent to the CA', env: ['ISTIO_META_CERT_SIGNER'] },
  clusterId: { flags: '--cluster-id <id>', description: 'clusterid header sent to the CA', env: ['ISTIO_META_CLUSTER_ID'] },
  caHeader: { flags: '--ca-header <name=value>', description: 'extra gRPC header sent to the CA, repeatable', env: ['CA_HEADER_<NAME>'] },
  secretTtl: { flags: '--secret-ttl <duration>', description: 'requested certificate lifetime', env: ['SECRET_TTL'], defaultText: '24h' },
  secretGracePeriodRatio: {
    flags: '--secret-grace-period-ratio <ratio>',
    description: 'renew when this fraction of the lifetime is left',
    env: ['SECRET_GRACE_PERIOD_RATIO'],
    defaultText: '0.5',
  },
  secretGracePeriodRatioJitter: {
    flags: '--secret-grace-period-ratio-jitter <ratio>',
    description: 'random spread of that fraction',
    env: ['SECRET_GRACE_PERIOD_RATIO_JITTER'],
    defaultText: '0.01',
  },
  workloadRsaKeySize: { flags: '--workload-rsa-key-size <bits>', description: 'RSA workload key size, 2048 to 8192', env: ['WORKLOAD_RSA_KEY_SIZE'], defaultText: '2048' },
  eccSignatureAlgorithm: {
    flags: '--ecc-signature-algorithm <algorithm>',
    description: 'ECDSA for EC workload keys, RSA for RSA keys',
    env: ['ECC_SIGNATURE_ALGORITHM'],
    defaultText: 'RSA',
  },
  eccCurve: { flags: '--ecc-curve <curve>', description: 'curve of EC workload keys: P256 | P384', env: ['ECC_CURVE'], defaultText: 'P256' },
  pkcs8Key: { flags: '--pkcs8-key', description: 'write workload keys as PKCS#8', env: ['PKCS8_KEY'], defaultText: 'false' },
  outputCerts: { flags: '--output-certs <dir>', description: 'sidecar mode: also write key.pem, cert-chain.pem, root-cert.pem here', env: ['OUTPUT_CERTS'] },
  statusAddr: { flags: '--status-addr <host:port>', description: 'status HTTP server: /healthz/ready, /metrics', env: ['MESHCA_STATUS_ADDR'], defaultText: DEFAULT_STATUS_ADDR },
  fileResourceDirs: {
    flags: '--file-resource-dirs <dirs>',
    description: 'comma list of directories file-cert:/file-root: resources may read',
    env: ['MESHCA_FILE_RESOURCE_DIRS'],
    defaultText: `none in node mode; sidecar: ${DEFAULT_SIDECAR_FILE_RESOURCE_DIRS.join(',')}`,
  },
  trustDomain: { flags: '--trust-domain <domain>', description: 'trust domain expected in CSRs', env: ['TRUST_DOMAIN'], defaultText: 'cluster.local' },
  identityExpiryMetric: {
    flags: '--identity-expiry-metric',
    description: 'export meshca_agent_identity_cert_expiry_timestamp_seconds{spiffe_id}, one series per cached identity',
    env: ['MESHCA_IDENTITY_EXPIRY_METRIC'],
    defaultText: 'false',
  },
  identityMetricLimit: {
    flags: '--identity-metric-limit <n>',
    description: 'most identities given a series by --identity-expiry-metric; the rest are counted in meshca_agent_identity_expiry_unlisted',
    env: ['MESHCA_IDENTITY_METRIC_LIMIT'],
    defaultText: '1000',
  },
} as const satisfies Record<string, FlagSpec>;

const F = AGENT_FLAGS;

export interface WorkloadKeyConfig {
  algorithm: 'RSA' | 'ECDSA';
  rsaBits: number;
  curve: 'P256' | 'P384';
  /** PKCS#8 ("PRIVATE KEY") instead of PKCS#1/SEC1. */
  pkcs8: boolean;
}

export interface AgentCaConfig {
  /** host:port of the Istio-compatible CA (gRPC over TLS). */
  address: string;
  rootCertPath: string;
  /** TLS server name to verify instead of the host of `address` (ISTIOD_SAN). */
  serverName?: string;
  /** Struct metadata `CertSigner` (ISTIO_META_CERT_SIGNER); Istio always sends it, often empty. */
  certSigner: string;
  /** gRPC header `clusterid` (ISTIO_META_CLUSTER_ID); omitted when unset. */
  clusterId?: string;
  /** One header per CA_HEADER_<NAME>=<value>. */
  extraHeaders: Record<string, string>;
}

export interface AgentConfig {
  mode: AgentMode;
  sdsSocket: string;
  sdsSocketMode: number;
  /** Sidecar mode: the workload's service-account token, re-read on every CSR. */
  tokenFile: string;
  idleSecretTtlSeconds: number;
  key: WorkloadKeyConfig;
  keyPoolSize: number;
  ca: AgentCaConfig;
  secretTtlSeconds: number;
  graceRatio: number;
  graceRatioJitter: number;
  /** Sidecar mode: write key.pem, cert-chain.pem, root-cert.pem here on every change. */
  outputCertsDir?: string;
  statusAddress: { host: string; port: number; text: string };
  /**
   * Directories whose files may be served as file-cert:/file-root: resources. An empty list disables them (node
   * mode default), because on a shared node any workload could otherwise read any file the agent can; sidecar
   * mode defaults to DEFAULT_SIDECAR_FILE_RESOURCE_DIRS, so that a client needing no token still cannot read the
   * agent's other files.
   */
  fileResourceDirs: string[];
  /** Only used to put the expected SPIFFE ID into CSRs; the CA decides the identity. */
  trustDomain: string;  /** Per-identity expiry gauge (opt-in), and the most series it may have. */
  identityExpiryMetric: { enabled: boolean; limit: number };
}

/** Flags of `meshca agent` as commander hands them over (all strings). */
export interface AgentFlags {
  mode?: string;
  sdsSocket?: string;
  sdsSocketMode?: string;
  tokenFile?: string;
  idleSecretTtl?: string;
  keyPoolSize?: string;
  caAddr?: string;
  caRootCert?: string;
  secretTtl?: string;
  outputCerts?: string;
  statusAddr?: string;
  fileResourceDirs?: string;
  trustDomain?: string;
  istiodSan?: string;
  certSigner?: string;
  clusterId?: string;
  /** --ca-header name=value, repeatable. */
  caHeader?: string[];
  secretGracePeriodRatio?: string;
  secretGracePeriodRatioJitter?: string;
  workloadRsaKeySize?: string;
  eccSignatureAlgorithm?: string;
  eccCurve?: string;
  pkcs8Key?: boolean;
  identityExpiryMetric?: string | boolean;
  identityMetricLimit?: string;
}

/**
 * 0666 by default, like Istio's agent: Envoys run as users of their own (one per workload image), so only a mode that
 * lets any local user connect works without a shared group. Connecting grants nothing: every SDS call proves a
 * workload with its own token, and the agent spends nothing costly on a token it can reject alone (not a JWT, no exp,
 * expired); see src/agent/proof-limits.ts for what a token the CA refuses can cost. Operators who run every Envoy with
 * one group can use 0660 and give the socket that group.
 */
function readSocketMode(flagValue: string | undefined, env: Env): number {
  const source = sourceOf(F.sdsSocketMode);
  const value = raw(flagValue, env, source);
  if (value === undefined) return 0o666;
  if (!/^0?[0-7]{3}$/.test(value.trim())) throw bad(source, value, 'an octal file mode such as 0666 or 0660');
  return parseInt(value.trim(), 8);
}

function checkHeaderName(header: string, where: string): string {
  if (!/^[a-z0-9_.-]+$/.test(header) || header.endsWith('-bin')) throw new ConfigError(`invalid ${where}: "${header}" is not usable as a gRPC header name`);
  return header;
}

/** One header per CA_HEADER_<NAME>=<value>, then per --ca-header name=value (a flag wins over a variable). */
function caHeaders(flags: readonly string[] | undefined, env: Env): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('CA_HEADER_') || value === undefined) continue;
    headers[checkHeaderName(name.slice('CA_HEADER_'.length).toLowerCase(), name)] = value;
  }
  for (const entry of flags ?? []) {
    const equals = entry.indexOf('=');
    if (equals <= 0) throw bad({ flag: '--ca-header' }, entry, 'name=value, e.g. x-tenant=blue');
    headers[checkHeaderName(entry.slice(0, equals).trim().toLowerCase(), `--ca-header "${entry}"`)] = entry.slice(equals + 1);
  }
  return headers;
}

export function readAgentConfig(flags: AgentFlags, env: Env): AgentConfig {
  const mode = readEnum(flags.mode, env, sourceOf(F.mode), AGENT_MODES, 'node');
  const tokenFileGiven = raw(flags.tokenFile, env, sourceOf(F.tokenFile)) !== undefined;
  const outputCertsDir = readOptionalString(flags.outputCerts, env, sourceOf(F.outputCerts));
  if (mode === 'node' && tokenFileGiven) {
    throw new ConfigError('--token-file is only used with --mode sidecar; in node mode each workload sends its own token on the SDS stream');
  }
  if (mode === 'node' && outputCertsDir !== undefined) {
    throw new ConfigError('OUTPUT_CERTS (--output-certs) needs --mode sidecar: a node agent serves many identities and has no single one to write');
  }
  const algorithm = readEnum(flags.eccSignatureAlgorithm, env, sourceOf(F.eccSignatureAlgorithm), ['RSA', 'ECDSA'] as const, 'RSA');
  const graceRatio = readNumber(flags.secretGracePeriodRatio, env, sourceOf(F.secretGracePeriodRatio), 0.5, { min: 0, max: 1 });
  const graceRatioJitter = readNumber(flags.secretGracePeriodRatioJitter, env, sourceOf(F.secretGracePeriodRatioJitter), 0.01, { min: 0, max: 1 });
  const fileDirsSource = sourceOf(F.fileResourceDirs);
  const fileDirsGiven = raw(flags.fileResourceDirs, env, fileDirsSource) !== undefined;
  const serverName = readOptionalString(flags.istiodSan, env, sourceOf(F.istiodSan));
  const clusterId = readOptionalString(flags.clusterId, env, sourceOf(F.clusterId));
  return {
    mode,
    sdsSocket: readString(flags.sdsSocket, env, sourceOf(F.sdsSocket), DEFAULT_SDS_SOCKET),
    sdsSocketMode: readSocketMode(flags.sdsSocketMode, env),
    tokenFile: readString(flags.tokenFile, env, sourceOf(F.tokenFile), DEFAULT_TOKEN_FILE),
    idleSecretTtlSeconds: readDuration(flags.idleSecretTtl, env, sourceOf(F.idleSecretTtl), 300, { min: 0 }),
    key: {
      algorithm,
      rsaBits: readInteger(flags.workloadRsaKeySize, env, sourceOf(F.workloadRsaKeySize), 2048, { min: 2048, max: 8192 }),
      curve: readEnum(flags.eccCurve, env, sourceOf(F.eccCurve), ['P256', 'P384'] as const, 'P256'),
      pkcs8: readBoolean(flags.pkcs8Key, env, sourceOf(F.pkcs8Key), false),
    },
    keyPoolSize: readInteger(flags.keyPoolSize, env, sourceOf(F.keyPoolSize), 2, { min: 0, max: 64 }),
    ca: {
      address: readCaAddress(flags.caAddr, env),
      rootCertPath: readString(flags.caRootCert, env, sourceOf(F.caRootCert), DEFAULT_CA_ROOT_CERT),
      ...(serverName !== undefined ? { serverName } : {}),
      certSigner: readString(flags.certSigner, env, sourceOf(F.certSigner), ''),
      ...(clusterId !== undefined ? { clusterId } : {}),
      extraHeaders: caHeaders(flags.caHeader, env),
    },
    secretTtlSeconds: readDuration(flags.secretTtl, env, sourceOf(F.secretTtl), 86400, { min: 1 }),
    graceRatio,
    graceRatioJitter,
    ...(outputCertsDir !== undefined ? { outputCertsDir } : {}),
    statusAddress: readAddress(flags.statusAddr, env, sourceOf(F.statusAddr), DEFAULT_STATUS_ADDR),
    fileResourceDirs: fileDirsGiven ? readList(flags.fileResourceDirs, env, fileDirsSource, []) : mode === 'sidecar' ? [...DEFAULT_SIDECAR_FILE_RESOURCE_DIRS] : [],
    trustDomain: readString(flags.trustDomain, env, sourceOf(F.trustDomain), 'cluster.local'),
    identityExpiryMetric: {
      enabled: readBoolean(flags.identityExpiryMetric, env, sourceOf(F.identityExpiryMetric), false),
      limit: readInteger(flags.identityMetricLimit, env, sourceOf(F.identityMetricLimit), 1000, { min: 1, max: 100_000 }),
    },
  };
}

function readCaAddress(flagValue: string | undefined, env: Env): string {
  const source = sourceOf(F.caAddr);
  const value = readString(flagValue, env, source, DEFAULT_CA_ADDR);
  // A full URL or a bare host is a common slip; say what shape is wanted.
  if (!/^(\[[^\]]+\]|[^:/\s]+):\d{1,5}$/.test(value.trim())) throw bad(source, value, 'host:port, e.g. istiod.istio-system.svc:15012');
  return value.trim();
}
