/**
 * `meshca status`: checks, from where it runs, what a workload here needs of the CA, one line each (PASS, WARN,
 * FAIL with how to fix it, or SKIP with why), exiting non-zero on any FAIL:
 *  - the CA's gRPC address answers TLS with a certificate that chains to the root file and names the expected
 *    server name (ISTIOD_SAN, else the host dialled);
 *  - the CA's monitoring server answers /debug/ca (its trust bundle), and the root file holds that bundle;
 *  - the clocks agree (the HTTP Date of the CA's monitoring server and of the API server);
 *  - with a kubeconfig: ConfigMap istio-ca-root-cert holds the CA's bundle in every namespace, and the kubeconfig's
 *    user may do what the CA does (SelfSubjectAccessReview for each rule of deploy/kubernetes/ca-rbac.yaml).
 */
import { readFileSync } from 'node:fs';
import type { SecretsReport } from '../agent/debug.js';
import { isIP } from 'node:net';
import * as tls from 'node:tls';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Command } from 'commander';
import { ROOT_CONFIGMAP_KEY, ROOT_CONFIGMAP_NAME } from '../ca/index.js';
import { fingerprint } from '../ca/material.js';
import { AGENT_FLAGS, DEFAULT_CA_ADDR, DEFAULT_CA_ROOT_CERT } from '../config/agent.js';
import { readAddress, readDuration, readEnum, readOptionalString, readString, type Env } from '../config/env.js';
import { addFlag, sourceOf, type FlagSpec } from '../config/flags.js';
import { callWithDeadline, describeKubeError } from '../kube/api.js';
import { kubeClient } from '../kube/client.js';
import { kubeConfigAvailable, loadKubeConfigWithOrigin } from '../kube/config.js';
import { certificatesFromPem, parseCertificate } from '../pki/index.js';
import { checkServerIdentityBySan } from '../pki/server-identity.js';
import { CA_MONITORING_FLAG, getFromMonitoring, monitoringBaseUrl } from './ca-monitoring.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';
import { debugUrl, readSecretsReport } from './secrets.js';

export type Verdict = 'PASS' | 'WARN' | 'FAIL' | 'SKIP';

export interface CheckResult {
  verdict: Verdict;
  check: string;
  detail: string;
  /** What to do about a FAIL or WARN. */
  fix?: string;
}

export const STATUS_FLAGS = {
  serverName: { flags: '--server-name <name>', description: "TLS name expected of the CA's certificate", env: ['ISTIOD_SAN'], defaultText: 'host of --ca-addr' },
  kubeconfig: { flags: '--kubeconfig <file>', description: 'kubeconfig for the ConfigMap and RBAC checks', env: ['KUBECONFIG'], defaultText: 'KUBECONFIG, else in-cluster, else skipped' },
  caNamespace: { flags: '--ca-namespace <namespace>', description: "the CA's namespace (its Secret istio-ca-secret)", env: ['POD_NAMESPACE'], defaultText: 'istio-system' },
  maxClockSkew: { flags: '--max-clock-skew <duration>', description: 'warn when a clock differs from this one by more', defaultText: '5s' },
  timeout: { flags: '--timeout <duration>', description: 'deadline of each check', defaultText: '5s' },
  agentStatusAddr: {
    flags: '--agent-status-addr <host:port>',
    description: "a node agent's status server (its --status-addr; it answers callers on its own host): compare the ROOTCA bundle it serves Envoys with the CA's",
    env: ['MESHCA_STATUS_ADDR'],
    defaultText: 'not compared',
  },
} as const satisfies Record<string, FlagSpec>;

interface StatusFlags {
  caAddr?: string;
  caRootCert?: string;
  serverName?: string;
  monitoringAddr?: string;
  kubeconfig?: string;
  caNamespace?: string;
  maxClockSkew?: string;
  timeout?: string;
  agentStatusAddr?: string;
  output: string;
}

