/**
 * Configuration of `meshca ca` (and the CA inside `meshca dev`): flags, Istio-named environment variables and
 * their defaults. Every bad value is a ConfigError naming the flag or variable.
 *
 * | flag                        | env                         | default                  |
 * |-----------------------------|-----------------------------|--------------------------|
 * | --grpc-addr                 |                             | 0.0.0.0:15012            |
 * | --monitoring-addr           |                             | 0.0.0.0:15014            |
 * | --plaintext                 |                             | off (TLS)                |
 * | --server-dns                | ISTIOD_CUSTOM_HOST (added)  | meshca.istio-system.svc  |
 * | --server-cert-ttl           |                             | 24h                      |
 * | --trust-domain              | TRUST_DOMAIN                | cluster.local            |
 * | --cluster-id                | CLUSTER_ID                  | Kubernetes               |
 * | --kubeconfig [id=]path      | KUBECONFIG                  | in-cluster if available  |
 * | --token-audiences           | TOKEN_AUDIENCES             | istio-ca                 |
 * | --tokenreview-cache-ttl     |                             | 60s                      |
 * | --tokenreview-timeout       |                             | 5s                       |
 * | --max-inflight-tokenreviews |                             | 64                       |
 * | --max-csr-per-identity-per-minute |                       | 600 (0: no limit)        |
 * | --jwt-rule                  | JWT_RULE                    | none                     |
 * | --trusted-node-accounts     | CA_TRUSTED_NODE_ACCOUNTS    | none                     |
 * | --default-workload-cert-ttl | DEFAULT_WORKLOAD_CERT_TTL   | 24h                      |
 * | --max-workload-cert-ttl     | MAX_WORKLOAD_CERT_TTL       | 90d                      |
 * | --log-level                 | MESHCA_LOG_LEVEL            | info                     |
 * | --workers                   | MESHCA_CA_WORKERS           | 1 (auto: the CPUs given) |
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import { parseJwtRules, type JwtRule } from '../authn/jwt.js';
import { parseNodeAccounts, type NodeAccount } from '../authn/impersonation.js';
import { DEFAULT_MAX_INFLIGHT_TOKENREVIEWS } from '../authn/tokenreview.js';
import { addKeySourceOptions, readKeySourceConfig, type KeySourceConfig, type KeySourceFlags } from '../ca/index.js';
import { LOG_LEVELS } from '../log.js';
import { bad, ConfigError, raw, readAddress, readDuration, readEnum, readInteger, readList, readString, type Env } from './env.js';
import { kubeConfigAvailable } from '../kube/config.js';

export interface ListenAddress {
  host: string;
  port: number;
  text: string;
}

export interface KubeconfigEntry {
  clusterId: string;
  /** undefined: KUBECONFIG or in-cluster. */
  path: string | undefined;
}

export type LogLevel = (typeof LOG_LEVELS)[number];

export interface CaServerConfig {
  grpcAddress: ListenAddress;
  monitoringAddress: ListenAddress;
  plaintext: boolean;
  serverDnsNames: string[];
  serverCertTtlSeconds: number;
  trustDomain: string;
  clusterId: string;
  /** Clusters whose API servers review tokens; empty disables TokenReview. */
  kubeconfigs: KubeconfigEntry[];
  tokenAudiences: string[];
  tokenReviewCacheTtlSeconds: number;
  tokenReviewTimeoutSeconds: number;
  /** TokenReview API calls allowed at once; beyond, new tokens are refused with UNAVAILABLE. */
  maxInflightTokenReviews: number;
  /** Certificate requests per minute per caller identity; 0 disables the limit. */
  maxCsrPerIdentityPerMinute: number;
  jwtRules: JwtRule[];
  trustedNodeAccounts: NodeAccount[];
  defaultWorkloadCertTtlSeconds: number;
  maxWorkloadCertTtlSeconds: number;
  /** How long SIGTERM waits for in-flight calls. */
  shutdownGraceSeconds: number;
  logLevel: LogLevel;
  keySource: KeySourceConfig;
  /** Processes serving the gRPC API; above 1, a primary process owns the key source and forks this many workers. */
  workers: number;
}

