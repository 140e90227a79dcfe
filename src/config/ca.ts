/**
 * Configuration of `meshca ca` (and the CA inside `meshca dev`): flags, Istio-named environment variables and
 * their defaults, each defined once in CA_SERVER_FLAGS (README's tables are checked against the registered
 * options by test/flags.test.ts). Every bad value is a ConfigError naming the flag or variable.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import { parseJwtRules, type JwtRule } from '../authn/jwt.js';
import { parseNodeAccounts, type NodeAccount } from '../authn/impersonation.js';
import { aliasProblem } from '../authn/trust-domains.js';
import { DEFAULT_MAX_INFLIGHT_TOKENREVIEWS } from '../authn/tokenreview.js';
import { addKeySourceOptions, readKeySourceConfig, type KeySourceConfig, type KeySourceFlags } from '../ca/index.js';
import { addKubernetesPluginOptions, readKubernetesPlugins, type ConfiguredKubernetesPlugin } from '../ca/kubernetes/index.js';
import { parseFederationTargets, splitFederateWithEnv } from '../ca/federation/targets.js';
import type { FederationTarget } from '../ca/federation/types.js';
import { bundleEndpointIdProblem, DEFAULT_BUNDLE_ENDPOINT_PATH, type BundleEndpointConfig } from '../ca/federation/bundle-endpoint.js';
import { LOG_LEVELS, type LogFormat } from '../log.js';
import { addFlag, addLogOptions, collect, longFlag, readLogFormat, readLogLevel, sourceOf, type FlagSpec } from './flags.js';
import { bad, ConfigError, raw, readAddress, readBoolean, readDuration, readEnum, readInteger, readList, readString, type Env } from './env.js';
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
  /**
   * --trust-domain-aliases (Istio's meshConfig.trustDomainAliases): former trust domains whose identities (renewal
   * certificates, ImpersonatedIdentity) are accepted and issued in `trustDomain`; validated, never `trustDomain`.
   */
  trustDomainAliases: readonly string[];
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
  logFormat: LogFormat;
  keySource: KeySourceConfig;
  /** Processes serving the gRPC API; above 1, a primary process owns the key source and forks this many workers. */
  workers: number;
  /** Recent CreateCertificate decisions kept in memory for /debug/decisions (per process); 0 keeps none. */
  decisionRecordSize: number;
  /** The Kubernetes plugins turned on (ca/kubernetes/: CSR signer, ClusterTrustBundle, ...); run by the primary only. */
  kubernetesPlugins: ConfiguredKubernetesPlugin[];
  /** Other trust domains whose bundles this CA fetches or reads (--federate-with); none by default. */
  federation: { targets: FederationTarget[] };
  /** The SPIFFE bundle endpoint (--bundle-endpoint-*); absent when --bundle-endpoint-addr is not set. */
  bundleEndpoint?: BundleEndpointConfig;
}

export interface BundleEndpointFlags {
  bundleEndpointAddr?: string;
  bundleEndpointProfile?: string;
  bundleEndpointCert?: string;
  bundleEndpointKey?: string;
  bundleEndpointRefreshHint?: string;
  bundleEndpointSpiffeId?: string;
}

export interface CaServerFlags extends KeySourceFlags, BundleEndpointFlags {
  grpcAddr?: string;
  monitoringAddr?: string;
  plaintext?: boolean;
  serverDns?: string[];
  serverCertTtl?: string;
  trustDomainAliases?: string;
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
  logFormat?: string;
  workers?: string;
  decisionRecordSize?: string;
  federateWith?: string[];
}

/** Services the CA answers as, in its namespace: its own (deploy/kubernetes/ca.yaml) and istiod's, like istiod's own default. */
const DEFAULT_SERVER_SERVICES = ['meshca', 'istiod'] as const;
const DEFAULT_SERVER_DNS = `${DEFAULT_SERVER_SERVICES.map((service) => `${service}.<ns>.svc`).join(',')}, <ns> being POD_NAMESPACE or istio-system`;
const DEFAULT_MAX_CSR_PER_IDENTITY_PER_MINUTE = 600;
export const DEFAULT_DECISION_RECORD_SIZE = 1000;
export const MAX_DECISION_RECORD_SIZE = 100_000;