export interface StatusOptions {
  caAddr: string;
  rootCertPath: string;
  serverName: string;
  monitoring: URL;
  kubeconfig: string | undefined;
  caNamespace: string;
  maxClockSkewSeconds: number;
  timeoutMs: number;
  env: Env;
  /** A node agent's status server, whose ROOTCA bundle is compared with the CA's; undefined: not compared. */
  agentStatus?: { host: string; port: number; text: string };
  /** This machine's clock (epoch ms). */
  now: () => number;
}

/** One permission the CA needs (deploy/kubernetes/ca-rbac.yaml), and when it needs it. */
interface Permission {
  verb: string;
  group: string;
  resource: string;
  name?: string;
  /** In the CA's namespace; cluster-wide otherwise. */
  namespaced?: boolean;
  purpose: string;
  /** Needed by every CA (FAIL when missing), or only by some configurations (WARN). */
  needed: 'always' | 'tokenreview' | 'impersonation' | 'kube-store';
}

const CA_PERMISSIONS: readonly Permission[] = [
  { verb: 'create', group: 'authentication.k8s.io', resource: 'tokenreviews', purpose: 'TokenReview authentication', needed: 'tokenreview' },
  { verb: 'list', group: '', resource: 'pods', purpose: 'node impersonation', needed: 'impersonation' },
  { verb: 'watch', group: '', resource: 'pods', purpose: 'node impersonation', needed: 'impersonation' },
  { verb: 'list', group: '', resource: 'namespaces', purpose: 'root distribution', needed: 'always' },
  { verb: 'watch', group: '', resource: 'namespaces', purpose: 'root distribution', needed: 'always' },
  { verb: 'create', group: '', resource: 'configmaps', purpose: 'root distribution', needed: 'always' },
  ...(['get', 'update', 'watch'] as const).map((verb): Permission => ({ verb, group: '', resource: 'configmaps', name: ROOT_CONFIGMAP_NAME, purpose: 'root distribution', needed: 'always' })),
  { verb: 'create', group: '', resource: 'secrets', namespaced: true, purpose: '--ca-store kubernetes', needed: 'kube-store' },
  ...(['get', 'update', 'watch'] as const).map(
    (verb): Permission => ({ verb, group: '', resource: 'secrets', name: 'istio-ca-secret', namespaced: true, purpose: '--ca-store kubernetes', needed: 'kube-store' }),
  ),
];

/** What the CA says of itself on /debug/ca (the parts checked here). */
interface CaFacts {
  roots: { subject: string; fingerprintSha256: string }[];
  authenticators: string[];
  trustedNodeAccounts: string[];
}

function readCaFacts(body: unknown): CaFacts | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const { roots, authenticators, trustedNodeAccounts } = body as Record<string, unknown>;
  if (!Array.isArray(roots) || !roots.every((r) => typeof r === 'object' && r !== null && typeof (r as { fingerprintSha256?: unknown }).fingerprintSha256 === 'string')) return undefined;
  const strings = (value: unknown): string[] => (Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : []);
  return { roots: roots as CaFacts['roots'], authenticators: strings(authenticators), trustedNodeAccounts: strings(trustedNodeAccounts) };
}

/** SHA-256 fingerprints (the form /debug/ca shows) of the certificates in a PEM bundle. */
function fingerprintsOf(pem: string): string[] {
  return certificatesFromPem(pem).map((der) => fingerprint(parseCertificate(der)));
}

const short = (fp: string): string => fp.slice(0, 23);

// ---------------------------------------------------------------------------------------------------------------
// The CA's gRPC address: TCP, TLS, chain and name

function splitHostPort(address: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  if (!match) return undefined;
  return { host: match[1] ?? match[2]!, port: Number(match[3]) };
}

const UNKNOWN_ROOT_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
]);

