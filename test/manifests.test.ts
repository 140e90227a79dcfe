/**
 * The deployment files (deploy/**, Dockerfile) against the code they deploy, without a cluster:
 *  - every manifest parses and names itself; kustomizations list what is there;
 *  - the RBAC rules are exactly the Kubernetes API calls found in src/ (a missing rule or an unused one fails);
 *  - ports, probes, flags and environment variables are ones the config modules know, and the configuration the
 *    manifests give each container loads with readCaServerConfig / readAgentConfig;
 *  - the Envoy example talks to the agent's socket with the workload's token, for `default` and `ROOTCA`;
 *  - the Grafana dashboard and the alert rules use only metrics meshca exports, and the dashboard shows them all;
 *  - the CA and the agent run with the manifests' arguments and environment against the Kubernetes stand-in: their
 *    probes answer, a workload gets its certificate through the agent, and every API request they make is allowed
 *    by the RBAC rules;
 *  - the Dockerfile's structure (no Docker engine here to build it).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as k8s from '@kubernetes/client-node';
import { Command } from 'commander';
import { SDS_TOKEN_HEADER } from '../src/agent/credentials.js';
import { CA_SECRET_NAME, ROOT_CONFIGMAP_KEY, ROOT_CONFIGMAP_NAME } from '../src/ca/index.js';
import { DEFAULT_TRUST_BUNDLE_SIGNER } from '../src/ca/kubernetes/cluster-trust-bundle/index.js';
import { clusterTrustBundleName } from '../src/ca/kubernetes/cluster-trust-bundle/publisher.js';
import { EXAMPLE_CSR_SIGNER_NAME } from '../src/ca/kubernetes/csr-signer/index.js';
import { registerAgentCommand } from '../src/commands/agent.js';
import { registerCaCommand } from '../src/commands/ca.js';
import { registerCacertsCommand } from '../src/commands/cacerts.js';
import { registerDecisionsCommand } from '../src/commands/decisions.js';
import { registerDevCommand } from '../src/commands/dev.js';
import { registerFetchCommand } from '../src/commands/fetch.js';
import { registerInspectCommand } from '../src/commands/inspect.js';
import { registerRequestCommand } from '../src/commands/request.js';
import { registerStatusCommand } from '../src/commands/status.js';
import { registerTokenCommand } from '../src/commands/token.js';
import { registerVersionCommand } from '../src/commands/version.js';
import { readAgentConfig, type AgentFlags } from '../src/config/agent.js';
import { readCaServerConfig, type CaServerFlags } from '../src/config/ca.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { opensslText, opensslVerify } from './support/openssl.js';
import { makeTempDir, REPO_ROOT, runMeshca, startMeshca, type MeshcaProcess } from './support/process.js';

// ---------------------------------------------------------------------------------------------------------------
// Loading the files

const DEPLOY = path.join(REPO_ROOT, 'deploy');
const BASE = path.join(DEPLOY, 'kubernetes');
/** YAML under deploy/ that is not a Kubernetes object. */
const NOT_KUBERNETES = new Set(['examples/envoy-sds.yaml', 'prometheus/meshca-alerts.yaml']);
const OPERATOR = path.join(DEPLOY, 'prometheus-operator');

type Json = Record<string, unknown>;

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}

interface Probe {
  httpGet?: { path: string; port: number | string };
}

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  volumeMounts?: { name: string; mountPath: string }[];
  securityContext?: {
    runAsUser?: number;
    runAsNonRoot?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    privileged?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
  };
}

interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string };
  secret?: { secretName: string; optional?: boolean };
  projected?: { sources: { serviceAccountToken?: { path: string; audience?: string } }[] };
  emptyDir?: Json;
}

interface PodSpec {
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; runAsGroup?: number };
  initContainers?: Container[];
  containers: Container[];
  volumes?: Volume[];
}

interface Workload extends KubeObject {
  spec: { replicas?: number; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
}

interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

interface RbacRole extends KubeObject {
  rules: PolicyRule[];
}

interface RoleBinding extends KubeObject {
  roleRef: { kind: string; name: string };
  subjects: { kind: string; name: string; namespace?: string }[];
}

interface ServicePort {
  name: string;
  port: number;
  targetPort: number | string;
}

const isJson = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);

function yamlFilesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => /\.ya?ml$/.test(f))
    .map((f) => path.join(dir, f))
    .sort();
}

function loadDocuments(file: string): unknown[] {
  return (k8s.loadAllYaml(readFileSync(file, 'utf8')) as unknown[]).filter((doc) => doc !== null && doc !== undefined);
}

function asKubeObject(doc: unknown, where: string): KubeObject {
  assert.ok(isJson(doc), `${where}: a document is not a mapping`);
  assert.equal(typeof doc.apiVersion, 'string', `${where}: a document has no apiVersion`);
  assert.equal(typeof doc.kind, 'string', `${where}: a document has no kind`);
  const metadata = doc.metadata;
  assert.ok(isJson(metadata) && typeof metadata.name === 'string' && metadata.name !== '', `${where}: a ${String(doc.kind)} has no metadata.name`);
  return doc as unknown as KubeObject;
}

function kustomizationResources(dir: string): string[] {
  const [doc] = loadDocuments(path.join(dir, 'kustomization.yaml'));
  assert.ok(isJson(doc) && Array.isArray(doc.resources), `${dir}/kustomization.yaml lists no resources`);
  return doc.resources.map(String);
}

/** The base manifests, as `kubectl apply -k deploy/kubernetes` would send them (no transformations there but the image tag). */
function baseObjects(): KubeObject[] {
  return kustomizationResources(BASE).flatMap((file) => loadDocuments(path.join(BASE, file)).map((doc) => asKubeObject(doc, file)));
}

function find<T extends KubeObject>(objects: KubeObject[], kind: string, name: string): T {
  const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
  assert.equal(found.length, 1, `expected exactly one ${kind} ${name}, found ${found.length}`);
  return found[0] as T;
}

function container(workload: Workload, name: string): Container {
  const found = workload.spec.template.spec.containers.find((c) => c.name === name);
  assert.ok(found, `${workload.kind} ${workload.metadata.name} has no container ${name}`);
  return found;
}

function containerPort(c: Container, port: number | string): number {
  if (typeof port === 'number') return port;
  const named = c.ports?.find((p) => p.name === port);
  assert.ok(named, `container ${c.name} has no port named ${port}`);
  return named.containerPort;
}