export interface CaServerFlags extends KeySourceFlags {
  grpcAddr?: string;
  monitoringAddr?: string;
  plaintext?: boolean;
  serverDns?: string[];
  serverCertTtl?: string;
  clusterId?: string;
  kubeconfig?: string[];
  tokenAudiences?: string;
  tokenreviewCacheTtl?: string;
  tokenreviewTimeout?: string;
  maxInflightTokenreviews?: string;
  maxCsrPerIdentityPerMinute?: string;
  jwtRule?: string;
  trustedNodeAccounts?: string;
  defaultWorkloadCertTtl?: string;
  maxWorkloadCertTtl?: string;
  logLevel?: string;
  workers?: string;
}

export const DEFAULT_SERVER_DNS = 'meshca.istio-system.svc';
export const DEFAULT_MAX_CSR_PER_IDENTITY_PER_MINUTE = 600;

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

function hasOption(command: Command, long: string): boolean {
  return command.options.some((o) => o.long === long);
}

/** Adds `--log-level` unless the command has it already. */
export function addLogLevelOption(command: Command): Command {
  if (!hasOption(command, '--log-level')) command.option('--log-level <level>', `log level: ${LOG_LEVELS.join(' | ')} (env MESHCA_LOG_LEVEL)`);
  return command;
}

export function readLogLevel(flag: string | undefined, env: Env): LogLevel {
  return readEnum(flag, env, { flag: '--log-level', env: 'MESHCA_LOG_LEVEL' }, LOG_LEVELS, 'info');
}

/** Registers every `ca` flag (including the key-source flags) on a command. */
export function addCaServerOptions(command: Command, defaults: { grpcAddr?: string; monitoringAddr?: string } = {}): Command {
  command
    .option('--grpc-addr <host:port>', 'gRPC (CA API) listen address', defaults.grpcAddr ?? '0.0.0.0:15012')
    .option('--monitoring-addr <host:port>', 'HTTP listen address for /metrics, /ready, /healthz, /debug/ca', defaults.monitoringAddr ?? '0.0.0.0:15014')
    .option('--plaintext', 'serve gRPC without TLS (local debugging only)')
    .option('--server-dns <names>', `DNS names of the serving certificate, comma-separated, repeatable (default ${DEFAULT_SERVER_DNS}; env ISTIOD_CUSTOM_HOST adds more)`, collect)
    .option('--server-cert-ttl <duration>', 'lifetime of the serving certificate; renewed at half-life (default 24h)')
    .option('--cluster-id <id>', 'ID of the local cluster, matched against the clusterid header (env CLUSTER_ID, default Kubernetes)')
    .option('--kubeconfig <[clusterID=]path>', 'kubeconfig for TokenReview and pods; repeatable as clusterID=path; a bare path is the local cluster (default: KUBECONFIG, else in-cluster)', collect)
    .option('--token-audiences <list>', 'audiences required of bearer tokens, comma-separated (env TOKEN_AUDIENCES, default istio-ca)')
    .option('--tokenreview-cache-ttl <duration>', 'how long a successful TokenReview is cached, at most until the token expires (default 60s)')
    .option('--tokenreview-timeout <duration>', 'timeout of one TokenReview call (default 5s)')
    .option(
      '--max-inflight-tokenreviews <n>',
      `TokenReview calls allowed at once; requests needing another one get UNAVAILABLE at once (default ${DEFAULT_MAX_INFLIGHT_TOKENREVIEWS})`,
    )
    .option(
      '--max-csr-per-identity-per-minute <n>',
      `certificate requests per minute per caller identity before RESOURCE_EXHAUSTED, 0 for no limit (default ${DEFAULT_MAX_CSR_PER_IDENTITY_PER_MINUTE})`,
    )
    .option('--jwt-rule <json>', 'trusted JWT issuers: {"issuer","jwks_uri"|"jwks_file","audiences"} or a list (env JWT_RULE)')
    .option('--trusted-node-accounts <list>', 'namespace/serviceaccount,... allowed to use ImpersonatedIdentity (env CA_TRUSTED_NODE_ACCOUNTS)')
    .option('--default-workload-cert-ttl <duration>', 'TTL when a request asks for none (env DEFAULT_WORKLOAD_CERT_TTL, default 24h)')
    .option('--max-workload-cert-ttl <duration>', 'longest TTL a request may ask for (env MAX_WORKLOAD_CERT_TTL, default 90d)')
    .option('--workers <n|auto>', 'processes serving the gRPC API (one per CPU core scales signing; auto = the CPUs this container may use) (env MESHCA_CA_WORKERS, default 1)');
  // After ours: the key-source options add --kubeconfig only when the command has not (ours is repeatable).
  addKeySourceOptions(command);
  // The key-source options may grow a --trust-domain of their own; register it only once.
  if (!hasOption(command, '--trust-domain')) command.option('--trust-domain <domain>', 'SPIFFE trust domain (env TRUST_DOMAIN)');
  addLogLevelOption(command);
  return command;
}