export async function checkCaTls(options: StatusOptions, rootsPem: string | undefined): Promise<CheckResult> {
  const check = 'CA TLS';
  const address = splitHostPort(options.caAddr);
  if (!address) return { verdict: 'FAIL', check, detail: `--ca-addr (env CA_ADDR) "${options.caAddr}" is not host:port`, fix: 'give the CA gRPC address, e.g. meshca.istio-system.svc:15012' };
  if (rootsPem === undefined) return { verdict: 'SKIP', check, detail: 'no root file to verify the CA with (see the root file line)' };
  const name = options.serverName;
  const nameSource = `(${options.serverName === address.host ? 'the host of --ca-addr' : '--server-name / ISTIOD_SAN'})`;
  return new Promise<CheckResult>((resolve) => {
    const socket = tls.connect({
      host: address.host,
      port: address.port,
      ca: rootsPem,
      ALPNProtocols: ['h2'],
      ...(isIP(name) ? {} : { servername: name }),
      checkServerIdentity: (_host, cert) => checkServerIdentityBySan(name, cert.raw),
    });
    const done = (result: CheckResult): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(
      () => done({ verdict: 'FAIL', check, detail: `${options.caAddr}: no TLS answer within ${options.timeoutMs / 1000}s`, fix: 'check the address and port (15012), and any network policy or firewall between here and the CA' }),
      options.timeoutMs,
    );
    socket.once('secureConnect', () => {
      const leaf = parseCertificate(socket.getPeerCertificate().raw);
      done({ verdict: 'PASS', check, detail: `${options.caAddr} answers as ${name} ${nameSource}, chained to ${options.rootCertPath} (serving certificate valid until ${leaf.notAfter.toISOString()})` });
    });
    socket.once('error', (error: NodeJS.ErrnoException) => done(describeTlsFailure(options, name, error)));
  });
}

function describeTlsFailure(options: StatusOptions, name: string, error: NodeJS.ErrnoException): CheckResult {
  const check = 'CA TLS';
  const code = error.code ?? '';
  if (code === 'ECONNREFUSED') return { verdict: 'FAIL', check, detail: `${options.caAddr}: connection refused`, fix: 'start meshca ca, or point --ca-addr (env CA_ADDR) at its --grpc-addr' };
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return { verdict: 'FAIL', check, detail: `${options.caAddr}: the host name does not resolve (${code})`, fix: 'check the name in --ca-addr (env CA_ADDR), e.g. meshca.istio-system.svc:15012 inside the cluster' };
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return { verdict: 'FAIL', check, detail: `name mismatch: ${error.message.replace(/: dial the CA.*$/, '')}`, fix: `set --server-name (env ISTIOD_SAN) to one of the names it shows, or add ${name} to the CA's names (meshca ca --server-dns or ISTIOD_CUSTOM_HOST)` };
  }
  if (UNKNOWN_ROOT_CODES.has(code)) {
    return {
      verdict: 'FAIL',
      check,
      detail: `unknown root: the CA's certificate does not chain to ${options.rootCertPath} (${code})`,
      fix: `use the mesh's root as --ca-root-cert: kubectl get configmap ${ROOT_CONFIGMAP_NAME} -n ${options.caNamespace} -o jsonpath='{.data.root-cert\\.pem}' > ${options.rootCertPath}`,
    };
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    return { verdict: 'FAIL', check, detail: `the CA's certificate is outside its validity (${code})`, fix: "check this machine's clock and the CA's (see the clock lines), and the CA's logs for serving-certificate renewal" };
  }
  if (code === 'ECONNRESET' || code === 'EPROTO' || /wrong version number|packet length too long/.test(error.message)) {
    return { verdict: 'FAIL', check, detail: `${options.caAddr} does not speak TLS (${code || error.message})`, fix: 'a CA started with --plaintext cannot be checked (nor used by agents); restart it without --plaintext' };
  }
  return { verdict: 'FAIL', check, detail: `${options.caAddr}: ${code ? `${code}: ` : ''}${error.message}`, fix: 'check --ca-addr (env CA_ADDR) and that meshca ca runs there' };
}

// ---------------------------------------------------------------------------------------------------------------
// Roots and clocks