/** The container's environment with fieldRefs resolved the way the kubelet would. */
function environment(c: Container, owner: KubeObject): Record<string, string> {
  const env: Record<string, string> = {};
  for (const variable of c.env ?? []) {
    if (variable.value !== undefined) env[variable.name] = variable.value;
    else if (variable.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') env[variable.name] = owner.metadata.namespace ?? 'default';
    else assert.fail(`${c.name}: env ${variable.name} has a source this test cannot resolve`);
  }
  return env;
}

// ---------------------------------------------------------------------------------------------------------------
// What the code knows: commands and flags, environment variables, Kubernetes API calls, metrics

function readSources(relativePaths: string[]): { file: string; text: string }[] {
  return relativePaths.flatMap((relative) => {
    const full = path.join(REPO_ROOT, relative);
    const files = statSync(full).isDirectory()
      ? readdirSync(full, { recursive: true, encoding: 'utf8' })
          .filter((f) => f.endsWith('.ts'))
          .map((f) => path.join(full, f))
      : [full];
    return files.map((file) => ({ file: path.relative(REPO_ROOT, file), text: readFileSync(file, 'utf8') }));
  });
}

const ALL_SOURCES = readSources(['src']);

/** Modules whose environment variables each command reads. */
const ENV_SOURCES: Record<'ca' | 'agent', string[]> = {
  ca: ['src/config/ca.ts', 'src/kube', 'src/config/env.ts', 'src/config/flags.ts', 'src/ca', 'src/authn', 'src/server', 'src/commands/ca.ts', 'src/cli.ts', 'src/log.ts'],
  agent: ['src/config/agent.ts', 'src/config/env.ts', 'src/config/flags.ts', 'src/agent', 'src/commands/agent.ts', 'src/cli.ts', 'src/log.ts'],
};

/** Environment variable names (and NAME_* prefixes) read by the given modules. */
function envNamesRead(sources: string[]): { names: Set<string>; prefixes: string[] } {
  const names = new Set<string>();
  const prefixes: string[] = [];
  for (const { text } of readSources(sources)) {
    for (const pattern of [/\benv:\s*'([A-Z][A-Z0-9_]*)'/g, /\benv\.([A-Z][A-Z0-9_]*)\b/g, /\benv\[['"]([A-Z][A-Z0-9_]*)['"]\]/g]) {
      for (const match of text.matchAll(pattern)) names.add(match[1]!);
    }
    // A flag's definition (src/config/flags.ts FlagSpec) lists its variables: `env: ['CA_ADDR']`.
    for (const list of text.matchAll(/\benv:\s*\[([^\]]*)\]/g)) {
      for (const match of list[1]!.matchAll(/'([A-Z][A-Z0-9_]*)'/g)) names.add(match[1]!);
    }
    for (const match of text.matchAll(/\.startsWith\('([A-Z][A-Z0-9_]*_)'\)/g)) prefixes.push(match[1]!);
  }
  return { names, prefixes };
}

/** A program with the `ca` and `agent` commands, whose actions only record the parsed flags. */
function parseCommandLine(args: string[]): { command: string; flags: Json } {
  const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  registerCaCommand(program);
  registerAgentCommand(program);
  let parsed: { command: string; flags: Json } | undefined;
  for (const sub of program.commands) sub.action((flags: Json) => void (parsed = { command: sub.name(), flags }));
  program.parse(args, { from: 'user' });
  assert.ok(parsed, `no command ran for: ${args.join(' ')}`);
  return parsed;
}

interface ApiUse {
  group: string;
  resource: string;
  verb: string;
  where: string;
}

const API_GROUP_OF_CLIENT: Record<string, string> = {
  CoreV1Api: '',
  AuthenticationV1Api: 'authentication.k8s.io',
  AuthorizationV1Api: 'authorization.k8s.io',
  CoordinationV1Api: 'coordination.k8s.io',
  AppsV1Api: 'apps',
  CertificatesV1Api: 'certificates.k8s.io',
  CertificatesV1alpha1Api: 'certificates.k8s.io',
  CertificatesV1beta1Api: 'certificates.k8s.io',
};
const VERB_OF_PREFIX: Record<string, string> = {
  create: 'create',
  get: 'get',
  read: 'get',
  replace: 'update',
  patch: 'patch',
  delete: 'delete',
  deleteCollection: 'deletecollection',
  list: 'list',
};
const SUBRESOURCES = ['Status', 'Log', 'Scale', 'Eviction', 'Binding', 'Token', 'Exec', 'Attach', 'Portforward', 'Proxy', 'Ephemeralcontainers'];

const plural = (kind: string): string => {
  const lower = kind.toLowerCase();
  if (lower.endsWith('s')) return lower;
  if (lower.endsWith('y')) return `${lower.slice(0, -1)}ies`;
  return `${lower}s`;
};

/** Which API classes of @kubernetes/client-node define each method name. */
function clientMethods(): Map<string, string[]> {
  const methods = new Map<string, string[]>();
  for (const [exportName, value] of Object.entries(k8s)) {
    if (!/Api$/.test(exportName) || exportName === 'KubernetesObjectApi' || typeof value !== 'function') continue;
    const prototype = (value as { prototype?: object }).prototype;
    if (!prototype) continue;
    for (const method of Object.getOwnPropertyNames(prototype)) {
      if (method === 'constructor') continue;
      methods.set(method, [...(methods.get(method) ?? []), exportName]);
    }
  }
  return methods;
}

/** The resource and verb of a client method such as readNamespacedPod or listPodForAllNamespaces. */
function apiUseOfMethod(method: string, classes: string[], where: string): ApiUse {
  const match = /^(create|read|replace|patch|deleteCollection|delete|list)(?:Namespaced)?([A-Z]\w*?)(?:ForAllNamespaces)?(?:WithHttpInfo)?$/.exec(method);
  assert.ok(match, `${where}: ${method} is a Kubernetes API call this test cannot map to a resource and verb; extend the test`);
  const groups = [...new Set(classes.map((c) => API_GROUP_OF_CLIENT[c]))];
  assert.ok(groups.length === 1 && groups[0] !== undefined, `${where}: ${method} (from ${classes.join(', ')}) needs its API group in API_GROUP_OF_CLIENT`);
  let kind = match[2]!;
  let subresource = '';
  const suffix = SUBRESOURCES.find((s) => kind.endsWith(s) && kind !== s);
  if (suffix) {
    kind = kind.slice(0, -suffix.length);
    subresource = `/${suffix.toLowerCase()}`;
  }
  return { group: groups[0], resource: plural(kind) + subresource, verb: VERB_OF_PREFIX[match[1]!]!, where };
}

/** Splits a Kubernetes API path into group, resource, namespace and name. */
function parseApiPath(apiPath: string): { group: string; resource: string; namespace?: string; name?: string } | null {
  const match = /^\/(?:api\/v1|apis\/([^/]+)\/[^/]+)\/(.*)$/.exec(apiPath);
  if (!match) return null;
  const segments = match[2]!.split('/').filter(Boolean);
  if (segments[0] === 'watch') segments.shift();
  const group = match[1] ?? '';
  if (segments[0] === 'namespaces' && segments.length >= 3) {
    return { group, namespace: segments[1], resource: segments[2]!, ...(segments[3] ? { name: segments[3] } : {}) };
  }
  return { group, resource: segments[0]!, ...(segments[1] ? { name: segments[1] } : {}) };
}

/**
 * Every Kubernetes API call in src/: client-node API methods (`.readNamespacedPod(`), and the collections watched
 * with `new Watch(...)` (the API paths written in those files).
 */
/**
 * `meshca status` runs as whoever runs it (an operator's kubeconfig), not as the CA: its calls (listing ConfigMaps
 * everywhere, SelfSubjectAccessReviews) are not the CA's and need no rule in the CA's role.
 */
const OPERATOR_TOOLS: readonly string[] = ['src/commands/status.ts'];

function apiUsesInSource(): ApiUse[] {
  const methods = clientMethods();
  const uses: ApiUse[] = [];
  for (const { file, text } of ALL_SOURCES.filter((s) => !OPERATOR_TOOLS.includes(s.file))) {
    assert.ok(!/\bKubernetesObjectApi\b/.test(text), `${file} uses KubernetesObjectApi, whose calls this test cannot map to RBAC rules`);
    for (const match of text.matchAll(/\.([a-z][A-Za-z]+)\s*\(/g)) {
      const classes = methods.get(match[1]!);
      if (!classes || classes.includes('CustomObjectsApi') || !/^(create|read|replace|patch|delete|list)[A-Z]/.test(match[1]!)) continue;
      uses.push(apiUseOfMethod(match[1]!, classes, file));
    }
    // The CertificateSigning admission plugin lets a CSR's status (certificate or conditions) change only for a
    // caller with `sign` on the signer name: that write implies the grant.
    if (/\.replaceCertificateSigningRequestStatus\s*\(/.test(text)) uses.push({ group: 'certificates.k8s.io', resource: 'signers', verb: 'sign', where: file });
    // CustomObjectsApi calls name their resource in the call: { group: '…', version, plural: '…' }.
    for (const match of text.matchAll(/\.(get|list|create|replace|patch|delete)(?:Namespaced|Cluster)CustomObject(Status)?\(\{([^}]*)/g)) {
      const group = /group:\s*'([^']*)'/.exec(match[3]!)?.[1];
      const resource = /plural:\s*'([^']*)'/.exec(match[3]!)?.[1];
      assert.ok(group !== undefined && resource, `${file}: ${match[0]}: name the group and plural literally so the RBAC check can read them`);
      uses.push({ group, resource: `${resource}${match[2] ? '/status' : ''}`, verb: VERB_OF_PREFIX[match[1]!] ?? match[1]!, where: file });
    }
    // Verbs no API call makes but admission checks (e.g. "attest" on signers for a signer-linked ClusterTrustBundle).
    for (const match of text.matchAll(/\{ group: '([^']*)', resource: '([a-z]+)', verb: '([a-z]+)' \}/g)) {
      uses.push({ group: match[1]!, resource: match[2]!, verb: match[3]!, where: file });
    }
    if (/\bnew Watch\(/.test(text)) {
      for (const match of text.matchAll(/['`](\/apis?\/[^'`]+)['`]/g)) {
        const parsed = parseApiPath(match[1]!.replace(/\$\{[^}]*\}/g, 'X'));
        assert.ok(parsed, `${file}: cannot read the watched path ${match[1]}`);
        uses.push({ group: parsed.group, resource: parsed.resource, verb: 'watch', where: file });
      }
    }
  }
  return uses;
}

/** Metric names defined in src/ (prom-client constructors and *_METRIC constants), and which are histograms. */
function metricsInSource(): { names: Set<string>; histograms: Set<string> } {
  const names = new Set<string>();
  const histograms = new Set<string>();
  for (const { text } of ALL_SOURCES) {
    if (!text.includes('prom-client')) continue;
    for (const match of text.matchAll(/new (Counter|Gauge|Histogram|Summary)(?:<[^>]*>)?\(\{\s*name:\s*'([a-z_:][a-z0-9_:]*)'/g)) {
      names.add(match[2]!);
      if (match[1] === 'Histogram' || match[1] === 'Summary') histograms.add(match[2]!);
    }
    for (const match of text.matchAll(/_METRIC\s*=\s*'([a-z_:][a-z0-9_:]*)'/g)) names.add(match[1]!);
  }
  return { names, histograms };
}

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

/** Metric names in a PromQL expression: identifiers that are neither functions, keywords, labels nor strings. */
function metricsInExpression(expression: string): string[] {
  const stripped = expression
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, ' ')
    .replace(/\$\w+/g, ' ');
  const names: string[] = [];
  for (const match of stripped.matchAll(/(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?/g)) {
    if (match[2] || PROMQL_WORDS.has(match[1]!.toLowerCase())) continue;
    names.push(match[1]!);
  }
  return names;
}

function definedMetric(name: string, metrics: { names: Set<string>; histograms: Set<string> }): boolean {
  if (metrics.names.has(name)) return true;
  const base = name.replace(/_(bucket|sum|count)$/, '');
  return base !== name && metrics.histograms.has(base);
}

interface AlertRule {
  alert: string;
  expr: string;
  annotations: Record<string, string>;
}

function rulesOf(doc: unknown): AlertRule[] {
  return (doc as { groups: { rules: AlertRule[] }[] }).groups.flatMap((g) => g.rules);
}

interface MonitorSpec {
  selector: { matchLabels: Record<string, string> };
  endpoints?: { port: string; relabelings?: Json[] }[];
  podMetricsEndpoints?: { port: string; relabelings?: Json[] }[];
}

/** docs/istio-metric-names.json: Istio's CA and agent metric names, and which of them meshca exports. */
function istioMetricNames(): { exported: Set<string>; all: Set<string> } {
  const list = JSON.parse(readFileSync(path.join(REPO_ROOT, 'docs/istio-metric-names.json'), 'utf8')) as { metrics: { name: string; exported: boolean }[] };
  return { exported: new Set(list.metrics.filter((m) => m.exported).map((m) => m.name)), all: new Set(list.metrics.map((m) => m.name)) };
}

/** The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens. */
function markdownAnchors(markdown: string): Set<string> {
  const anchors = new Set<string>();
  for (const match of markdown.matchAll(/^#{1,6}\s+(.+?)\s*$/gm)) {
    anchors.add(
      match[1]!
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\s_-]/gu, '')
        .replace(/\s/g, '-'),
    );
  }
  return anchors;
}

// ---------------------------------------------------------------------------------------------------------------
// RBAC evaluation

interface Grant {
  role: RbacRole;
  /** undefined: cluster-wide (ClusterRole via ClusterRoleBinding). */
  namespace: string | undefined;
}

/** The roles bound to a service account in the base manifests. */
function grantsFor(objects: KubeObject[], serviceAccount: { name: string; namespace: string }): Grant[] {
  const grants: Grant[] = [];
  for (const binding of objects.filter((o): o is RoleBinding => o.kind === 'ClusterRoleBinding' || o.kind === 'RoleBinding')) {
    const bound = binding.subjects.some((s) => s.kind === 'ServiceAccount' && s.name === serviceAccount.name && s.namespace === serviceAccount.namespace);
    if (!bound) continue;
    const role = find<RbacRole>(objects, binding.roleRef.kind, binding.roleRef.name);
    grants.push({ role, namespace: binding.kind === 'RoleBinding' ? binding.metadata.namespace : undefined });
  }
  return grants;
}

function allowed(grants: Grant[], request: { group: string; resource: string; verb: string; namespace?: string; name?: string }): boolean {
  return grants.some(
    (grant) =>
      (grant.namespace === undefined || grant.namespace === request.namespace) &&
      grant.role.rules.some(
        (rule) =>
          rule.apiGroups.some((g) => g === '*' || g === request.group) &&
          rule.resources.some((r) => r === '*' || r === request.resource) &&
          rule.verbs.some((v) => v === '*' || v === request.verb) &&
          (!rule.resourceNames?.length || (request.name !== undefined && rule.resourceNames.includes(request.name))),
      ),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The files

describe('deploy/: manifests, RBAC, configuration, examples, dashboard', () => {
  const objects = baseObjects();
  const deployment = find<Workload>(objects, 'Deployment', 'meshca');
  const daemonSet = find<Workload>(objects, 'DaemonSet', 'meshca-agent');
  const service = find<KubeObject & { spec: { selector: Record<string, string>; ports: ServicePort[] } }>(objects, 'Service', 'meshca');
  const caContainer = container(deployment, 'meshca');
  const agentContainer = container(daemonSet, 'agent');

  it('parses every manifest: each document has apiVersion, kind and metadata.name, and kustomizations list the files there', () => {
    const files = yamlFilesUnder(DEPLOY);
    assert.ok(files.length >= 8, `only ${files.length} YAML files under deploy/`);
    for (const file of files) {
      const relative = path.relative(DEPLOY, file);
      const documents = loadDocuments(file);
      assert.ok(documents.length > 0, `${relative} is empty`);
      if (NOT_KUBERNETES.has(relative)) continue;
      for (const doc of documents) {
        if (path.basename(file) === 'kustomization.yaml') {
          assert.ok(isJson(doc) && doc.kind === 'Kustomization', `${relative} is not a Kustomization`);
          for (const entry of [...((doc.resources as string[] | undefined) ?? []), ...((doc.patches as { path: string }[] | undefined) ?? []).map((p) => p.path)]) {
            assert.ok(existsSync(path.join(path.dirname(file), entry)), `${relative} refers to ${entry}, which does not exist`);
          }
        } else {
          asKubeObject(doc, relative);
        }
      }
    }
    // `kubectl apply -k` and `kubectl apply -f deploy/kubernetes` must apply the same set.
    const listed = kustomizationResources(BASE).sort();
    const present = readdirSync(BASE).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort();
    assert.deepEqual(listed, present);
    const kinds = objects.map((o) => o.kind).sort();
    assert.deepEqual(kinds, [
      'ClusterRole',
      'ClusterRoleBinding',
      'DaemonSet',
      'Deployment',
      'PodDisruptionBudget',
      'Role',
      'RoleBinding',
      'Service',
      'ServiceAccount',
      'ServiceAccount',
    ]);
    for (const o of objects) {
      if (o.kind === 'ClusterRole' || o.kind === 'ClusterRoleBinding') continue;
      assert.equal(o.metadata.namespace, 'istio-system', `${o.kind} ${o.metadata.name} must be in istio-system (the CA's default --ca-namespace and --server-dns)`);
    }
  });

  it('grants the CA exactly the Kubernetes API calls found in src/, with Secrets only in its own namespace', () => {
    const uses = apiUsesInSource();
    const key = (u: { group: string; resource: string; verb: string }): string => `${u.verb} ${u.resource}${u.group ? `.${u.group}` : ''}`;
    const used = new Set(uses.map(key));
    // The scan must see the calls the issue names; if one moves out of src/ the test should say so.
    for (const expected of ['create tokenreviews.authentication.k8s.io', 'list pods', 'watch pods', 'list namespaces', 'watch namespaces', 'create configmaps', 'update configmaps', 'watch configmaps', 'get secrets', 'create secrets', 'update secrets', 'watch secrets']) {
      assert.ok(used.has(expected), `expected to find "${expected}" in src/; found: ${[...used].sort().join(', ')}`);
    }
    const grants = grantsFor(objects, { name: 'meshca', namespace: 'istio-system' });
    assert.ok(grants.length >= 2, 'the meshca service account must be bound to its ClusterRole and Role');
    const granted = new Set<string>();
    for (const grant of grants) {
      for (const rule of grant.role.rules) {
        for (const group of rule.apiGroups) for (const resource of rule.resources) for (const verb of rule.verbs) granted.add(key({ group, resource, verb }));
        assert.ok(!rule.verbs.includes('*') && !rule.resources.includes('*') && !rule.apiGroups.includes('*'), `${grant.role.kind} ${grant.role.metadata.name} uses a wildcard`);
        if (grant.namespace === undefined) {
          assert.ok(!rule.resources.includes('secrets'), 'the ClusterRole must not grant secrets: they belong in the Role of the CA namespace');
        }
      }
    }
    const missing = [...used].filter((u) => !granted.has(u));
    const unused = [...granted].filter((g) => !used.has(g));
    assert.deepEqual(missing, [], `API calls without an RBAC rule: ${missing.join(', ')} (used in ${uses.filter((u) => missing.includes(key(u))).map((u) => u.where).join(', ')})`);
    assert.deepEqual(unused, [], `RBAC rules no code uses: ${unused.join(', ')}`);
    // Names in resourceNames are the ones the code reads and writes.
    const names = grants.flatMap((g) => g.role.rules.flatMap((r) => (r.resourceNames ?? []).map((n) => `${r.resources.join(',')}/${n}`)));
    assert.deepEqual(names.sort(), [`clustertrustbundles/${clusterTrustBundleName(DEFAULT_TRUST_BUNDLE_SIGNER)}`, `configmaps/${ROOT_CONFIGMAP_NAME}`, `secrets/${CA_SECRET_NAME}`, 'signers/meshca.io/*', `signers/${DEFAULT_TRUST_BUNDLE_SIGNER}`, `signers/${EXAMPLE_CSR_SIGNER_NAME}`]);
    // The agent talks to no API server: no binding, no token.
    assert.deepEqual(grantsFor(objects, { name: 'meshca-agent', namespace: 'istio-system' }), []);
    assert.equal(daemonSet.spec.template.spec.automountServiceAccountToken, false);
  });

  it('runs the CA Deployment with known flags and variables, on the default ports, with real probes, behind the Service', () => {
    const spec = deployment.spec.template.spec;
    assert.equal(deployment.spec.replicas, 2);
    assert.equal(spec.serviceAccountName, 'meshca');
    assert.deepEqual(deployment.spec.selector.matchLabels, Object.fromEntries(Object.entries(deployment.spec.template.metadata.labels).filter(([k]) => k in deployment.spec.selector.matchLabels)));
    assert.equal(caContainer.args?.[0], 'ca');
    const { flags } = parseCommandLine(caContainer.args!);
    const env = environment(caContainer, deployment);
    const known = envNamesRead(ENV_SOURCES.ca);
    for (const name of Object.keys(env)) {
      assert.ok(known.names.has(name) || known.prefixes.some((p) => name.startsWith(p)), `env ${name} of the CA is read by no CA module`);
    }
    const config = readCaServerConfig(flags as CaServerFlags, env);
    const defaults = readCaServerConfig({}, {});
    assert.equal(config.keySource.store, 'kubernetes', 'two replicas must share the root through Secret istio-ca-secret');
    assert.equal(config.keySource.caNamespace, deployment.metadata.namespace);
    assert.equal(config.keySource.distributeRootConfigMap, true);
    assert.equal(config.keySource.rootCaDir, '/etc/cacerts');
    for (const [portName, address, fallback] of [
      ['grpc', config.grpcAddress, defaults.grpcAddress],
      ['http-monitoring', config.monitoringAddress, defaults.monitoringAddress],
    ] as const) {
      assert.equal(containerPort(caContainer, portName), address.port, `containerPort ${portName}`);
      assert.equal(address.port, fallback.port, `${portName} should stay on the default port ${fallback.port}`);
      const servicePort = service.spec.ports.find((p) => p.name === portName);
      assert.ok(servicePort, `Service port ${portName}`);
      assert.equal(servicePort.port, fallback.port);
      assert.equal(containerPort(caContainer, servicePort.targetPort), address.port);
    }
    assert.deepEqual(service.spec.selector, deployment.spec.selector.matchLabels);
    // Clients dial the Service by name: the serving certificate must carry it.
    assert.ok(config.serverDnsNames.includes(`${service.metadata.name}.${service.metadata.namespace}.svc`), `serving DNS names ${config.serverDnsNames.join(', ')}`);
    assert.equal(caContainer.readinessProbe?.httpGet?.path, '/ready');
    assert.equal(caContainer.livenessProbe?.httpGet?.path, '/healthz');
    for (const probe of [caContainer.readinessProbe!, caContainer.livenessProbe!]) {
      assert.equal(containerPort(caContainer, probe.httpGet!.port), config.monitoringAddress.port);
    }
    // The cacerts Secret is optional (absent: self-signed) and mounted whole, so Secret updates reach the CA.
    const cacerts = spec.volumes?.find((v) => v.secret?.secretName === 'cacerts');
    assert.ok(cacerts?.secret?.optional, 'the cacerts Secret volume must be optional');
    const mount = caContainer.volumeMounts?.find((m) => m.name === cacerts.name);
    assert.equal(mount?.mountPath, config.keySource.rootCaDir);
    assert.ok(!('subPath' in (mount ?? {})), 'a subPath mount would never see Secret updates');
    const stateMount = caContainer.volumeMounts?.find((m) => m.mountPath === config.keySource.stateDir);
    assert.ok(stateMount, `--state-dir ${config.keySource.stateDir} must be a mounted volume (the root filesystem is read-only)`);
    const pdb = find<KubeObject & { spec: { minAvailable: number; selector: { matchLabels: Record<string, string> } } }>(objects, 'PodDisruptionBudget', 'meshca');
    assert.deepEqual(pdb.spec.selector.matchLabels, deployment.spec.selector.matchLabels);
    assert.ok(pdb.spec.minAvailable >= 1 && pdb.spec.minAvailable < deployment.spec.replicas!);
  });

  it('runs the agent DaemonSet with its socket in the host directory, CA_ADDR at the Service, the root from istio-ca-root-cert', () => {
    const spec = daemonSet.spec.template.spec;
    assert.equal(agentContainer.args?.[0], 'agent');
    const { flags } = parseCommandLine(agentContainer.args!);
    const env = environment(agentContainer, daemonSet);
    const known = envNamesRead(ENV_SOURCES.agent);
    for (const name of Object.keys(env)) {
      if (name === 'NODE_OPTIONS') continue; // Node's own; checked below.
      assert.ok(known.names.has(name) || known.prefixes.some((p) => name.startsWith(p)), `env ${name} of the agent is read by no agent module`);
    }
    // Only V8's young-generation size: flags that change what the agent does belong in its own settings.
    if (env.NODE_OPTIONS !== undefined) assert.match(env.NODE_OPTIONS, /^--max-semi-space-size=\d+$/);
    const config = readAgentConfig(flags as AgentFlags, env);
    const defaults = readAgentConfig({}, {});
    assert.equal(config.mode, 'node');
    assert.equal(containerPort(agentContainer, 'http-status'), config.statusAddress.port);
    assert.equal(config.statusAddress.port, defaults.statusAddress.port);
    assert.notEqual(config.statusAddress.host, '127.0.0.1', 'the kubelet probes the pod IP: the status server must not listen on loopback only');
    assert.equal(agentContainer.readinessProbe?.httpGet?.path, '/healthz/ready');
    for (const probe of [agentContainer.readinessProbe!, agentContainer.livenessProbe!]) {
      assert.equal(containerPort(agentContainer, probe.httpGet!.port), config.statusAddress.port);
    }
    // CA_ADDR names the Service and its gRPC port.
    const [caHost, caPort] = config.ca.address.split(':');
    assert.equal(caHost, `${service.metadata.name}.${service.metadata.namespace}.svc`);
    assert.equal(Number(caPort), service.spec.ports.find((p) => p.name === 'grpc')?.port);
    // The socket lives in the hostPath volume that workloads mount too.
    const socketDir = spec.volumes?.find((v) => v.hostPath);
    assert.ok(socketDir?.hostPath, 'the DaemonSet needs a hostPath volume for the SDS socket');
    const socketMount = agentContainer.volumeMounts?.find((m) => m.name === socketDir.name);
    assert.ok(socketMount);
    assert.equal(path.posix.dirname(config.sdsSocket), socketMount.mountPath);
    assert.equal(socketMount.mountPath, socketDir.hostPath.path, 'mounted at the host path, so the socket path is the same on the host and in pods');
    // The root comes from the ConfigMap the CA distributes.
    const rootVolume = spec.volumes?.find((v) => v.configMap?.name === ROOT_CONFIGMAP_NAME);
    assert.ok(rootVolume, `the DaemonSet must mount ConfigMap ${ROOT_CONFIGMAP_NAME}`);
    const rootMount = agentContainer.volumeMounts?.find((m) => m.name === rootVolume.name);
    assert.equal(config.ca.rootCertPath, path.posix.join(rootMount!.mountPath, ROOT_CONFIGMAP_KEY));
    // Whoever prepares the socket directory mounts the same volume.
    for (const init of spec.initContainers ?? []) {
      assert.ok(init.volumeMounts?.some((m) => m.name === socketDir.name && m.mountPath === socketMount.mountPath), `init container ${init.name}`);
      // The kubelet creates a hostPath directory root-owned 0755 and fsGroup does not apply to hostPath, so only
      // uid 0 can hand it to the agent's user. Whatever runs as root does that one chown and nothing else: no
      // other capability, no escalation, no writable image, only the socket volume.
      const context = init.securityContext ?? {};
      assert.ok(context.runAsUser === 0 || spec.securityContext?.runAsNonRoot, `init container ${init.name}: state its user`);
      if (context.runAsUser !== 0) continue;
      assert.deepEqual(init.command, ['chown', `${spec.securityContext?.runAsUser}:${spec.securityContext?.runAsGroup}`, socketMount.mountPath], `init container ${init.name} only chowns the socket directory to the agent's user`);
      assert.equal(init.args, undefined);
      assert.deepEqual(context.capabilities, { drop: ['ALL'], add: ['CHOWN'] });
      assert.equal(context.allowPrivilegeEscalation, false);
      assert.equal(context.readOnlyRootFilesystem, true);
      assert.notEqual(context.privileged, true);
      assert.deepEqual(init.volumeMounts?.map((m) => m.name), [socketDir.name], `init container ${init.name} mounts only the socket directory`);
    }
  });

  it('switches the CA to Vault in deploy/overlays/vault with variables the Vault module reads', () => {
    const overlay = path.join(DEPLOY, 'overlays/vault');
    const [patchDoc] = loadDocuments(path.join(overlay, 'ca-vault.yaml'));
    const patch = asKubeObject(patchDoc, 'ca-vault.yaml') as Workload;
    assert.equal(patch.kind, 'Deployment');
    assert.equal(patch.metadata.name, deployment.metadata.name);
    assert.ok(kustomizationResources(overlay).includes('../../kubernetes'));
    // Strategic merge as kustomize does it for these fields: args replaced, env merged by name.
    const patched = container(patch, caContainer.name);
    const merged: Container = { ...caContainer, args: patched.args ?? caContainer.args, env: [...(patched.env ?? [])] };
    for (const variable of caContainer.env ?? []) if (!merged.env!.some((v) => v.name === variable.name)) merged.env!.push(variable);
    const { flags } = parseCommandLine(merged.args!);
    const env = environment(merged, deployment);
    const known = envNamesRead(ENV_SOURCES.ca);
    for (const name of Object.keys(env)) assert.ok(known.names.has(name), `env ${name} of the Vault overlay is read by no CA module`);
    const config = readCaServerConfig(flags as CaServerFlags, env);
    assert.equal(config.keySource.source, 'vault');
    assert.equal(config.keySource.vault?.mode, 'intermediate');
    assert.ok(config.keySource.vault?.auth.kind === 'kubernetes' && config.keySource.vault.auth.role === env.VAULT_ROLE);
    // The Vault JWT and Vault's CA certificate are mounted where the configuration looks for them.
    const mounts = patched.volumeMounts ?? [];
    const volumes = patch.spec.template.spec.volumes ?? [];
    const jwtFile = config.keySource.vault.auth.jwtFile;
    const jwtMount = mounts.find((m) => jwtFile.startsWith(`${m.mountPath}/`));
    const jwtVolume = volumes.find((v) => v.name === jwtMount?.name);
    const token = jwtVolume?.projected?.sources.find((s) => s.serviceAccountToken)?.serviceAccountToken;
    assert.equal(path.posix.join(jwtMount!.mountPath, token!.path), jwtFile);
    assert.ok(mounts.some((m) => config.keySource.vault!.tlsRootCertFile?.startsWith(`${m.mountPath}/`)), 'VAULT_TLS_ROOT_CERT must be in a mounted volume');
  });

  it('has an Envoy example that gets default and ROOTCA from the agent socket with its own istio-ca token', () => {
    const [bootstrap] = loadDocuments(path.join(DEPLOY, 'examples/envoy-sds.yaml'));
    const configs: Json[] = [];
    const walk = (value: unknown): void => {
      if (Array.isArray(value)) value.forEach(walk);
      else if (isJson(value)) {
        if (typeof value.name === 'string' && isJson(value.sds_config)) configs.push(value);
        Object.values(value).forEach(walk);
      }
    };
    walk(bootstrap);
    assert.deepEqual(configs.map((c) => c.name).sort(), ['ROOTCA', 'default']);
    const agentSocket = readAgentConfig(parseCommandLine(agentContainer.args!).flags as AgentFlags, environment(agentContainer, daemonSet)).sdsSocket;
    const workloads = loadDocuments(path.join(DEPLOY, 'examples/workload.yaml')).map((d) => asKubeObject(d, 'workload.yaml'));
    const workload = workloads.find((o): o is Workload => o.kind === 'Deployment')!;
    const envoy = container(workload, 'envoy');
    const volumes = workload.spec.template.spec.volumes ?? [];
    for (const config of configs) {
      const source = (config.sds_config as { api_config_source: { api_type: string; grpc_services: Json[] } }).api_config_source;
      assert.equal(source.api_type, 'GRPC');
      const google = source.grpc_services[0]!.google_grpc as {
        target_uri: string;
        call_credentials: { from_plugin: { name: string; typed_config: { header_key: string; secret_data: { filename: string } } } }[];
      };
      assert.ok(google, `${String(config.name)}: the token can only be sent by google_grpc (file_based_metadata)`);
      assert.equal(google.target_uri, `unix:${agentSocket}`);
      const plugin = google.call_credentials[0]!.from_plugin;
      assert.equal(plugin.name, 'envoy.grpc_credentials.file_based_metadata');
      assert.equal(plugin.typed_config.header_key, SDS_TOKEN_HEADER);
      // The token file is the pod's projected token for audience istio-ca.
      const tokenFile = plugin.typed_config.secret_data.filename;
      const mount = envoy.volumeMounts?.find((m) => tokenFile.startsWith(`${m.mountPath}/`));
      const token = volumes.find((v) => v.name === mount?.name)?.projected?.sources.find((s) => s.serviceAccountToken)?.serviceAccountToken;
      assert.ok(token, `${tokenFile} must be a projected service-account token`);
      assert.equal(token.audience, 'istio-ca');
      assert.equal(path.posix.join(mount!.mountPath, token.path), tokenFile);
    }
    // The workload reaches the socket through the DaemonSet's host directory, mounted at the same path.
    const hostDir = daemonSet.spec.template.spec.volumes!.find((v) => v.hostPath)!.hostPath!.path;
    const socketVolume = volumes.find((v) => v.hostPath?.path === hostDir);
    assert.ok(socketVolume, `the workload must mount the host directory ${hostDir}`);
    assert.equal(envoy.volumeMounts?.find((m) => m.name === socketVolume.name)?.mountPath, path.posix.dirname(agentSocket));
    // The bootstrap reaches Envoy as the ConfigMap the kustomization generates.
    const [kustomization] = loadDocuments(path.join(DEPLOY, 'examples/kustomization.yaml')) as { configMapGenerator: { name: string; files: string[] }[] }[];
    const generated = kustomization!.configMapGenerator.find((g) => g.files.some((f) => f.endsWith('=envoy-sds.yaml')));
    assert.ok(generated && volumes.some((v) => v.configMap?.name === generated.name));
    assert.ok(envoy.args?.join(' ').includes(`/${generated.files[0]!.split('=')[0]}`), 'Envoy must be started with the generated bootstrap file');
  });

  it('has a Grafana dashboard that shows every CA and agent metric, and alert rules, using only metrics meshca exports', () => {
    const metrics = metricsInSource();
    const dashboard = JSON.parse(readFileSync(path.join(DEPLOY, 'grafana/meshca-dashboard.json'), 'utf8')) as { panels: { type: string; title: string; targets?: { expr: string }[] }[] };
    const used = new Set<string>();
    for (const panel of dashboard.panels) {
      if (panel.type === 'row') continue;
      assert.ok(panel.targets?.length, `panel "${panel.title}" has no query`);
      for (const target of panel.targets) {
        for (const name of metricsInExpression(target.expr)) {
          assert.ok(definedMetric(name, metrics), `panel "${panel.title}" uses ${name}, which meshca does not export`);
          used.add(name.replace(/_(bucket|sum|count)$/, (suffix) => (metrics.names.has(name) ? suffix : '')));
        }
      }
    }
    const exported = readSources([
      'src/server/metrics.ts',
      'src/agent/metrics.ts',
      'src/ca/sources/cacerts/cacerts.ts',
      'src/util/build-info-metric.ts',
      'src/ca/federation/federated-bundles.ts',
      'src/ca/federation/bundle-endpoint.ts',
    ]).flatMap(({ text }) => [
      ...[...text.matchAll(/new (?:Counter|Gauge|Histogram)(?:<[^>]*>)?\(\{\s*name:\s*'([a-z_:][a-z0-9_:]*)'/g)].map((m) => m[1]!),
      ...[...text.matchAll(/_METRIC\s*=\s*'([a-z_:][a-z0-9_:]*)'/g)].map((m) => m[1]!),
    ]);
    assert.ok(exported.length >= 15, `found only ${exported.length} metrics in src/`);
    assert.deepEqual(exported.filter((name) => !used.has(name)), [], 'metrics missing from the dashboard');
    const [rules] = loadDocuments(path.join(DEPLOY, 'prometheus/meshca-alerts.yaml')) as { groups: { rules: { alert: string; expr: string }[] }[] }[];
    const alerts = rules!.groups.flatMap((g) => g.rules);
    assert.ok(alerts.length >= 5);
    for (const rule of alerts) {
      for (const name of metricsInExpression(rule.expr)) assert.ok(definedMetric(name, metrics), `alert ${rule.alert} uses ${name}, which meshca does not export`);
    }
    for (const essential of ['citadel_server_root_cert_expiry_timestamp', 'citadel_server_cert_chain_expiry_timestamp', 'citadel_server_authentication_failure_count']) {
      assert.ok(alerts.some((r) => r.expr.includes(essential)), `no alert on ${essential}`);
    }
  });

  it('selects meshca by scrape job in every alert and dashboard query, uses Istio names as Istio exposes them, and links each alert to its runbook', () => {
    const istio = istioMetricNames();
    const alertRules = rulesOf(loadDocuments(path.join(DEPLOY, 'prometheus/meshca-alerts.yaml'))[0]);
    const [operatorRule] = loadDocuments(path.join(OPERATOR, 'meshca-rules.yaml')).map((d) => asKubeObject(d, 'meshca-rules.yaml'));
    assert.equal(operatorRule!.kind, 'PrometheusRule');
    assert.deepEqual(operatorRule!.spec, loadDocuments(path.join(DEPLOY, 'prometheus/meshca-alerts.yaml'))[0], 'the PrometheusRule holds the rule file, unchanged');
    const jobs = { ca: 'meshca-ca', agent: 'meshca-agent' };
    const runbooks = new Map<string, Set<string>>();
    for (const rule of alertRules) {
      for (const name of metricsInExpression(rule.expr)) {
        if (name.startsWith('citadel_server_') || name.startsWith('istio_agent_')) assert.ok(istio.exported.has(name), `alert ${rule.alert} uses ${name}, which is not an Istio name meshca exports (docs/istio-metric-names.json)`);
        const job = name.startsWith('istio_agent_') || /^meshca_(agent|sds)_/.test(name) ? jobs.agent : jobs.ca;
        assert.ok(new RegExp(`${name}\\{job="${job}"`).test(rule.expr), `alert ${rule.alert}: ${name} must be selected with {job="${job}", ...}`);
      }
      const url = rule.annotations.runbook_url;
      const link = url === undefined ? null : /^(docs\/[\w-]+\.md)#([\w-]+)$/.exec(url);
      assert.ok(link, `alert ${rule.alert} has no runbook_url of the form docs/<file>.md#<section> (got ${String(url)})`);
      if (!runbooks.has(link[1]!)) runbooks.set(link[1]!, markdownAnchors(readFileSync(path.join(REPO_ROOT, link[1]!), 'utf8')));
      assert.ok(runbooks.get(link[1]!)!.has(link[2]!), `alert ${rule.alert}: ${url} names no section of ${link[1]}`);
    }

    const dashboard = JSON.parse(readFileSync(path.join(DEPLOY, 'grafana/meshca-dashboard.json'), 'utf8')) as {
      templating: { list: { name: string; query?: { query: string }; allValue?: string }[] };
      panels: { title: string; targets?: { expr: string }[] }[];
    };
    const jobVariable = dashboard.templating.list.find((v) => v.name === 'job');
    assert.ok(jobVariable, 'the dashboard has no $job variable');
    assert.match(jobVariable.query!.query, /meshca_build_info/, 'the $job variable lists the jobs that export meshca_build_info (istiod does not)');
    assert.equal(jobVariable.allValue, undefined, '"All" must mean all meshca jobs, not .* (which would take in istiod)');
    for (const panel of dashboard.panels) {
      for (const target of panel.targets ?? []) {
        for (const name of metricsInExpression(target.expr)) {
          if (name.startsWith('citadel_server_') || name.startsWith('istio_agent_')) assert.ok(istio.exported.has(name), `panel "${panel.title}" uses ${name}, which is not an Istio name meshca exports`);
          assert.ok(new RegExp(`${name}\\{job=~"\\$job"`).test(target.expr), `panel "${panel.title}": ${name} must be selected with {job=~"$job", ...}`);
        }
      }
    }

    // The prometheus-operator objects scrape the ports the CA's Service and the agents' pods name, under those jobs.
    const operatorKustomization = kustomizationResources(OPERATOR).sort();
    assert.deepEqual(operatorKustomization, readdirSync(OPERATOR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort());
    const monitors = loadDocuments(path.join(OPERATOR, 'monitors.yaml')).map((d) => asKubeObject(d, 'monitors.yaml')) as (KubeObject & { spec: MonitorSpec })[];
    const serviceMonitor = find<KubeObject & { spec: MonitorSpec }>(monitors, 'ServiceMonitor', 'meshca-ca');
    const podMonitor = find<KubeObject & { spec: MonitorSpec }>(monitors, 'PodMonitor', 'meshca-agent');
    assert.deepEqual(serviceMonitor.spec.selector.matchLabels, service.metadata.labels);
    assert.deepEqual(serviceMonitor.spec.endpoints!.map((e) => e.port), [service.spec.ports.find((p) => p.port === 15014)!.name]);
    assert.deepEqual(podMonitor.spec.selector.matchLabels, Object.fromEntries(Object.entries(daemonSet.spec.template.metadata.labels).filter(([k]) => k.startsWith('app.kubernetes.io/'))));
    assert.deepEqual(podMonitor.spec.podMetricsEndpoints!.map((e) => containerPort(agentContainer, e.port)), [15020]);
    for (const [endpoints, job] of [[serviceMonitor.spec.endpoints!, jobs.ca], [podMonitor.spec.podMetricsEndpoints!, jobs.agent]] as const) {
      assert.deepEqual(endpoints.flatMap((e) => e.relabelings ?? []), [{ targetLabel: 'job', replacement: job }]);
    }
    for (const o of [serviceMonitor, podMonitor, operatorRule!]) assert.equal(o.metadata.namespace, 'istio-system');
  });

  it('has a multi-stage Dockerfile on Node.js 24 pinned by digest: production dependencies with pkcs11js built in a stage with the toolchain, a final stage without compilers, non-root USER, meshca on PATH, no HEALTHCHECK', () => {
    const text = readFileSync(path.join(REPO_ROOT, 'Dockerfile'), 'utf8');
    const instructions = text
      .replace(/\\\n/g, ' ')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith('#'))
      .map((line) => {
        const [keyword, ...rest] = line.split(/\s+/);
        return { keyword: keyword!.toUpperCase(), args: rest.join(' ') };
      });
    assert.ok(!instructions.some((i) => i.keyword === 'HEALTHCHECK'), 'no HEALTHCHECK: Kubernetes probes the HTTP endpoints');
    const args = Object.fromEntries(instructions.filter((i) => i.keyword === 'ARG').map((i) => i.args.split('=') as [string, string]));
    const froms = instructions.map((i, index) => ({ ...i, index })).filter((i) => i.keyword === 'FROM');
    assert.ok(froms.length >= 2, 'multi-stage: a build stage and a runtime stage');
    const finalStage = instructions.slice(froms[froms.length - 1]!.index);
    const imageOf = (from: { args: string }): string => from.args.split(/\s+/)[0]!.replace(/^\$\{(\w+)\}$/, (_, name: string) => args[name] ?? name);
    const baseImage = imageOf(finalStage[0]!);
    // The supported Node.js (24, matching package.json engines and README), by digest: a tag alone can be re-pushed.
    assert.match(baseImage, /^node:24[\w.-]*-slim@sha256:[0-9a-f]{64}$/);
    const stageNames = new Set(froms.map((f) => /\bAS\s+(\S+)/i.exec(f.args)?.[1]).filter((name) => name !== undefined));
    for (const from of froms) {
      const image = imageOf(from);
      assert.ok(stageNames.has(image) || /@sha256:[0-9a-f]{64}$/.test(image), `FROM ${from.args}: pin the image by digest`);
    }
    const engines = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
    assert.match(engines, /^>=20\.19\.0$/, 'package.json engines: the oldest Node.js CI still runs (20.19); 24 is the supported line');
    const runs = finalStage.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    assert.ok(!runs.some((r) => /\b(npm run build|tsc)\b/.test(r)), 'no compiling in the final stage');
    // The native addon pkcs11js (node-gyp: python3, make, g++) is built in a stage that has the toolchain, with the
    // production dependencies (npm ci --omit=dev), and the final stage copies that node_modules: no compiler in it.
    const toolchain = ['python3', 'make', 'g++'];
    assert.ok(!runs.some((r) => /\bapt(-get)? install\b/.test(r) || toolchain.some((tool) => r.split(/\s+/).includes(tool))), 'no toolchain installed in the final stage');
    const stageOf = (name: string): { keyword: string; args: string }[] => {
      const start = froms.find((f) => new RegExp(`\\bAS\\s+${name}$`, 'i').test(f.args));
      assert.ok(start, `no stage named ${name}`);
      const next = froms.find((f) => f.index > start.index);
      return instructions.slice(start.index, next?.index);
    };
    const modulesCopy = finalStage.find((i) => i.keyword === 'COPY' && /^--from=(\S+)\s+\S*node_modules\s+\S*node_modules$/.test(i.args));
    assert.ok(modulesCopy, 'the final stage copies node_modules from the stage that installed and built them');
    const depsRuns = stageOf(/^--from=(\S+)/.exec(modulesCopy.args)![1]!).filter((i) => i.keyword === 'RUN').map((i) => i.args);
    const aptInstall = depsRuns.find((r) => /\bapt-get\b.*\binstall\b/.test(r));
    assert.ok(aptInstall, 'the dependencies stage installs the toolchain with apt-get');
    for (const tool of toolchain) assert.ok(aptInstall.split(/\s+/).includes(tool), `the dependencies stage installs ${tool}`);
    assert.match(aptInstall, /DEBIAN_FRONTEND=noninteractive/);
    const install = depsRuns.find((r) => /\bnpm ci\b/.test(r));
    assert.ok(install && install.includes('--omit=dev'), 'the dependencies stage installs production dependencies only (npm ci --omit=dev)');
    // With --ignore-scripts (our own `prepare` needs TypeScript), pkcs11js must be rebuilt explicitly, and the build
    // must prove the addon exists and loads.
    if (install.includes('--ignore-scripts')) assert.ok(depsRuns.some((r) => /\bnpm rebuild pkcs11js\b/.test(r)), 'npm ci --ignore-scripts skips node-gyp: npm rebuild pkcs11js');
    assert.ok(depsRuns.some((r) => r.includes('node_modules/pkcs11js/build/Release/pkcs11.node') && r.includes(`require('pkcs11js')`)), 'the build checks that pkcs11.node exists and loads');
    assert.ok(finalStage.some((i) => i.keyword === 'COPY' && i.args.startsWith('--from=') && i.args.includes('dist')), 'dist/ comes from the build stage');
    const users = finalStage.filter((i) => i.keyword === 'USER');
    assert.ok(users.length > 0, 'the final stage sets USER');
    const user = users[users.length - 1]!.args.split(':')[0]!;
    assert.ok(/^\d+$/.test(user) && user !== '0', `USER ${user} must be a non-root number (Kubernetes runAsNonRoot can only check numbers)`);
    for (const workload of [deployment, daemonSet]) assert.equal(String(workload.spec.template.spec.securityContext?.runAsUser), user);
    const entrypoints = finalStage.filter((i) => i.keyword === 'ENTRYPOINT');
    assert.deepEqual(JSON.parse(entrypoints[entrypoints.length - 1]!.args), ['meshca']);
    // `meshca` on PATH: a link to the package's bin, which must be an executable script.
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    assert.ok(
      runs.some((r) => r.includes('npm link') || new RegExp(`ln -s\\S* \\S*${pkg.bin.meshca!.replace('.', '\\.')} /usr/(local/)?bin/meshca`).test(r)),
      `the final stage must put ${pkg.bin.meshca} on PATH as meshca`,
    );
    assert.ok(runs.some((r) => r.includes(`chmod`) && r.includes(pkg.bin.meshca!)), `${pkg.bin.meshca} must be made executable`);
    assert.match(readFileSync(path.join(REPO_ROOT, 'src/cli.ts'), 'utf8'), /^#!\/usr\/bin\/env node\n/);
    // What the build copies is in the context, and what must never be in an image is not.
    const ignored = readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    for (const secretish of ['.meshca', 'node_modules', 'dist', '.git']) assert.ok(ignored.includes(secretish), `.dockerignore must list ${secretish}`);
    for (const copy of instructions.filter((i) => i.keyword === 'COPY' && !i.args.startsWith('--from='))) {
      for (const source of copy.args.split(/\s+/).slice(0, -1)) {
        assert.ok(existsSync(path.join(REPO_ROOT, source)), `COPY ${source}: no such file`);
        assert.ok(!ignored.includes(source), `COPY ${source} is excluded by .dockerignore`);
      }
    }
    const images = objects.flatMap((o) => (o.kind === 'Deployment' || o.kind === 'DaemonSet' ? [...((o as Workload).spec.template.spec.initContainers ?? []), ...(o as Workload).spec.template.spec.containers] : []));
    for (const c of images) assert.match(c.image, /^meshca:/, `container ${c.name} runs the meshca image`);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The manifests' configuration, run

/** A container's arguments and environment with each volume's mount path replaced by a local directory. */
function localize(c: Container, owner: Workload, dirs: Record<string, string>): { args: string[]; env: Record<string, string> } {
  const mounts = c.volumeMounts ?? [];
  const rewrite = (value: string): string => {
    for (const mount of mounts) {
      const local = dirs[mount.name];
      assert.ok(local, `no local directory for volume ${mount.name}`);
      if (value === mount.mountPath || value.startsWith(`${mount.mountPath}/`)) return local + value.slice(mount.mountPath.length);
    }
    return value;
  };
  const args = (c.args ?? []).map((arg) => {
    const match = /^(--[\w-]+=)(.*)$/.exec(arg);
    return match ? match[1]! + rewrite(match[2]!) : rewrite(arg);
  });
  const env = Object.fromEntries(Object.entries(environment(c, owner)).map(([k, v]) => [k, rewrite(v)]));
  return { args, env };
}

async function httpStatus(url: string): Promise<number> {
  try {
    return (await fetch(url)).status;
  } catch {
    return 0;
  }
}

async function eventually<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('the CA and the agent as the manifests configure them, against the Kubernetes stand-in', () => {
  const objects = baseObjects();
  const deployment = find<Workload>(objects, 'Deployment', 'meshca');
  const daemonSet = find<Workload>(objects, 'DaemonSet', 'meshca-agent');
  const caContainer = container(deployment, 'meshca');
  const agentContainer = container(daemonSet, 'agent');
  const namespace = deployment.metadata.namespace!;
  let kube: KubeStandin;
  let ca: MeshcaProcess | undefined;
  let agent: MeshcaProcess | undefined;
  const temp = makeTempDir('meshca-manifests-');
  let monitoringUrl = '';
  let grpcPort = 0;

  before(async () => {
    kube = await startKubeStandin({ namespaces: ['default', 'kube-system', namespace] });
    // ztunnel-style node account and a workload on the same node, for node impersonation (pods list/watch).
    kube.state.addPod({ namespace, name: 'ztunnel-abcde', serviceAccount: 'ztunnel', nodeName: 'node-1' });
    kube.state.addPod({ namespace: 'default', name: 'httpbin-12345', serviceAccount: 'httpbin', nodeName: 'node-1' });
    const dirs: Record<string, string> = {};
    for (const volume of deployment.spec.template.spec.volumes ?? []) mkdirSync((dirs[volume.name] = path.join(temp.dir, 'ca', volume.name)), { recursive: true });
    const { args, env } = localize(caContainer, deployment, dirs);
    ca = startMeshca(
      [...args, '--kubeconfig', kube.kubeconfigPath, '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0'],
      { env: { ...env, CA_TRUSTED_NODE_ACCOUNTS: `${namespace}/ztunnel` } },
    );
    const ready = await ca.waitForLog(/CA server ready/, 30_000);
    monitoringUrl = `http://${String(ready.monitoringAddress)}`;
    grpcPort = Number(String(ready.grpcAddress).split(':').pop());
  });

  after(async () => {
    await agent?.stop();
    await ca?.stop();
    await kube?.close();
    temp.cleanup();
  });

  it('serves a workload certificate through the agent, answers the probes, and makes only API requests the RBAC allows', async () => {
    for (const probe of [caContainer.readinessProbe!, caContainer.livenessProbe!]) {
      await eventually(`CA ${probe.httpGet!.path} to answer 200`, async () => ((await httpStatus(monitoringUrl + probe.httpGet!.path)) === 200 ? true : undefined));
    }
    // The agent's root volume is ConfigMap istio-ca-root-cert, which the CA writes in every namespace.
    const rootPem = await eventually('ConfigMap istio-ca-root-cert in the agent namespace', () => kube.state.get('configmaps', daemonSet.metadata.namespace, ROOT_CONFIGMAP_NAME)?.data as Record<string, string> | undefined);
    assert.ok(kube.state.get('configmaps', 'default', ROOT_CONFIGMAP_NAME), 'distributed to every namespace');
    assert.ok(kube.state.get('secrets', namespace, CA_SECRET_NAME), `the shared root is kept in Secret ${CA_SECRET_NAME}`);

    const dirs: Record<string, string> = {};
    for (const volume of daemonSet.spec.template.spec.volumes ?? []) mkdirSync((dirs[volume.name] = path.join(temp.dir, 'ag', volume.name.slice(0, 8))), { recursive: true });
    const rootVolume = daemonSet.spec.template.spec.volumes!.find((v) => v.configMap?.name === ROOT_CONFIGMAP_NAME)!;
    for (const [key, value] of Object.entries(rootPem)) writeFileSync(path.join(dirs[rootVolume.name]!, key), value);
    const { args, env } = localize(agentContainer, daemonSet, dirs);
    // Dial the local CA but verify the name the manifest's CA_ADDR uses, as the agent in the cluster does.
    const serviceName = env.CA_ADDR!.split(':')[0]!;
    agent = startMeshca([...args, '--status-addr', '127.0.0.1:0'], { env: { ...env, CA_ADDR: `127.0.0.1:${grpcPort}`, ISTIOD_SAN: serviceName } });
    const listening = await agent.waitForLog(/status server listening/);
    const readiness = String(listening.url) + agentContainer.readinessProbe!.httpGet!.path;
    await eventually('agent /healthz/ready to answer 200', async () => ((await httpStatus(readiness)) === 200 ? true : undefined));
    assert.equal(await httpStatus(String(listening.url) + agentContainer.livenessProbe!.httpGet!.path), 200);

    // A workload with the example's projected token (audience istio-ca) asks the node socket, like its Envoy.
    const socket = args.find((a) => a.startsWith('--sds-socket='))!.split('=')[1]!;
    const tokenFile = path.join(temp.dir, 'istio-token');
    writeFileSync(tokenFile, await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', podName: 'httpbin-12345', audiences: ['istio-ca'] }));
    const out = path.join(temp.dir, 'httpbin');
    const fetched = await runMeshca(['fetch', '--sds-socket', socket, '--token-file', tokenFile, '--resource', 'default', '--resource', 'ROOTCA', '--out', out, '--timeout', '30s']);
    assert.equal(fetched.code, 0, fetched.stderr);
    const chain = readFileSync(path.join(out, 'cert-chain.pem'), 'utf8');
    const leaf = chain.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
    assert.match(opensslText(leaf), /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/httpbin/);
    const verified = opensslVerify(leaf, chain.slice(leaf.length), rootPem[ROOT_CONFIGMAP_KEY]!);
    assert.ok(verified.ok, verified.output);

    // Node impersonation, as ztunnel uses it (answered from the CA's pod cache: one list, then a watch).
    const ztunnelToken = path.join(temp.dir, 'ztunnel-token');
    writeFileSync(ztunnelToken, await kube.mintToken({ namespace, serviceAccount: 'ztunnel', podName: 'ztunnel-abcde', audiences: ['istio-ca'] }));
    const impersonated = await runMeshca([
      'request',
      '--ca-addr', `127.0.0.1:${grpcPort}`,
      '--server-name', serviceName,
      '--root-cert', path.join(dirs[rootVolume.name]!, ROOT_CONFIGMAP_KEY),
      '--token-file', ztunnelToken,
      '--impersonate', 'spiffe://cluster.local/ns/default/sa/httpbin',
      '--out', path.join(temp.dir, 'impersonated'),
    ]);
    assert.equal(impersonated.code, 0, impersonated.stderr);

    // An edited trust-bundle ConfigMap is repaired (configmaps update).
    const edited = kube.state.get('configmaps', 'default', ROOT_CONFIGMAP_NAME)!;
    kube.state.put('configmaps', { ...edited, data: { [ROOT_CONFIGMAP_KEY]: 'tampered' } });
    await eventually('the CA to repair the ConfigMap', () => ((kube.state.get('configmaps', 'default', ROOT_CONFIGMAP_NAME)?.data as Record<string, string>)[ROOT_CONFIGMAP_KEY] === rootPem[ROOT_CONFIGMAP_KEY] ? true : undefined));

    const grants = grantsFor(objects, { name: deployment.spec.template.spec.serviceAccountName!, namespace });
    const seen = new Set<string>();
    for (const request of kube.state.requests) {
      const parsed = parseApiPath(request.path);
      assert.ok(parsed, `unexpected request ${request.method} ${request.path}`);
      const query = new URLSearchParams(request.query);
      const watching = query.get('watch') === 'true' || query.get('watch') === '1' || request.path.includes('/watch/');
      const verb = { GET: parsed.name ? 'get' : watching ? 'watch' : 'list', POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: parsed.name ? 'delete' : 'deletecollection' }[request.method];
      assert.ok(verb, `unexpected method ${request.method}`);
      const byName = /(?:^|,)metadata\.name=([^,]+)/.exec(query.get('fieldSelector') ?? '')?.[1];
      const name = parsed.name ?? byName;
      const described = `${verb} ${parsed.resource}${parsed.namespace ? ` in ${parsed.namespace}` : ''}${name ? ` named ${name}` : ''}`;
      assert.ok(
        allowed(grants, { group: parsed.group, resource: parsed.resource, verb, ...(parsed.namespace ? { namespace: parsed.namespace } : {}), ...(name ? { name } : {}) }),
        `the CA made a request its RBAC forbids: ${described} (${request.method} ${request.path}${request.query})`,
      );
      seen.add(`${verb} ${parsed.resource}`);
    }
    for (const expected of ['create tokenreviews', 'list pods', 'watch pods', 'list namespaces', 'watch namespaces', 'watch configmaps', 'update configmaps', 'create secrets', 'watch secrets']) {
      assert.ok(seen.has(expected), `expected the run to exercise "${expected}"; saw ${[...seen].sort().join(', ')}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The operator docs against the code

const DOCS = path.join(REPO_ROOT, 'docs');
const DOC_FILES = [...readdirSync(DOCS).filter((f) => f.endsWith('.md')).map((f) => path.join(DOCS, f)), path.join(BASE, 'README.md')];

/** Every meshca command, with its subcommands, whose actions do nothing. */
function fullProgram(): Command {
  const program = new Command().exitOverride();
  for (const register of [registerInspectCommand, registerCacertsCommand, registerAgentCommand, registerFetchCommand, registerCaCommand, registerTokenCommand, registerDevCommand, registerRequestCommand, registerVersionCommand, registerStatusCommand, registerDecisionsCommand]) {
    register(program);
  }
  return program;
}

/** Shell lines of the fenced code blocks, with backslash continuations joined. */
function shellLines(markdown: string): string[] {
  const lines: string[] = [];
  for (const block of markdown.matchAll(/```(?:sh|bash|shell)\n([\s\S]*?)```/g)) {
    lines.push(...block[1]!.replace(/\\\n\s*/g, ' ').split('\n'));
  }
  return lines;
}

/** Where a message in a table cell may be composed from pieces (`a: b`), each piece must be in the source. */
function messageInSource(message: string, source: string): string | null {
  const fragments = message
    .split(/<[^>]*>|…/)
    .map((f) => f.trim())
    .filter((f) => f.length >= 6);
  if (Math.max(0, ...fragments.map((f) => f.length)) < 10) return 'too little literal text to check';
  for (const fragment of fragments) {
    if (source.includes(fragment)) continue;
    const pieces = fragment.split(/:\s/).map((p) => p.trim()).filter((p) => p.length >= 6);
    const missing = pieces.filter((p) => !source.includes(p));
    if (pieces.length === 0 || missing.length > 0) return `"${missing[0] ?? fragment}" is not in src/`;
  }
  return null;
}

describe('docs/: commands, links and messages match the code', () => {
  it('uses only real meshca commands and flags in its command lines', () => {
    const program = fullProgram();
    let checked = 0;
    for (const file of DOC_FILES) {
      for (const line of shellLines(readFileSync(file, 'utf8'))) {
        // Each simple command of the line; meshca is the program only when it comes first (after VAR=value).
        for (const segment of line.replace(/#.*$/, '').split(/&&|\|\||[;|]|\$\(/)) {
          const match = /^\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:meshca|node dist\/cli\.js)\s+([^>]*)/.exec(segment);
          if (!match) continue;
          const words = match[1]!.trim().split(/\s+/);
          let command = program;
          while (words.length > 0 && !words[0]!.startsWith('-')) {
            const sub = command.commands.find((c) => c.name() === words[0]);
            if (!sub) break;
            command = sub;
            words.shift();
          }
          assert.notEqual(command, program, `${path.basename(file)}: "${match[0].trim()}" names no meshca command`);
          const known = new Set([...command.options.map((o) => o.long), '--help']);
          for (const word of words) {
            const flag = /^(--[\w-]+)/.exec(word)?.[1];
            if (flag) assert.ok(known.has(flag), `${path.basename(file)}: meshca ${command.name()} has no ${flag} (in "${match[0].trim()}")`);
          }
          checked++;
        }
      }
    }
    assert.ok(checked >= 20, `only ${checked} meshca command lines found in docs/`);
  });

  it('links only to files that exist', () => {
    for (const file of DOC_FILES) {
      const text = readFileSync(file, 'utf8');
      for (const match of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (/^[a-z]+:/.test(match[1]!)) continue;
        assert.ok(existsSync(path.resolve(path.dirname(file), match[1]!)), `${path.basename(file)} links to ${match[1]}, which does not exist`);
      }
      for (const match of text.matchAll(/`((?:deploy|docs|test|src)\/[\w./-]*\w)`/g)) {
        assert.ok(existsSync(path.join(REPO_ROOT, match[1]!)), `${path.basename(file)} mentions ${match[1]}, which does not exist`);
      }
    }
  });

  it('lists in its troubleshooting tables only messages that meshca still prints', () => {
    // String constants interpolated into messages (`${SDS_TOKEN_HEADER}`) are replaced by their values, and string
    // concatenations across lines are joined, so messages read as they are printed.
    const constants = new Map<string, string>();
    for (const { text } of ALL_SOURCES) for (const m of text.matchAll(/\bconst ([A-Z][A-Z0-9_]*)\s*=\s*'([^'\n]*)'/g)) constants.set(m[1]!, m[2]!);
    const source = ALL_SOURCES.map(({ text }) =>
      text.replace(/['`"]\s*\+\s*\n?\s*['`"]/g, '').replace(/\$\{([A-Z][A-Z0-9_]*)\}/g, (whole, name: string) => constants.get(name) ?? whole),
    ).join('\n');
    const text = readFileSync(path.join(DOCS, 'troubleshooting.md'), 'utf8');
    let checked = 0;
    for (const row of text.split('\n').filter((line) => line.startsWith('| `') || line.startsWith('| readiness') || line.startsWith('| `meshca'))) {
      const firstCell = row.split(/(?<!\\)\|/)[1]!;
      for (const span of firstCell.matchAll(/`([^`]+)`/g)) {
        const message = span[1]!;
        if (/^[A-Z_]+$/.test(message) || /^\d+$/.test(message) || message.startsWith('meshca ')) continue;
        const problem = messageInSource(message, source);
        assert.equal(problem, null, `troubleshooting.md: "${message}": ${problem}`);
        checked++;
      }
    }
    assert.ok(checked >= 40, `only ${checked} messages checked`);
  });
});