function readKubeconfigs(flags: readonly string[] | undefined, env: Env, localClusterId: string): KubeconfigEntry[] {
  if (!flags || flags.length === 0) {
    return kubeConfigAvailable(undefined, env) ? [{ clusterId: localClusterId, path: undefined }] : [];
  }
  const entries: KubeconfigEntry[] = [];
  for (const value of flags) {
    const match = /^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$/.exec(value);
    const entry = match ? { clusterId: match[1]!, path: match[2]! } : { clusterId: localClusterId, path: value };
    if (entry.path.trim() === '') throw bad({ flag: '--kubeconfig' }, value, 'a kubeconfig path or clusterID=path');
    if (entries.some((e) => e.clusterId === entry.clusterId)) {
      throw new ConfigError(`--kubeconfig names cluster "${entry.clusterId}" twice (a bare path means the local cluster ${localClusterId})`);
    }
    entries.push(entry);
  }
  return entries;
}

function readDnsNames(flags: readonly string[] | undefined, env: Env): string[] {
  const fromFlags = (flags ?? []).flatMap((v) => v.split(',')).map((s) => s.trim()).filter(Boolean);
  const names = fromFlags.length > 0 ? fromFlags : [DEFAULT_SERVER_DNS];
  names.push(...readList(undefined, env, { env: 'ISTIOD_CUSTOM_HOST' }, []));
  for (const name of names) {
    if (!/^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/i.test(name) || name.length > 253) {
      throw bad({ flag: '--server-dns', env: 'ISTIOD_CUSTOM_HOST' }, name, 'DNS names such as meshca.istio-system.svc');
    }
  }
  return [...new Set(names.map((n) => n.toLowerCase()))];
}

export const MAX_CA_WORKERS = 64;

/** --workers / MESHCA_CA_WORKERS: a count, or `auto` for the CPUs this process may use (its cgroup quota, if any). */
function readWorkers(flagValue: string | undefined, env: Env): number {
  const source = { flag: '--workers', env: 'MESHCA_CA_WORKERS' };
  const value = raw(flagValue, env, source);
  if (value === undefined) return 1;
  if (value.trim().toLowerCase() === 'auto') return Math.min(usableCpus(), MAX_CA_WORKERS);
  const count = /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (!(count >= 1 && count <= MAX_CA_WORKERS)) throw bad(source, value, `a number of processes from 1 to ${MAX_CA_WORKERS}, or auto`);
  return count;
}

/** The CPUs this process may use: the cgroup v2 CPU quota (a Kubernetes CPU limit) rounded up, else every CPU. */
export function usableCpus(cpuMaxPath = '/sys/fs/cgroup/cpu.max'): number {
  const cpus = availableParallelism();
  let quota: string;
  try {
    quota = readFileSync(cpuMaxPath, 'utf8');
  } catch {
    return cpus;
  }
  const match = /^(\d+)\s+(\d+)/.exec(quota.trim());
  if (!match) return cpus; // "max 100000": no limit
  return Math.max(1, Math.min(cpus, Math.ceil(Number(match[1]) / Number(match[2]))));
}