function compareBundles(expected: readonly string[], actual: readonly string[]): { missing: string[]; extra: string[] } {
  return { missing: expected.filter((fp) => !actual.includes(fp)), extra: actual.filter((fp) => !expected.includes(fp)) };
}

export function checkRootFile(options: StatusOptions, rootsPem: string | undefined, readError: string | undefined, ca: CaFacts | undefined): CheckResult {
  const check = 'root file';
  if (rootsPem === undefined) {
    return { verdict: 'FAIL', check, detail: `cannot read ${options.rootCertPath}: ${readError ?? 'unknown error'}`, fix: "give the mesh's root file with --ca-root-cert (the agent's root-cert.pem)" };
  }
  let local: string[];
  try {
    local = fingerprintsOf(rootsPem);
  } catch (error) {
    return { verdict: 'FAIL', check, detail: `${options.rootCertPath} holds no readable certificate: ${(error as Error).message}`, fix: 'give a PEM file of the root certificate(s)' };
  }
  if (local.length === 0) return { verdict: 'FAIL', check, detail: `${options.rootCertPath} holds no certificate`, fix: 'give a PEM file of the root certificate(s)' };
  if (!ca) return { verdict: 'SKIP', check, detail: `${options.rootCertPath} holds ${local.length} certificate(s); the CA's bundle is unknown (see the monitoring line)` };
  const { missing, extra } = compareBundles(ca.roots.map((r) => r.fingerprintSha256), local);
  if (missing.length > 0) {
    return {
      verdict: 'FAIL',
      check,
      detail: `${options.rootCertPath} lacks ${missing.length} of the CA's ${ca.roots.length} root(s) (${missing.map(short).join(', ')}...): certificates it issues will not verify here`,
      fix: `replace it with the CA's bundle: kubectl get configmap ${ROOT_CONFIGMAP_NAME} -n ${options.caNamespace} -o jsonpath='{.data.root-cert\\.pem}' > ${options.rootCertPath}`,
    };
  }
  if (extra.length > 0) {
    return { verdict: 'WARN', check, detail: `${options.rootCertPath} holds the CA's ${ca.roots.length} root(s) and ${extra.length} more (${extra.map(short).join(', ')}...)`, fix: 'remove roots the mesh no longer uses once no workload needs them' };
  }
  return { verdict: 'PASS', check, detail: `${options.rootCertPath} holds exactly the CA's ${ca.roots.length} root(s) (${ca.roots.map((r) => short(r.fingerprintSha256)).join(', ')}...)` };
}