/** Every flag of `meshca ca` other than the key source's (those are the key source's own, see src/ca). */
export const CA_SERVER_FLAGS = {
  grpcAddr: { flags: '--grpc-addr <host:port>', description: 'gRPC (CA API) listen address', env: ['MESHCA_GRPC_ADDR'], defaultText: '0.0.0.0:15012' },
  monitoringAddr: { flags: '--monitoring-addr <host:port>', description: 'HTTP listen address for /metrics, /ready, /healthz, /debug/ca', env: ['MESHCA_MONITORING_ADDR'], defaultText: '0.0.0.0:15014' },
  plaintext: { flags: '--plaintext', description: 'serve gRPC without TLS (local debugging only)', env: ['MESHCA_PLAINTEXT'], defaultText: 'false' },
  serverDns: {
    flags: '--server-dns <names>',
    description: 'DNS names of the serving certificate, comma-separated, repeatable; ISTIOD_CUSTOM_HOST adds more',
    env: ['ISTIOD_CUSTOM_HOST'],
    defaultText: DEFAULT_SERVER_DNS,
  },
  serverCertTtl: { flags: '--server-cert-ttl <duration>', description: 'lifetime of the serving certificate; renewed at half-life', env: ['MESHCA_SERVER_CERT_TTL'], defaultText: '24h' },
  clusterId: { flags: '--cluster-id <id>', description: 'ID of the local cluster, matched against the clusterid header', env: ['CLUSTER_ID'], defaultText: 'Kubernetes' },
  kubeconfig: {
    flags: '--kubeconfig <[clusterID=]path>',
    description: 'kubeconfig for TokenReview and pods; repeatable as clusterID=path; a bare path is the local cluster',
    env: ['KUBECONFIG'],
    defaultText: 'KUBECONFIG, else in-cluster',
  },
  tokenAudiences: { flags: '--token-audiences <list>', description: 'audiences required of bearer tokens, comma-separated', env: ['TOKEN_AUDIENCES'], defaultText: 'istio-ca' },
  tokenreviewCacheTtl: {
    flags: '--tokenreview-cache-ttl <duration>',
    description: 'how long a successful TokenReview is cached, at most until the token expires',
    env: ['MESHCA_TOKENREVIEW_CACHE_TTL'],
    defaultText: '60s',
  },
  tokenreviewTimeout: { flags: '--tokenreview-timeout <duration>', description: 'timeout of one TokenReview call', env: ['MESHCA_TOKENREVIEW_TIMEOUT'], defaultText: '5s' },
  maxInflightTokenreviews: {
    flags: '--max-inflight-tokenreviews <n>',
    description: 'TokenReview calls allowed at once; requests needing another one get UNAVAILABLE at once',
    env: ['MESHCA_MAX_INFLIGHT_TOKENREVIEWS'],
    defaultText: String(DEFAULT_MAX_INFLIGHT_TOKENREVIEWS),
  },
  maxCsrPerIdentityPerMinute: {
    flags: '--max-csr-per-identity-per-minute <n>',
    description: 'certificate requests per minute per caller identity before RESOURCE_EXHAUSTED, 0 for no limit',
    env: ['MESHCA_MAX_CSR_PER_IDENTITY_PER_MINUTE'],
    defaultText: String(DEFAULT_MAX_CSR_PER_IDENTITY_PER_MINUTE),
  },
  jwtRule: { flags: '--jwt-rule <json>', description: 'trusted JWT issuers: {"issuer","jwks_uri"|"jwks_file","audiences"} or a list', env: ['JWT_RULE'] },
  trustedNodeAccounts: {
    flags: '--trusted-node-accounts <list>',
    description: 'namespace/serviceaccount,... allowed to use ImpersonatedIdentity',
    env: ['CA_TRUSTED_NODE_ACCOUNTS'],
  },
  defaultWorkloadCertTtl: { flags: '--default-workload-cert-ttl <duration>', description: 'TTL when a request asks for none', env: ['DEFAULT_WORKLOAD_CERT_TTL'], defaultText: '24h' },
  maxWorkloadCertTtl: { flags: '--max-workload-cert-ttl <duration>', description: 'longest TTL a request may ask for', env: ['MAX_WORKLOAD_CERT_TTL'], defaultText: '90d' },
  workers: {
    flags: '--workers <n|auto>',
    description: 'processes serving the gRPC API (one per CPU core scales signing; auto = the CPUs this container may use)',
    env: ['MESHCA_CA_WORKERS'],
    defaultText: '1',
  },
  trustDomain: { flags: '--trust-domain <domain>', description: 'SPIFFE trust domain', env: ['TRUST_DOMAIN'], defaultText: 'cluster.local' },
  trustDomainAliases: {
    flags: '--trust-domain-aliases <list>',
    description: "former trust domains, comma-separated: their identities are accepted and issued in --trust-domain (Istio's meshConfig.trustDomainAliases)",
    env: ['MESHCA_TRUST_DOMAIN_ALIASES'],
    defaultText: 'none',
  },
  decisionRecordSize: {
    flags: '--decision-record-size <n>',
    description: 'recent certificate decisions (issued, refused and why) kept in memory for /debug/decisions, 0 for none',
    env: ['MESHCA_DECISION_RECORD_SIZE'],
    defaultText: String(DEFAULT_DECISION_RECORD_SIZE),
  },
  federateWith: {
    flags: '--federate-with <td=source>',
    description:
      'federate with another trust domain, repeatable: <td>=<https URL>[,profile=https_web][,ca-file=<pem>], <td>=<https URL>,profile=https_spiffe,endpoint-id=spiffe://<td>/...[,bundle=<file>], or <td>=file:<path> (variable: entries separated by spaces or ";")',
    env: ['MESHCA_FEDERATE_WITH'],
  },
} as const satisfies Record<string, FlagSpec>;