/** Reads the whole `ca` configuration. Does not touch the network or the key files. */
export function readCaServerConfig(flags: CaServerFlags, env: Env): CaServerConfig {
  const keySource = readKeySourceConfig(flags, env);
  const clusterId = readString(flags.clusterId, env, { flag: '--cluster-id', env: 'CLUSTER_ID' }, 'Kubernetes');
  const tokenAudiences = readList(flags.tokenAudiences, env, { flag: '--token-audiences', env: 'TOKEN_AUDIENCES' }, ['istio-ca']);
  if (tokenAudiences.length === 0) throw bad({ flag: '--token-audiences', env: 'TOKEN_AUDIENCES' }, '', 'at least one audience');
  const jwtText = raw(flags.jwtRule, env, { flag: '--jwt-rule', env: 'JWT_RULE' });
  const jwtRules = jwtText === undefined ? [] : parseJwtRules(jwtText, flags.jwtRule !== undefined ? '--jwt-rule' : 'JWT_RULE');
  const nodeAccounts = parseNodeAccounts(readList(flags.trustedNodeAccounts, env, { flag: '--trusted-node-accounts', env: 'CA_TRUSTED_NODE_ACCOUNTS' }, []));
  if ('bad' in nodeAccounts) throw bad({ flag: '--trusted-node-accounts', env: 'CA_TRUSTED_NODE_ACCOUNTS' }, nodeAccounts.bad, 'namespace/serviceaccount entries');
  const maxWorkloadCertTtlSeconds = readDuration(flags.maxWorkloadCertTtl, env, { flag: '--max-workload-cert-ttl', env: 'MAX_WORKLOAD_CERT_TTL' }, 90 * 86400, { min: 60 });
  const defaultWorkloadCertTtlSeconds = readDuration(flags.defaultWorkloadCertTtl, env, { flag: '--default-workload-cert-ttl', env: 'DEFAULT_WORKLOAD_CERT_TTL' }, 86400, { min: 60 });
  if (defaultWorkloadCertTtlSeconds > maxWorkloadCertTtlSeconds) {
    throw new ConfigError(
      `DEFAULT_WORKLOAD_CERT_TTL (${defaultWorkloadCertTtlSeconds}s) is longer than MAX_WORKLOAD_CERT_TTL (${maxWorkloadCertTtlSeconds}s); lower the default or raise the maximum`,
    );
  }
  return {
    grpcAddress: readAddress(flags.grpcAddr, env, { flag: '--grpc-addr' }, '0.0.0.0:15012'),
    monitoringAddress: readAddress(flags.monitoringAddr, env, { flag: '--monitoring-addr' }, '0.0.0.0:15014'),
    plaintext: flags.plaintext === true,
    serverDnsNames: readDnsNames(flags.serverDns, env),
    serverCertTtlSeconds: readDuration(flags.serverCertTtl, env, { flag: '--server-cert-ttl' }, 86400, { min: 2 }),
    trustDomain: keySource.trustDomain,
    clusterId,
    kubeconfigs: readKubeconfigs(flags.kubeconfig, env, clusterId),
    tokenAudiences,
    tokenReviewCacheTtlSeconds: readDuration(flags.tokenreviewCacheTtl, env, { flag: '--tokenreview-cache-ttl' }, 60, { min: 0 }),
    tokenReviewTimeoutSeconds: readDuration(flags.tokenreviewTimeout, env, { flag: '--tokenreview-timeout' }, 5, { min: 0.1, max: 300 }),
    maxInflightTokenReviews: readInteger(flags.maxInflightTokenreviews, env, { flag: '--max-inflight-tokenreviews' }, DEFAULT_MAX_INFLIGHT_TOKENREVIEWS, {
      min: 1,
      max: 100_000,
    }),
    maxCsrPerIdentityPerMinute: readInteger(
      flags.maxCsrPerIdentityPerMinute,
      env,
      { flag: '--max-csr-per-identity-per-minute' },
      DEFAULT_MAX_CSR_PER_IDENTITY_PER_MINUTE,
      { min: 0, max: 10_000_000 },
    ),
    jwtRules,
    trustedNodeAccounts: nodeAccounts,
    defaultWorkloadCertTtlSeconds,
    maxWorkloadCertTtlSeconds,
    shutdownGraceSeconds: 10,
    logLevel: readLogLevel(flags.logLevel, env),
    keySource,
    workers: readWorkers(flags.workers, env),
  };
}

/** A CA with no way to authenticate a new workload would refuse every request: say so at start-up instead. */
export function assertCanAuthenticate(config: CaServerConfig): void {
  if (config.kubeconfigs.length === 0 && config.jwtRules.length === 0) {
    throw new ConfigError(
      'no way to authenticate workloads: give --kubeconfig FILE (or set KUBECONFIG, or run in a cluster) for TokenReview, or JWT_RULE for JWT issuers',
    );
  }
}