export function checkClock(what: string, remoteDateMs: number | undefined, localMs: number, maxSkewSeconds: number): CheckResult {
  const check = `clock vs ${what}`;
  if (remoteDateMs === undefined) return { verdict: 'SKIP', check, detail: `${what} sent no Date header` };
  // An HTTP Date has whole seconds: up to 1 s of difference is rounding.
  const skew = Math.max(0, Math.abs(localMs - remoteDateMs) - 1000) / 1000;
  const side = localMs > remoteDateMs ? 'ahead of' : 'behind';
  if (skew > maxSkewSeconds) {
    return {
      verdict: 'WARN',
      check,
      detail: `this clock is ${skew.toFixed(0)}s ${side} ${what} (more than --max-clock-skew ${maxSkewSeconds}s)`,
      fix: 'run NTP (chrony, systemd-timesyncd) on both: certificates are judged by time, and a skewed clock sees fresh ones as not yet valid',
    };
  }
  return { verdict: 'PASS', check, detail: `within ${maxSkewSeconds}s (HTTP Date header, 1s resolution)` };
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes: ConfigMaps and RBAC

const headerOf = (headers: Record<string, string>, name: string): string | undefined =>
  Object.entries(headers).find(([key]) => key.toLowerCase() === name)?.[1];

async function checkConfigMaps(kubeConfig: KubeConfig, options: StatusOptions, expected: { fingerprints: string[]; from: string }): Promise<{ result: CheckResult; apiDate?: number }> {
  const check = 'root ConfigMaps';
  const core = kubeConfig.makeApiClient(kubeClient().CoreV1Api);
  let namespaces: string[];
  let apiDate: number | undefined;
  let configMaps: Map<string, string | undefined>;
  try {
    const listed = await callWithDeadline((o) => core.listNamespaceWithHttpInfo({}, o), options.timeoutMs);
    const date = Date.parse(headerOf(listed.headers, 'date') ?? '');
    if (!Number.isNaN(date)) apiDate = date;
    namespaces = listed.data.items.map((n) => n.metadata?.name ?? '').filter((n) => n !== '');
    const maps = await callWithDeadline((o) => core.listConfigMapForAllNamespaces({ fieldSelector: `metadata.name=${ROOT_CONFIGMAP_NAME}` }, o), options.timeoutMs);
    configMaps = new Map(maps.items.map((m) => [m.metadata?.namespace ?? '', m.data?.[ROOT_CONFIGMAP_KEY]]));
  } catch (error) {
    const { detail } = describeKubeError(error);
    return { result: { verdict: 'FAIL', check, detail: `cannot list namespaces and ConfigMaps ${ROOT_CONFIGMAP_NAME}: ${detail}`, fix: 'check the kubeconfig (kubectl get configmaps -A works with it?)' } };
  }
  const missing: string[] = [];
  const differing: string[] = [];
  for (const ns of namespaces) {
    const pem = configMaps.get(ns);
    if (pem === undefined) {
      missing.push(ns);
      continue;
    }
    let found: string[];
    try {
      found = fingerprintsOf(pem);
    } catch {
      found = [];
    }
    const { missing: lacks, extra } = compareBundles(expected.fingerprints, found);
    if (lacks.length > 0 || extra.length > 0 || found.length === 0) differing.push(ns);
  }
  if (missing.length === 0 && differing.length === 0) {
    return { result: { verdict: 'PASS', check, detail: `${ROOT_CONFIGMAP_NAME} holds ${expected.from} in all ${namespaces.length} namespaces` }, ...(apiDate !== undefined ? { apiDate } : {}) };
  }
  const parts = [
    ...(differing.length > 0 ? [`differs from ${expected.from} in ${differing.join(', ')}`] : []),
    ...(missing.length > 0 ? [`is missing in ${missing.join(', ')}`] : []),
  ];
  return {
    result: {
      verdict: 'FAIL',
      check,
      detail: `${ROOT_CONFIGMAP_NAME} ${parts.join(' and ')}`,
      fix: "the CA writes them with --distribute-root-configmap: check that it runs with it, that RBAC lets it update ConfigMaps (see the RBAC line), and its logs for 'root distribution'",
    },
    ...(apiDate !== undefined ? { apiDate } : {}),
  };
}

function neededNow(permission: Permission, ca: CaFacts | undefined): boolean {
  switch (permission.needed) {
    case 'always':
      return true;
    case 'tokenreview':
      return ca === undefined || ca.authenticators.includes('tokenreview');
    case 'impersonation':
      return ca !== undefined && ca.trustedNodeAccounts.length > 0;
    case 'kube-store':
      return false;
  }
}

function describePermission(p: Permission, caNamespace: string): string {
  const resource = `${p.resource}${p.group ? `.${p.group}` : ''}${p.name ? `/${p.name}` : ''}`;
  return `${p.verb} ${resource}${p.namespaced ? ` in ${caNamespace}` : ''}`;
}

async function checkRbac(kubeConfig: KubeConfig, user: string, options: StatusOptions, ca: CaFacts | undefined): Promise<CheckResult> {
  const check = 'RBAC';
  const api = kubeConfig.makeApiClient(kubeClient().AuthorizationV1Api);
  const denied: { permission: Permission; reason: string }[] = [];
  try {
    await Promise.all(
      CA_PERMISSIONS.map(async (permission) => {
        const review = await callWithDeadline(
          (o) =>
            api.createSelfSubjectAccessReview(
              {
                body: {
                  apiVersion: 'authorization.k8s.io/v1',
                  kind: 'SelfSubjectAccessReview',
                  spec: {
                    resourceAttributes: {
                      verb: permission.verb,
                      group: permission.group,
                      resource: permission.resource,
                      ...(permission.name ? { name: permission.name } : {}),
                      ...(permission.namespaced ? { namespace: options.caNamespace } : {}),
                    },
                  },
                },
              },
              o,
            ),
          options.timeoutMs,
        );
        if (review.status?.allowed !== true) denied.push({ permission, reason: review.status?.reason ?? review.status?.evaluationError ?? '' });
      }),
    );
  } catch (error) {
    return { verdict: 'FAIL', check, detail: `SelfSubjectAccessReview failed: ${describeKubeError(error).detail}`, fix: 'check the kubeconfig; every authenticated user may create SelfSubjectAccessReviews' };
  }
  const order = (d: { permission: Permission }): number => CA_PERMISSIONS.indexOf(d.permission);
  denied.sort((a, b) => order(a) - order(b));
  const failing = denied.filter((d) => neededNow(d.permission, ca));
  const optional = denied.filter((d) => !neededNow(d.permission, ca));
  const list = (ds: typeof denied): string => ds.map((d) => `${describePermission(d.permission, options.caNamespace)} (${d.permission.purpose})`).join(', ');
  const who = `as ${user}`;
  if (failing.length > 0) {
    return {
      verdict: 'FAIL',
      check,
      detail: `${who}: not allowed to ${list(failing)}${optional.length > 0 ? `; nor, needed only by some setups, ${list(optional)}` : ''}`,
      fix: `grant the CA's rules: kubectl apply -f deploy/kubernetes/ca-rbac.yaml (this checks the kubeconfig's user: run meshca status with the CA's service account to check the CA's)`,
    };
  }
  if (optional.length > 0) {
    return { verdict: 'WARN', check, detail: `${who}: not allowed to ${list(optional)}, which this CA's setup may not need`, fix: 'grant them (deploy/kubernetes/ca-rbac.yaml) if the CA uses that feature' };
  }
  return { verdict: 'PASS', check, detail: `${who}: allowed all ${CA_PERMISSIONS.length} actions of deploy/kubernetes/ca-rbac.yaml` };
}

// ---------------------------------------------------------------------------------------------------------------
// The node agent's trust bundle

/**
 * The ROOTCA bundle a node agent serves its Envoys holds exactly the CA's roots. The agent learns roots from the
 * CA's answers, so a difference means it has not renewed since the CA's bundle changed (or talks to another CA).
 */
export async function checkAgentBundle(options: StatusOptions, ca: CaFacts | undefined): Promise<CheckResult> {
  const check = 'agent bundle';
  const agent = options.agentStatus;
  if (!agent) return { verdict: 'SKIP', check, detail: "no --agent-status-addr: the ROOTCA bundle a node agent serves is not compared" };
  if (!ca) return { verdict: 'SKIP', check, detail: "the CA's bundle is unknown (see the CA monitoring line)" };
  const url = debugUrl(agent);
  let report: SecretsReport;
  try {
    report = await readSecretsReport(url, options.timeoutMs, agent.text);
  } catch (error) {
    return {
      verdict: 'FAIL',
      check,
      detail: (error as Error).message.replace(/: is `meshca agent` running on this host\?.*$/, ''),
      fix: "point --agent-status-addr (env MESHCA_STATUS_ADDR) at the agent's --status-addr, from the agent's host (it answers loopback callers only): e.g. kubectl -n istio-system port-forward pod/<meshca-agent-pod> 15020",
    };
  }
  if (!report.trustBundle) {
    return { verdict: 'WARN', check, detail: `${url}: the agent serves no ROOTCA yet (no workload on its node has asked for one)`, fix: 'start a workload on that node, then run this again' };
  }
  const served = new Set(report.trustBundle.roots.map((root) => root.fingerprintSha256));
  const expected = new Set(ca.roots.map((root) => root.fingerprintSha256));
  const missing = [...expected].filter((f) => !served.has(f));
  const extra = [...served].filter((f) => !expected.has(f));
  if (missing.length === 0 && extra.length === 0) return { verdict: 'PASS', check, detail: `${url}: ROOTCA holds the CA's ${expected.size} root(s)` };
  const short = (list: string[]): string => list.map((f) => f.slice(0, 23)).join(', ');
  const parts = [
    ...(missing.length > 0 ? [`lacks ${missing.length} of the CA's root(s) (${short(missing)})`] : []),
    ...(extra.length > 0 ? [`holds ${extra.length} root(s) the CA does not (${short(extra)})`] : []),
  ];
  return {
    verdict: 'FAIL',
    check,
    detail: `the ROOTCA bundle of the agent at ${agent.text} ${parts.join(' and ')}`,
    fix: "the agent takes the bundle from the CA's answers: run `meshca secrets` on that node for failed renewals, and check that its CA_ADDR is this CA",
  };
}

// ---------------------------------------------------------------------------------------------------------------
// All of it

export async function runStatusChecks(options: StatusOptions): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  let rootsPem: string | undefined;
  let readError: string | undefined;
  try {
    rootsPem = readFileSync(options.rootCertPath, 'utf8');
  } catch (error) {
    readError = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  }
  const tlsCheck = checkCaTls(options, rootsPem);

  let ca: CaFacts | undefined;
  let caDate: number | undefined;
  try {
    const answer = await getFromMonitoring(options.monitoring, '/debug/ca', options.timeoutMs);
    caDate = answer.date;
    ca = answer.status === 200 ? readCaFacts(answer.body) : undefined;
    results.push(
      ca
        ? { verdict: 'PASS', check: 'CA monitoring', detail: `${options.monitoring.origin}/debug/ca: trust bundle of ${ca.roots.length} root(s), authenticators ${ca.authenticators.join(', ') || 'none'}` }
        : { verdict: 'FAIL', check: 'CA monitoring', detail: `${options.monitoring.origin}/debug/ca answered HTTP ${answer.status} without the CA's roots`, fix: 'point --monitoring-addr (env MESHCA_CA_MONITORING_ADDR) at the --monitoring-addr of meshca ca' },
    );
  } catch (error) {
    results.push({ verdict: 'FAIL', check: 'CA monitoring', detail: (error as Error).message.replace(/: is meshca ca running there\?.*$/, ''), fix: 'point --monitoring-addr (env MESHCA_CA_MONITORING_ADDR) at the --monitoring-addr of meshca ca (e.g. kubectl -n istio-system port-forward deploy/meshca 15014)' });
  }
  results.unshift(await tlsCheck);
  results.push(checkRootFile(options, rootsPem, readError, ca));
  results.push(await checkAgentBundle(options, ca));
  results.push(checkClock('the CA', caDate, options.now(), options.maxClockSkewSeconds));

  if (!kubeConfigAvailable(options.kubeconfig, options.env)) {
    results.push({ verdict: 'SKIP', check: 'Kubernetes', detail: 'no kubeconfig: ConfigMap and RBAC checks skipped (give --kubeconfig, set KUBECONFIG, or run in a cluster)' });
    return results;
  }
  let loaded;
  try {
    loaded = await loadKubeConfigWithOrigin(options.kubeconfig, options.env);
  } catch (error) {
    results.push({ verdict: 'FAIL', check: 'Kubernetes', detail: (error as Error).message, fix: 'give a readable kubeconfig with --kubeconfig or KUBECONFIG' });
    return results;
  }
  const expected = ca
    ? { fingerprints: ca.roots.map((r) => r.fingerprintSha256), from: "the CA's bundle" }
    : rootsPem !== undefined
      ? { fingerprints: safeFingerprints(rootsPem), from: options.rootCertPath }
      : undefined;
  if (expected) {
    const { result, apiDate } = await checkConfigMaps(loaded.kubeConfig, options, expected);
    results.push(result);
    results.push(checkClock('the API server', apiDate, options.now(), options.maxClockSkewSeconds));
  } else {
    results.push({ verdict: 'SKIP', check: 'root ConfigMaps', detail: "neither the CA's bundle nor a root file to compare them with" });
  }
  const user = loaded.kubeConfig.getCurrentUser()?.name ?? 'the current user';
  const context = loaded.kubeConfig.getCurrentContext();
  results.push(await checkRbac(loaded.kubeConfig, `kubeconfig user "${user}" (context ${context})`, options, ca));
  return results;
}