const F = CA_SERVER_FLAGS;

/** The SPIFFE bundle endpoint's flags (docs/federation.md#bundle-endpoint). */
export const BUNDLE_ENDPOINT_FLAGS = {
  bundleEndpointAddr: {
    flags: '--bundle-endpoint-addr <host:port>',
    description: "HTTPS listen address of the SPIFFE bundle endpoint serving this CA's roots to federated trust domains, e.g. :8443; off when unset",
    env: ['MESHCA_BUNDLE_ENDPOINT_ADDR'],
    defaultText: 'off',
  },
  bundleEndpointProfile: {
    flags: '--bundle-endpoint-profile <https_spiffe|https_web>',
    description: "how peers authenticate the endpoint: https_spiffe (an SVID from this CA) or https_web (--bundle-endpoint-cert/-key)",
    env: ['MESHCA_BUNDLE_ENDPOINT_PROFILE'],
    defaultText: 'https_spiffe',
  },
  bundleEndpointCert: { flags: '--bundle-endpoint-cert <file>', description: 'https_web: Web PKI certificate chain (PEM) of the endpoint, reloaded on change', env: ['MESHCA_BUNDLE_ENDPOINT_CERT'] },
  bundleEndpointKey: { flags: '--bundle-endpoint-key <file>', description: 'https_web: private key (PEM) of --bundle-endpoint-cert, reloaded on change', env: ['MESHCA_BUNDLE_ENDPOINT_KEY'] },
  bundleEndpointRefreshHint: {
    flags: '--bundle-endpoint-refresh-hint <duration>',
    description: 'spiffe_refresh_hint of the bundle served: how often peers should fetch it',
    env: ['MESHCA_BUNDLE_ENDPOINT_REFRESH_HINT'],
    defaultText: '5m',
  },
  bundleEndpointSpiffeId: {
    flags: '--bundle-endpoint-spiffe-id <id>',
    description: "https_spiffe: SPIFFE ID of the endpoint's SVID (peers pin it); not a workload ID (ns/.../sa/...)",
    env: ['MESHCA_BUNDLE_ENDPOINT_SPIFFE_ID'],
    defaultText: `spiffe://<trust-domain>${DEFAULT_BUNDLE_ENDPOINT_PATH}`,
  },
} as const satisfies Record<string, FlagSpec>;


function hasOption(command: Command, long: string): boolean {
  return command.options.some((o) => o.long === long);
}

/** The SPIFFE federation flags (docs/federation.md), shared by `meshca ca` and `meshca dev`. */
export function addFederationOptions(command: Command): Command {
  addFlag(command, F.federateWith, collect);
  for (const spec of Object.values(BUNDLE_ENDPOINT_FLAGS)) addFlag(command, spec);
  return command;
}