function safeFingerprints(pem: string): string[] {
  try {
    return fingerprintsOf(pem);
  } catch {
    return [];
  }
}

export function formatResults(results: readonly CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.check.length));
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`${r.verdict.padEnd(4)}  ${r.check.padEnd(width)}  ${r.detail}`);
    if (r.fix && r.verdict !== 'PASS') lines.push(`${' '.repeat(width + 8)}fix: ${r.fix}`);
  }
  return lines.join('\n');
}

export function registerStatusCommand(program: Command): void {
  const command = program.command('status').description(COMMAND_DESCRIPTIONS.status);
  addFlag(command, AGENT_FLAGS.caAddr);
  addFlag(command, AGENT_FLAGS.caRootCert);
  addFlag(command, STATUS_FLAGS.serverName);
  addFlag(command, CA_MONITORING_FLAG);
  addFlag(command, STATUS_FLAGS.kubeconfig);
  addFlag(command, STATUS_FLAGS.caNamespace);
  addFlag(command, STATUS_FLAGS.maxClockSkew);
  addFlag(command, STATUS_FLAGS.timeout);
  addFlag(command, STATUS_FLAGS.agentStatusAddr);
  command.option('-o, --output <format>', 'text | json', 'text').action(async (flags: StatusFlags) => {
    const env = process.env;
    const output = readEnum(flags.output, {}, { flag: '--output' }, ['text', 'json'] as const, 'text');
    const caAddr = readString(flags.caAddr, env, sourceOf(AGENT_FLAGS.caAddr), DEFAULT_CA_ADDR);
    const host = splitHostPort(caAddr)?.host ?? caAddr;
    const options: StatusOptions = {
      caAddr,
      rootCertPath: readString(flags.caRootCert, env, sourceOf(AGENT_FLAGS.caRootCert), DEFAULT_CA_ROOT_CERT),
      serverName: readOptionalString(flags.serverName, env, sourceOf(STATUS_FLAGS.serverName)) ?? host,
      monitoring: monitoringBaseUrl(flags.monitoringAddr, env),
      kubeconfig: flags.kubeconfig,
      caNamespace: readString(flags.caNamespace, env, sourceOf(STATUS_FLAGS.caNamespace), 'istio-system'),
      maxClockSkewSeconds: readDuration(flags.maxClockSkew, env, sourceOf(STATUS_FLAGS.maxClockSkew), 5, { min: 0 }),
      timeoutMs: readDuration(flags.timeout, env, sourceOf(STATUS_FLAGS.timeout), 5, { min: 0.1, max: 300 }) * 1000,
      env,
      now: Date.now,
    };
    const agentStatus = readOptionalString(flags.agentStatusAddr, env, sourceOf(STATUS_FLAGS.agentStatusAddr));
    if (agentStatus !== undefined) options.agentStatus = readAddress(agentStatus, {}, sourceOf(STATUS_FLAGS.agentStatusAddr), agentStatus);
    const results = await runStatusChecks(options);
    process.stdout.write(output === 'json' ? `${JSON.stringify(results, null, 2)}\n` : `${formatResults(results)}\n`);
    if (results.some((r) => r.verdict === 'FAIL')) process.exitCode = 1;
  });
}