/** Registers every `ca` flag (including the key-source flags) on a command. */
export function addCaServerOptions(command: Command): Command {
  addFlag(command, F.grpcAddr);
  addFlag(command, F.monitoringAddr);
  addFlag(command, F.plaintext);
  addFlag(command, F.serverDns, collect);
  addFlag(command, F.serverCertTtl);
  addFlag(command, F.clusterId);
  addFlag(command, F.kubeconfig, collect);
  for (const spec of [F.tokenAudiences, F.tokenreviewCacheTtl, F.tokenreviewTimeout, F.maxInflightTokenreviews, F.maxCsrPerIdentityPerMinute]) addFlag(command, spec);
  for (const spec of [F.jwtRule, F.trustedNodeAccounts, F.defaultWorkloadCertTtl, F.maxWorkloadCertTtl, F.workers]) addFlag(command, spec);
  addFlag(command, F.decisionRecordSize);
  addFederationOptions(command);
  addKubernetesPluginOptions(command);
  // After ours: the key-source options add --kubeconfig only when the command has not (ours is repeatable).
  addKeySourceOptions(command);
  // The key-source options may grow a --trust-domain of their own; register it only once.
  if (!hasOption(command, longFlag(F.trustDomain))) addFlag(command, F.trustDomain);
  addFlag(command, F.trustDomainAliases);
  addLogOptions(command);
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

/**
 * The default serving names follow the namespace the CA runs in (POD_NAMESPACE, as istiod's do), so that a CA
 * deployed outside istio-system still presents the name its clients dial.
 */
function defaultDnsNames(env: Env): string[] {
  const namespace = readString(undefined, env, { env: 'POD_NAMESPACE' }, 'istio-system');
  if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(namespace)) {
    throw bad({ env: 'POD_NAMESPACE' }, namespace, 'a Kubernetes namespace name: lowercase letters, digits and "-", at most 63');
  }
  return DEFAULT_SERVER_SERVICES.map((service) => `${service}.${namespace}.svc`);
}

function readDnsNames(flags: readonly string[] | undefined, env: Env): string[] {
  const fromFlags = (flags ?? []).flatMap((v) => v.split(',')).map((s) => s.trim()).filter(Boolean);
  const names = fromFlags.length > 0 ? fromFlags : defaultDnsNames(env);
  names.push(...readList(undefined, env, { env: 'ISTIOD_CUSTOM_HOST' }, []));
  for (const name of names) {
    if (!/^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/i.test(name) || name.length > 253) {
      throw bad({ flag: '--server-dns', env: 'ISTIOD_CUSTOM_HOST' }, name, 'DNS names such as meshca.istio-system.svc');
    }
  }
  return [...new Set(names.map((n) => n.toLowerCase()))];
}

const MAX_CA_WORKERS = 64;

/** --workers / MESHCA_CA_WORKERS: a count, or `auto` for the CPUs this process may use (its cgroup quota, if any). */
function readWorkers(flagValue: string | undefined, env: Env): number {
  const source = sourceOf(F.workers);
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

/** --federate-with (repeatable) or MESHCA_FEDERATE_WITH (entries separated by whitespace or ';'). */
function readFederation(flags: readonly string[] | undefined, env: Env, own: { trustDomain: string; aliases: readonly string[] }): { targets: FederationTarget[] } {
  const source = sourceOf(F.federateWith);
  if (flags && flags.length > 0) return { targets: parseFederationTargets(flags, own, source.flag!) };
  const value = raw(undefined, env, source);
  return { targets: value === undefined ? [] : parseFederationTargets(splitFederateWithEnv(value), own, source.env!) };
}

const B = BUNDLE_ENDPOINT_FLAGS;
const MAX_REFRESH_HINT_SECONDS = 30 * 86400;

/** --bundle-endpoint-*: undefined when no address is set (then no other bundle-endpoint setting may be). */
export function readBundleEndpointConfig(flags: BundleEndpointFlags, env: Env, trustDomain: string): BundleEndpointConfig | undefined {
  const given = (Object.keys(B) as (keyof typeof B)[]).filter((key) => raw(flags[key], env, sourceOf(B[key])) !== undefined);
  if (raw(flags.bundleEndpointAddr, env, sourceOf(B.bundleEndpointAddr)) === undefined) {
    if (given.length > 0) throw new ConfigError(`${given.map((key) => longFlag(B[key])).join(', ')} set without --bundle-endpoint-addr: set the address to serve the bundle endpoint, or drop them`);
    return undefined;
  }
  const address = readAddress(flags.bundleEndpointAddr, env, sourceOf(B.bundleEndpointAddr), '');
  const kind = readEnum(flags.bundleEndpointProfile, env, sourceOf(B.bundleEndpointProfile), ['https_spiffe', 'https_web'] as const, 'https_spiffe');
  const refreshHintSeconds = readDuration(flags.bundleEndpointRefreshHint, env, sourceOf(B.bundleEndpointRefreshHint), 300, { min: 1, max: MAX_REFRESH_HINT_SECONDS });
  const certFile = raw(flags.bundleEndpointCert, env, sourceOf(B.bundleEndpointCert));
  const keyFile = raw(flags.bundleEndpointKey, env, sourceOf(B.bundleEndpointKey));
  const spiffeIdText = raw(flags.bundleEndpointSpiffeId, env, sourceOf(B.bundleEndpointSpiffeId));
  if (kind === 'https_web') {
    if (certFile === undefined || keyFile === undefined) {
      throw new ConfigError('--bundle-endpoint-profile https_web needs --bundle-endpoint-cert and --bundle-endpoint-key: the Web PKI certificate chain and key the endpoint serves');
    }
    if (spiffeIdText !== undefined) throw new ConfigError('--bundle-endpoint-spiffe-id is for --bundle-endpoint-profile https_spiffe; with https_web the endpoint serves --bundle-endpoint-cert');
    return { address, profile: { kind, certFile, keyFile }, refreshHintSeconds };
  }
  if (certFile !== undefined || keyFile !== undefined) {
    throw new ConfigError('--bundle-endpoint-cert/--bundle-endpoint-key are for --bundle-endpoint-profile https_web; with https_spiffe (the default) the CA issues the endpoint its own SVID');
  }
  const spiffeId = spiffeIdText ?? `spiffe://${trustDomain}${DEFAULT_BUNDLE_ENDPOINT_PATH}`;
  const problem = bundleEndpointIdProblem(spiffeId, trustDomain);
  if (problem) throw bad(sourceOf(B.bundleEndpointSpiffeId), spiffeId, problem);
  return { address, profile: { kind, spiffeId }, refreshHintSeconds };
}

/** --trust-domain-aliases: each a valid SPIFFE trust domain, none the current one, no repeats. */
export function readTrustDomainAliases(flagValue: string | undefined, env: Env, trustDomain: string): string[] {
  const source = sourceOf(F.trustDomainAliases);
  const aliases = readList(flagValue, env, source, []);
  for (const alias of aliases) {
    const problem = aliasProblem(alias, trustDomain);
    if (problem) throw bad(source, alias, `former SPIFFE trust domains, comma-separated; ${problem}`);
  }
  return [...new Set(aliases)];
}

/** Reads the whole `ca` configuration. Does not touch the network or the key files. */
export function readCaServerConfig(flags: CaServerFlags, env: Env): CaServerConfig {
  const keySource = readKeySourceConfig(flags, env);
  const trustDomainAliases = readTrustDomainAliases(flags.trustDomainAliases, env, keySource.trustDomain);
  const clusterId = readString(flags.clusterId, env, sourceOf(F.clusterId), 'Kubernetes');
  const tokenAudiences = readList(flags.tokenAudiences, env, sourceOf(F.tokenAudiences), ['istio-ca']);
  if (tokenAudiences.length === 0) throw bad(sourceOf(F.tokenAudiences), '', 'at least one audience');
  const jwtText = raw(flags.jwtRule, env, sourceOf(F.jwtRule));
  const jwtRules = jwtText === undefined ? [] : parseJwtRules(jwtText, flags.jwtRule !== undefined ? '--jwt-rule' : 'JWT_RULE');
  const nodeAccounts = parseNodeAccounts(readList(flags.trustedNodeAccounts, env, sourceOf(F.trustedNodeAccounts), []));
  if ('bad' in nodeAccounts) throw bad(sourceOf(F.trustedNodeAccounts), nodeAccounts.bad, 'namespace/serviceaccount entries');
  const maxWorkloadCertTtlSeconds = readDuration(flags.maxWorkloadCertTtl, env, sourceOf(F.maxWorkloadCertTtl), 90 * 86400, { min: 60 });
  const defaultWorkloadCertTtlSeconds = readDuration(flags.defaultWorkloadCertTtl, env, sourceOf(F.defaultWorkloadCertTtl), 86400, { min: 60 });
  if (defaultWorkloadCertTtlSeconds > maxWorkloadCertTtlSeconds) {
    throw new ConfigError(
      `DEFAULT_WORKLOAD_CERT_TTL (${defaultWorkloadCertTtlSeconds}s) is longer than MAX_WORKLOAD_CERT_TTL (${maxWorkloadCertTtlSeconds}s); lower the default or raise the maximum`,
    );
  }
  return {
    grpcAddress: readAddress(flags.grpcAddr, env, sourceOf(F.grpcAddr), '0.0.0.0:15012'),
    monitoringAddress: readAddress(flags.monitoringAddr, env, sourceOf(F.monitoringAddr), '0.0.0.0:15014'),
    plaintext: readBoolean(flags.plaintext, env, sourceOf(F.plaintext), false),
    serverDnsNames: readDnsNames(flags.serverDns, env),
    serverCertTtlSeconds: readDuration(flags.serverCertTtl, env, sourceOf(F.serverCertTtl), 86400, { min: 2 }),
    trustDomain: keySource.trustDomain,
    trustDomainAliases,
    clusterId,
    kubeconfigs: readKubeconfigs(flags.kubeconfig, env, clusterId),
    tokenAudiences,
    tokenReviewCacheTtlSeconds: readDuration(flags.tokenreviewCacheTtl, env, sourceOf(F.tokenreviewCacheTtl), 60, { min: 0 }),
    tokenReviewTimeoutSeconds: readDuration(flags.tokenreviewTimeout, env, sourceOf(F.tokenreviewTimeout), 5, { min: 0.1, max: 300 }),
    maxInflightTokenReviews: readInteger(flags.maxInflightTokenreviews, env, sourceOf(F.maxInflightTokenreviews), DEFAULT_MAX_INFLIGHT_TOKENREVIEWS, {
      min: 1,
      max: 100_000,
    }),
    maxCsrPerIdentityPerMinute: readInteger(
      flags.maxCsrPerIdentityPerMinute,
      env,
      sourceOf(F.maxCsrPerIdentityPerMinute),
      DEFAULT_MAX_CSR_PER_IDENTITY_PER_MINUTE,
      { min: 0, max: 10_000_000 },
    ),
    jwtRules,
    trustedNodeAccounts: nodeAccounts,
    defaultWorkloadCertTtlSeconds,
    maxWorkloadCertTtlSeconds,
    shutdownGraceSeconds: 10,
    logLevel: readLogLevel(flags.logLevel, env),
    logFormat: readLogFormat(flags.logFormat, env),
    keySource,
    kubernetesPlugins: readKubernetesPlugins(flags as Readonly<Record<string, unknown>>, env),
    workers: readWorkers(flags.workers, env),
    decisionRecordSize: readInteger(flags.decisionRecordSize, env, sourceOf(F.decisionRecordSize), DEFAULT_DECISION_RECORD_SIZE, {
      min: 0,
      max: MAX_DECISION_RECORD_SIZE,
    }),
    // A federated bundle may not speak for this CA's trust domain, nor for one of its aliases.
    federation: readFederation(flags.federateWith, env, { trustDomain: keySource.trustDomain, aliases: trustDomainAliases }),
    ...optionalBundleEndpoint(readBundleEndpointConfig(flags, env, keySource.trustDomain)),
  };
}

function optionalBundleEndpoint(config: BundleEndpointConfig | undefined): { bundleEndpoint?: BundleEndpointConfig } {
  return config ? { bundleEndpoint: config } : {};
}

/** A CA with no way to authenticate a new workload would refuse every request: say so at start-up instead. */
export function assertCanAuthenticate(config: CaServerConfig): void {
  if (config.kubeconfigs.length === 0 && config.jwtRules.length === 0) {
    throw new ConfigError(
      'no way to authenticate workloads: give --kubeconfig FILE (or set KUBECONFIG, or run in a cluster) for TokenReview, or JWT_RULE for JWT issuers',
    );
  }
}
