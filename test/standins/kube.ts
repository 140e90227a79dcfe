/**
 * Kubernetes API server stand-in (test code only).
 *
 * Implements, over HTTPS with a throw-away CA (kubeconfig with `certificate-authority-data` + bearer token written
 * to a temp dir, so @kubernetes/client-node verifies TLS for real):
 *  - Service-account token issuer: `mintToken()` → RS256 JWT (projected claims with `kubernetes.io`, or the legacy
 *    Secret-based form), `mintForeignToken()` (same claims, signed by a key the server does not trust),
 *    `rotateSigningKey()`, `revoke()`.
 *  - `POST /apis/authentication.k8s.io/v1/tokenreviews` (201 + status; 400 when spec.token is empty; 401 for a bad
 *    reviewer credential; 403 Forbidden Status via `state.forbidReviews`), checking signature, issuer, exp/nbf
 *    (60 s leeway like go-jose), audiences (legacy tokens = API server audiences), revocation and optionally the
 *    bound pod / service account (`state.validateBoundObjects`).
 *  - `POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token` (TokenRequest).
 *  - `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` (201; any authenticated user may ask): exactly
 *    one of spec.resourceAttributes / spec.nonResourceAttributes (400 otherwise); `status.allowed` is false (no
 *    `denied`: like RBAC, which never denies, only fails to allow) when `state.forbidden` has
 *    "<verb> <resource>[/<subresource>]", true otherwise.
 *  - Core v1 `namespaces`, `pods`, `secrets`, `configmaps`, `serviceaccounts`: get, list (label/field selectors,
 *    all-namespaces lists), create (409 AlreadyExists, 404 for a missing namespace, 422 for missing names / broken
 *    kubernetes.io/tls secrets), replace (409 Conflict on stale `metadata.resourceVersion`, no-op updates keep the
 *    resourceVersion), patch (json-patch, merge-patch, strategic-merge treated as merge-patch), delete (with
 *    preconditions; namespaces cascade) and `?watch=true` / `/api/v1/watch/...` streams of newline-delimited
 *    ADDED/MODIFIED/DELETED events with resourceVersion replay, selector transitions, `timeoutSeconds` and
 *    410 Expired after `state.compact()`. Secrets honour `stringData` and base64-validate `data`.
 *  - `certificates.k8s.io` ClusterTrustBundles with discovery, validation and attest admission: ./kube-ctb.ts
 *    (`state.clusterTrustBundles`).
 *  - `GET /.well-known/openid-configuration`, `GET /openid/v1/jwks` (anonymous unless `state.oidcRequiresAuth`),
 *    `/version`, `/healthz`, `/readyz`, `/livez`.
 *  - Pod helpers for node checks: `setPodPhase()` and `markPodDeleting()` (deletionTimestamp set, pod kept).
 *  - Fault/observation knobs: `state.down` (drops every connection), `state.delayMs`, `state.requests`,
 *    `state.tokenReviewCount`, `state.forbidden` ("<verb> <resource>" ⇒ 403), `state.closeWatches()`.
 *
 *  - `certificates.k8s.io` PodCertificateRequests: see kube-pcr.ts (`podCertificateRequests(state)`).
 *
 * Deliberately not implemented: RBAC evaluation (only the explicit forbid knobs), other API groups/resources,
 * server-side apply, pagination (`limit`/`continue` are ignored: lists are always complete), watch bookmarks,
 * protobuf/CBOR, the automatic `kube-root-ca.crt` ConfigMaps, admission, finalizers / graceful deletion,
 * `immutable` Secrets/ConfigMaps, client-certificate authentication, anonymous (system:anonymous) requests
 * (missing credentials are 401 here).
 */
import { createHash, createPublicKey, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as jose from 'jose';
import { closeServer, isRecord, listen, readBody, sendJson, sendRaw, sleep, SocketTracker } from './http-util.js';
import { podCertificateRequestResources, routePodCertificateRequests } from './kube-pcr.js';
import { makeServerTls, type CryptoKey } from './pki.js';
import { CsrStore } from './kube-csr.js';
import { ClusterTrustBundleApi } from './kube-ctb.js';

// ---------------------------------------------------------------------------------------------------------------
// Types

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

export type ResourceName = 'namespaces' | 'pods' | 'secrets' | 'configmaps' | 'serviceaccounts';

interface ResourceInfo {
  kind: string;
  namespaced: boolean;
  fields: string[];
  /** DELETE returns the object (true) or a Status (false). */
  returnsDeletedObject: boolean;
}

const RESOURCES: Record<ResourceName, ResourceInfo> = {
  namespaces: { kind: 'Namespace', namespaced: false, fields: ['metadata.name', 'status.phase'], returnsDeletedObject: true },
  pods: {
    kind: 'Pod',
    namespaced: true,
    fields: ['metadata.name', 'metadata.namespace', 'spec.nodeName', 'spec.serviceAccountName', 'status.phase', 'status.podIP'],
    returnsDeletedObject: true,
  },
  secrets: { kind: 'Secret', namespaced: true, fields: ['metadata.name', 'metadata.namespace', 'type'], returnsDeletedObject: false },
  configmaps: { kind: 'ConfigMap', namespaced: true, fields: ['metadata.name', 'metadata.namespace'], returnsDeletedObject: false },
  serviceaccounts: {
    kind: 'ServiceAccount',
    namespaced: true,
    fields: ['metadata.name', 'metadata.namespace'],
    returnsDeletedObject: false,
  },
};

const isResource = (s: string | undefined): s is ResourceName => s !== undefined && Object.hasOwn(RESOURCES, s);

export interface KubeRequestRecord {
  method: string;
  /** URL path without the query string. */
  path: string;
  /** Query string including the leading '?', or ''. */
  query: string;
  /** Authenticated username, when the request got that far. */
  user?: string;
  time: number;
}

export interface UserInfo {
  username?: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface TokenReviewStatus {
  authenticated?: boolean;
  user: UserInfo;
  audiences?: string[];
  error?: string;
}

export interface MintTokenOptions {
  namespace: string;
  serviceAccount: string;
  /** Projected-token audiences (default ['istio-ca']). Ignored for legacy tokens. */
  audiences?: string[];
  ttlSeconds?: number;
  /** Bind the token to a pod (pod uid defaults to the stored pod's uid, else a random UUID). */
  podName?: string;
  podUid?: string;
  /** Node info (K8s ≥1.30 style); defaults to the stored pod's spec.nodeName when bound to a known pod. */
  nodeName?: string;
  nodeUid?: string;
  /** Projected: bind to this Secret instead of a Pod. Legacy: the `secret.name` claim (default `<sa>-token-xxxxx`). */
  secretName?: string;
  secretUid?: string;
  /** Legacy Secret-based token (iss kubernetes/serviceaccount, no aud/exp/iat/nbf). */
  legacy?: boolean;
  /** Date, or absolute Unix seconds. */
  notBefore?: Date | number;
  /** Date, or absolute Unix seconds (default now). */
  issuedAt?: Date | number;
  /** Mint an already-expired token (exp one hour ago). */
  expired?: boolean;
  /** Override `iss`. */
  issuer?: string;
  /** Override the service account uid (default: the stored ServiceAccount's uid, created on demand). */
  serviceAccountUid?: string;
  jti?: string;
  /** Omit the jti claim (pre-1.29 clusters). */
  omitJti?: boolean;
  /** Override the JWT header kid. */
  kid?: string;
  /** Extra top-level claims merged last. */
  extraClaims?: Record<string, unknown>;
}

export interface AddPodOptions {
  namespace: string;
  name: string;
  uid?: string;
  serviceAccount?: string;
  nodeName?: string;
  podIP?: string;
  labels?: Record<string, string>;
  phase?: string;
}

export interface KubeStandinOptions {
  /** Token issuer (`iss`). Default https://kubernetes.default.svc.cluster.local; 'self' ⇒ the stand-in's URL. */
  issuer?: string;
  /** API server audiences (--api-audiences). Default ['https://kubernetes.default.svc.cluster.local']. */
  apiAudiences?: string[];
  /** Bearer token written to the kubeconfig. Default random. */
  reviewerToken?: string;
  /** Username the reviewer token authenticates as. */
  reviewerUser?: string;
  /** Namespaces that exist at start. */
  namespaces?: string[];
  /** Leeway for exp/nbf (go-jose default 60 s). */
  clockSkewSeconds?: number;
  /** Override the jwks_uri advertised in the discovery document. */
  jwksUri?: string;
  /** Namespace of the kubeconfig context. Default 'default'. */
  contextNamespace?: string;
}

export interface KubeStandin {
  url: string;
  port: number;
  kubeconfigPath: string;
  kubeconfigYaml: string;
  /** PEM of the CA that issued the server certificate (also in the kubeconfig). */
  caPem: string;
  reviewerToken: string;
  state: KubeStandinState;
  mintToken(opts: MintTokenOptions): Promise<string>;
  mintForeignToken(opts: MintTokenOptions): Promise<string>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------
// Status objects

export class StatusError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }

  toStatus(): Record<string, unknown> {
    const body: Record<string, unknown> = {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: this.message,
      reason: this.reason,
    };
    if (this.details) body.details = this.details;
    body.code = this.code;
    return body;
  }
}

const notFound = (resource: string, name: string): StatusError =>
  new StatusError(404, 'NotFound', `${resource} "${name}" not found`, { name, kind: resource });
const alreadyExists = (resource: string, name: string): StatusError =>
  new StatusError(409, 'AlreadyExists', `${resource} "${name}" already exists`, { name, kind: resource });
const conflict = (resource: string, name: string, why?: string): StatusError =>
  new StatusError(
    409,
    'Conflict',
    `Operation cannot be fulfilled on ${resource} "${name}": ${why ?? 'the object has been modified; please apply your changes to the latest version and try again'}`,
    { name, kind: resource },
  );
const badRequest = (message: string): StatusError => new StatusError(400, 'BadRequest', message);
const invalid = (kind: string, name: string, causes: { field: string; message: string; reason: string }[]): StatusError => {
  const text = causes.map((c) => `${c.field}: ${c.message}`);
  return new StatusError(
    422,
    'Invalid',
    `${kind} "${name}" is invalid: ${text.length === 1 ? text[0] : `[${text.join(', ')}]`}`,
    { name, kind, causes: causes.map((c) => ({ reason: c.reason, message: c.message, field: c.field })) },
  );
};
const forbiddenError = (
  user: string,
  verb: string,
  resource: string,
  group: string,
  namespace: string | undefined,
  name: string | undefined,
): StatusError => {
  const res = group ? `${resource}.${group}` : resource;
  const scope = namespace ? `in the namespace "${namespace}"` : 'at the cluster scope';
  const details: Record<string, unknown> = {};
  if (name) details.name = name;
  if (group) details.group = group;
  details.kind = resource;
  return new StatusError(
    403,
    'Forbidden',
    `${res}${name ? ` "${name}"` : ''} is forbidden: User "${user}" cannot ${verb} resource "${resource}" in API group "${group}" ${scope}`,
    details,
  );
};
const unauthorized = (): StatusError => new StatusError(401, 'Unauthorized', 'Unauthorized');

// ---------------------------------------------------------------------------------------------------------------
// Helpers

const clone = <T>(v: T): T => structuredClone(v);
const nowSeconds = (): number => Math.floor(Date.now() / 1000);
const isoSeconds = (d = new Date()): string => d.toISOString().replace(/\.\d{3}Z$/, 'Z');
const toUnix = (v: Date | number): number => (v instanceof Date ? Math.floor(v.getTime() / 1000) : Math.floor(v));
/** Go's %q of a []string: ["a" "b"]. */
const goQuoteList = (xs: string[]): string => `[${xs.map((x) => JSON.stringify(x)).join(' ')}]`;

function getPath(obj: unknown, path: string): unknown {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (!isRecord(cur)) return undefined;
    cur = cur[part];
  }
  return cur;
}

type Predicate = (obj: KubeObject) => boolean;

function splitTopLevel(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out.map((x) => x.trim()).filter((x) => x.length > 0);
}

function parseLabelSelector(sel: string | null): Predicate {
  if (!sel) return () => true;
  const preds: ((labels: Record<string, string>) => boolean)[] = [];
  for (const term of splitTopLevel(sel)) {
    let m: RegExpMatchArray | null;
    if ((m = term.match(/^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/))) {
      const key = m[1]!;
      const values = m[3]!.split(',').map((v) => v.trim());
      const neg = m[2] === 'notin';
      preds.push((l) => (neg ? !(key in l) || !values.includes(l[key]!) : key in l && values.includes(l[key]!)));
    } else if ((m = term.match(/^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$/))) {
      const [, key, op, value] = m as unknown as [string, string, string, string];
      preds.push((l) => (op === '!=' ? l[key] !== value : l[key] === value));
    } else if ((m = term.match(/^(!?)([\w./-]+)$/))) {
      const neg = m[1] === '!';
      const key = m[2]!;
      preds.push((l) => (neg ? !(key in l) : key in l));
    } else {
      throw badRequest(`unable to parse requirement: found '${term}', expected: label selector`);
    }
  }
  return (obj) => {
    const labels = obj.metadata.labels ?? {};
    return preds.every((p) => p(labels));
  };
}

function parseFieldSelector(resource: ResourceName, sel: string | null): Predicate {
  if (!sel) return () => true;
  const preds: Predicate[] = [];
  for (const term of splitTopLevel(sel)) {
    const m = term.match(/^([\w.]+)\s*(==|=|!=)\s*(.*)$/);
    if (!m) throw badRequest(`invalid selector: '${sel}'; can't understand '${term}'`);
    const [, field, op, value] = m as unknown as [string, string, string, string];
    if (!RESOURCES[resource].fields.includes(field)) {
      throw badRequest(`field label not supported: ${field}`);
    }
    preds.push((obj) => {
      const v = getPath(obj, field);
      const s = v === undefined || v === null ? '' : String(v);
      return op === '!=' ? s !== value : s === value;
    });
  }
  return (obj) => preds.every((p) => p(obj));
}

function jsonPointerParts(ptr: string): string[] {
  if (ptr === '') return [];
  if (!ptr.startsWith('/')) throw badRequest(`the server rejected our request due to an error in our request`);
  return ptr
    .slice(1)
    .split('/')
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function applyJsonPatch(doc: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw badRequest('json: cannot unmarshal object into Go value of type jsonpatch.Patch');
  let root = clone(doc);
  const parentOf = (parts: string[]): { parent: unknown; key: string } => {
    let cur: unknown = root;
    for (const p of parts.slice(0, -1)) {
      cur = Array.isArray(cur) ? cur[Number(p)] : isRecord(cur) ? cur[p] : undefined;
      if (cur === undefined) throw new StatusError(422, 'Invalid', `doc is missing path: "${parts.join('/')}"`);
    }
    return { parent: cur, key: parts[parts.length - 1]! };
  };
  const getAt = (parts: string[]): unknown => {
    let cur: unknown = root;
    for (const p of parts) cur = Array.isArray(cur) ? cur[Number(p)] : isRecord(cur) ? cur[p] : undefined;
    return cur;
  };
  const remove = (parts: string[]): unknown => {
    const { parent, key } = parentOf(parts);
    if (Array.isArray(parent)) return parent.splice(Number(key), 1)[0];
    if (isRecord(parent) && key in parent) {
      const v = parent[key];
      delete parent[key];
      return v;
    }
    throw new StatusError(422, 'Invalid', `Unable to remove nonexistent key: ${key}: missing value`);
  };
  const add = (parts: string[], value: unknown, replace: boolean): void => {
    if (parts.length === 0) {
      root = clone(value);
      return;
    }
    const { parent, key } = parentOf(parts);
    if (Array.isArray(parent)) {
      if (key === '-') parent.push(clone(value));
      else if (replace) parent[Number(key)] = clone(value);
      else parent.splice(Number(key), 0, clone(value));
    } else if (isRecord(parent)) {
      if (replace && !(key in parent)) {
        throw new StatusError(422, 'Invalid', `replace operation does not apply: doc is missing key: /${parts.join('/')}: missing value`);
      }
      parent[key] = clone(value);
    } else throw new StatusError(422, 'Invalid', `doc is missing path: "/${parts.join('/')}"`);
  };
  for (const raw of ops) {
    if (!isRecord(raw)) throw badRequest('invalid JSON patch operation');
    const op = String(raw.op);
    const path = jsonPointerParts(String(raw.path ?? ''));
    switch (op) {
      case 'add':
        add(path, raw.value, false);
        break;
      case 'replace':
        add(path, raw.value, true);
        break;
      case 'remove':
        remove(path);
        break;
      case 'test':
        if (JSON.stringify(getAt(path)) !== JSON.stringify(raw.value)) {
          throw new StatusError(422, 'Invalid', `testing value /${path.join('/')} failed: test failed`);
        }
        break;
      case 'move':
      case 'copy': {
        const from = jsonPointerParts(String(raw.from ?? ''));
        const v = op === 'move' ? remove(from) : clone(getAt(from));
        add(path, v, false);
        break;
      }
      default:
        throw badRequest(`Unexpected kind: ${op}`);
    }
  }
  return root;
}

function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return clone(patch);
  const out: Record<string, unknown> = isRecord(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}

const GENERATE_CHARS = 'bcdfghjklmnpqrstvwxz2456789';
const randomSuffix = (n = 5): string =>
  Array.from(randomBytes(n), (b) => GENERATE_CHARS[b % GENERATE_CHARS.length]).join('');

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: jose.JWK;
}

async function newSigningKey(): Promise<SigningKey> {
  const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const spkiPem = await jose.exportSPKI(publicKey);
  const der = createPublicKey(spkiPem).export({ type: 'spki', format: 'der' });
  // kube-apiserver's kid: base64url(SHA-256(DER SubjectPublicKeyInfo)).
  const kid = createHash('sha256').update(der).digest('base64url');
  const exported = await jose.exportJWK(publicKey);
  const jwk: jose.JWK = { use: 'sig', kty: 'RSA', kid, alg: 'RS256', n: exported.n, e: exported.e };
  return { kid, privateKey, publicKey, jwk };
}

interface HistoryEvent {
  rv: number;
  resource: ResourceName;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: KubeObject;
  old?: KubeObject;
}

interface Watcher {
  resource: ResourceName;
  namespace?: string;
  matches: Predicate;
  res: ServerResponse;
  closed: boolean;
  close(): void;
}

const DEFAULT_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';

// ---------------------------------------------------------------------------------------------------------------
// State

export class KubeStandinState {
  /** Every request received (while not down), in order. */
  readonly requests: KubeRequestRecord[] = [];
  /** Number of POSTs to the tokenreviews endpoint (including rejected ones). */
  tokenReviewCount = 0;
  /** Artificial latency added to every request. */
  delayMs = 0;
  /** TLS connections accepted so far (to see whether clients reuse kept-alive connections). */
  connections = 0;
  /** Answer TokenReviews with 403 Forbidden (caller lacks system:auth-delegator). */
  forbidReviews = false;
  /** "<verb> <resource>" entries (e.g. "get secrets", "watch configmaps", "create tokenreviews") ⇒ 403. */
  readonly forbidden = new Set<string>();
  /** Require authentication for the OIDC discovery endpoints. */
  oidcRequiresAuth = false;
  /** TokenReview also checks that the service account and the bound pod (with matching uid) exist. */
  validateBoundObjects = false;
  /** Leeway applied to exp / nbf. */
  clockSkewSeconds: number;
  /** API server audiences. */
  apiAudiences: string[];
  /** The `iss` of minted tokens and of the discovery document. */
  issuer: string;
  /** Issuers whose tokens TokenReview accepts (in addition to `issuer`). */
  readonly acceptedIssuers = new Set<string>();
  /** Extra bearer tokens accepted for API calls: token → username. */
  readonly bearerTokens = new Map<string, string>();
  /** Override jwks_uri. */
  jwksUri: string | undefined;
  /** Set by the server once listening. */
  url = '';
  /** certificates.k8s.io/v1 CertificateSigningRequests (kube-csr.ts). */
  readonly csr = new CsrStore(() => ++this.rv, () => this.rv);
  /** certificates.k8s.io ClusterTrustBundles (./kube-ctb.ts). */
  readonly clusterTrustBundles = new ClusterTrustBundleApi(this.forbidden);

  /** @internal */ readonly reviewerToken: string;
  /** @internal */ readonly reviewerUser: string;
  /** @internal */ signingKeys: SigningKey[] = [];
  /** @internal */ foreignKey!: SigningKey;
  /** @internal */ onDown: () => void = () => undefined;
  private _down = false;
  private rv = 100;
  private compactedRv = 0;
  private readonly store = new Map<ResourceName, Map<string, KubeObject>>();
  private readonly history: HistoryEvent[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly revokedTokens = new Set<string>();
  private readonly revokedJtis = new Set<string>();
  private readonly nodeUids = new Map<string, string>();

  constructor(opts: KubeStandinOptions) {
    this.issuer = opts.issuer ?? DEFAULT_AUDIENCE;
    this.apiAudiences = opts.apiAudiences ?? [DEFAULT_AUDIENCE];
    this.clockSkewSeconds = opts.clockSkewSeconds ?? 60;
    this.reviewerToken = opts.reviewerToken ?? `reviewer-${randomBytes(16).toString('hex')}`;
    this.reviewerUser = opts.reviewerUser ?? 'system:serviceaccount:meshca-system:meshca';
    this.jwksUri = opts.jwksUri;
    for (const r of Object.keys(RESOURCES) as ResourceName[]) this.store.set(r, new Map());
    for (const ns of opts.namespaces ?? ['default', 'kube-system', 'kube-public', 'istio-system']) this.addNamespace(ns);
    this.clusterTrustBundles.discoveryExtras.push((version) => podCertificateRequestResources(this, version));
  }

  /** true ⇒ every new and existing connection is destroyed (API server unreachable). */
  get down(): boolean {
    return this._down;
  }

  set down(v: boolean) {
    this._down = v;
    if (v) {
      this.closeWatches();
      this.onDown();
    }
  }

  /** Current (latest) resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  /** The key currently used by mintToken (its kid appears in the JWKS). */
  get currentKid(): string {
    return this.signingKeys[this.signingKeys.length - 1]!.kid;
  }

  get jwks(): { keys: jose.JWK[] } {
    return { keys: this.signingKeys.map((k) => ({ ...k.jwk })) };
  }

  /** Add a new signing key (used by mintToken from now on); old keys stay trusted unless keepOld=false. */
  async rotateSigningKey(keepOld = true): Promise<string> {
    const k = await newSigningKey();
    this.signingKeys = keepOld ? [...this.signingKeys, k] : [k];
    return k.kid;
  }

  /** Make TokenReview reject this token (or every token with this jti) as invalidated. */
  revoke(tokenOrJti: string): void {
    if (tokenOrJti.split('.').length === 3) this.revokedTokens.add(tokenOrJti);
    else this.revokedJtis.add(tokenOrJti);
  }

  // ---- objects --------------------------------------------------------------------------------------------

  addNamespace(name: string, labels: Record<string, string> = {}): KubeObject {
    const existing = this.get('namespaces', undefined, name);
    if (existing) return existing;
    return this.put('namespaces', {
      metadata: { name, labels: { 'kubernetes.io/metadata.name': name, ...labels } },
      spec: { finalizers: ['kubernetes'] },
      status: { phase: 'Active' },
    });
  }

  deleteNamespace(name: string): boolean {
    return this.remove('namespaces', undefined, name);
  }

  addServiceAccount(opts: { namespace: string; name: string; uid?: string }): KubeObject {
    const existing = this.get('serviceaccounts', opts.namespace, opts.name);
    if (existing && (!opts.uid || existing.metadata.uid === opts.uid)) return existing;
    this.addNamespace(opts.namespace);
    return this.put('serviceaccounts', { metadata: { name: opts.name, namespace: opts.namespace, uid: opts.uid } });
  }

  addPod(opts: AddPodOptions): KubeObject {
    const sa = opts.serviceAccount ?? 'default';
    this.addNamespace(opts.namespace);
    this.addServiceAccount({ namespace: opts.namespace, name: sa });
    return this.put('pods', {
      metadata: { name: opts.name, namespace: opts.namespace, uid: opts.uid, labels: opts.labels },
      spec: {
        serviceAccountName: sa,
        serviceAccount: sa,
        nodeName: opts.nodeName,
        containers: [{ name: 'app', image: 'registry.example/app:latest' }],
      },
      status: { phase: opts.phase ?? 'Running', podIP: opts.podIP ?? '10.0.0.1', hostIP: '192.168.0.1' },
    });
  }

  /** Sets a pod's status.phase (Pending, Running, Succeeded, Failed), as the kubelet reports it. */
  setPodPhase(namespace: string, name: string, phase: string): KubeObject {
    const pod = this.get('pods', namespace, name);
    if (!pod) throw new Error(`setPodPhase: no pod ${namespace}/${name}`);
    return this.put('pods', { ...pod, status: { ...(isRecord(pod.status) ? pod.status : {}), phase } });
  }

  /** Starts a graceful deletion: sets metadata.deletionTimestamp, leaving the pod in place (as while it terminates). */
  markPodDeleting(namespace: string, name: string): KubeObject {
    const pod = this.get('pods', namespace, name);
    if (!pod) throw new Error(`markPodDeleting: no pod ${namespace}/${name}`);
    return this.put('pods', { ...pod, metadata: { ...pod.metadata, deletionTimestamp: isoSeconds(new Date()), deletionGracePeriodSeconds: 30 } });
  }

  deletePod(namespace: string, name: string): boolean {
    return this.remove('pods', namespace, name);
  }

  /** A deep copy of a stored object (with kind/apiVersion), or undefined. */
  get(resource: ResourceName, namespace: string | undefined, name: string): KubeObject | undefined {
    const o = this.store.get(resource)!.get(this.key(resource, namespace, name));
    return o ? this.withKind(resource, o) : undefined;
  }

  list(resource: ResourceName, namespace?: string): KubeObject[] {
    return [...this.store.get(resource)!.values()]
      .filter((o) => namespace === undefined || o.metadata.namespace === namespace)
      .sort((a, b) => this.key(resource, a.metadata.namespace, a.metadata.name!).localeCompare(this.key(resource, b.metadata.namespace, b.metadata.name!)))
      .map((o) => this.withKind(resource, o));
  }

  /** Create or replace (no resourceVersion check) an object, emitting watch events. Returns the stored copy. */
  put(resource: ResourceName, obj: KubeObject): KubeObject {
    const name = obj.metadata.name;
    if (!name) throw new Error('put: metadata.name required');
    const ns = RESOURCES[resource].namespaced ? (obj.metadata.namespace ?? 'default') : undefined;
    if (ns !== undefined) this.addNamespace(ns);
    const existing = this.store.get(resource)!.get(this.key(resource, ns, name));
    const body = clone(obj);
    delete body.metadata.resourceVersion;
    if (existing) return this.doUpdate(resource, ns, name, body).object;
    return this.doCreate(resource, ns, body, false);
  }

  remove(resource: ResourceName, namespace: string | undefined, name: string): boolean {
    const k = this.key(resource, RESOURCES[resource].namespaced ? namespace : undefined, name);
    if (!this.store.get(resource)!.has(k)) return false;
    this.doDelete(resource, namespace, name, undefined);
    return true;
  }

  /** End every open watch stream (clients see the stream close and must re-watch). */
  closeWatches(): void {
    for (const w of [...this.watchers]) w.close();
    this.csr.closeWatches();
    this.clusterTrustBundles.closeWatches();
  }

  /** Forget watch history: watches from an older resourceVersion now get 410 Expired. */
  compact(): void {
    this.compactedRv = this.rv;
    this.history.length = 0;
  }

  // ---- tokens ---------------------------------------------------------------------------------------------

  async mintToken(opts: MintTokenOptions): Promise<string> {
    return this.sign(opts, this.signingKeys[this.signingKeys.length - 1]!);
  }

  /** Same claims, signed by a key this server does not trust (kid defaults to the trusted key's kid). */
  async mintForeignToken(opts: MintTokenOptions): Promise<string> {
    return this.sign({ ...opts, kid: opts.kid ?? this.currentKid }, this.foreignKey);
  }

  private async sign(o: MintTokenOptions, key: SigningKey): Promise<string> {
    const sa = this.addServiceAccount({ namespace: o.namespace, name: o.serviceAccount });
    const saUid = o.serviceAccountUid ?? sa.metadata.uid!;
    const header = { alg: 'RS256', kid: o.kid ?? key.kid };
    if (o.legacy) {
      const claims = {
        iss: 'kubernetes/serviceaccount',
        'kubernetes.io/serviceaccount/namespace': o.namespace,
        'kubernetes.io/serviceaccount/secret.name': o.secretName ?? `${o.serviceAccount}-token-${randomSuffix()}`,
        'kubernetes.io/serviceaccount/service-account.name': o.serviceAccount,
        'kubernetes.io/serviceaccount/service-account.uid': saUid,
        sub: `system:serviceaccount:${o.namespace}:${o.serviceAccount}`,
        ...o.extraClaims,
      };
      return new jose.SignJWT(claims).setProtectedHeader(header).sign(key.privateKey);
    }
    const ttl = o.ttlSeconds ?? 3600;
    const now = nowSeconds();
    let iat = o.issuedAt !== undefined ? toUnix(o.issuedAt) : now;
    let exp = iat + ttl;
    if (o.expired) {
      exp = now - 3600;
      iat = exp - ttl;
    }
    const nbf = o.notBefore !== undefined ? toUnix(o.notBefore) : iat;
    const k8s: Record<string, unknown> = { namespace: o.namespace };
    let nodeName = o.nodeName;
    if (o.podName) {
      const pod = this.get('pods', o.namespace, o.podName);
      nodeName ??= getPath(pod, 'spec.nodeName') as string | undefined;
    }
    if (nodeName) k8s.node = { name: nodeName, uid: o.nodeUid ?? this.nodeUid(nodeName) };
    if (o.podName) {
      const pod = this.get('pods', o.namespace, o.podName);
      k8s.pod = { name: o.podName, uid: o.podUid ?? pod?.metadata.uid ?? randomUUID() };
    } else if (o.secretName) {
      k8s.secret = { name: o.secretName, uid: o.secretUid ?? randomUUID() };
    }
    k8s.serviceaccount = { name: o.serviceAccount, uid: saUid };
    const claims: Record<string, unknown> = {
      aud: o.audiences ?? ['istio-ca'],
      exp,
      iat,
      iss: o.issuer ?? this.issuer,
      ...(o.omitJti ? {} : { jti: o.jti ?? randomUUID() }),
      nbf,
      sub: `system:serviceaccount:${o.namespace}:${o.serviceAccount}`,
      'kubernetes.io': k8s,
      ...o.extraClaims,
    };
    return new jose.SignJWT(claims).setProtectedHeader(header).sign(key.privateKey);
  }

  private nodeUid(name: string): string {
    let uid = this.nodeUids.get(name);
    if (!uid) {
      uid = randomUUID();
      this.nodeUids.set(name, uid);
    }
    return uid;
  }

  /** The TokenReview decision for `token` (what the endpoint returns in `status`). */
  async review(token: string, specAudiences?: string[]): Promise<TokenReviewStatus> {
    const fail = (why?: string): TokenReviewStatus => ({
      user: {},
      error: why ? `[invalid bearer token, ${why}]` : 'invalid bearer token',
    });
    let payload: Record<string, unknown> | undefined;
    let header: jose.ProtectedHeaderParameters;
    try {
      header = jose.decodeProtectedHeader(token);
    } catch {
      return fail();
    }
    if (header.alg !== 'RS256') return fail('square/go-jose: unexpected signature algorithm');
    const candidates = [...this.signingKeys].sort((a, b) => Number(b.kid === header.kid) - Number(a.kid === header.kid));
    for (const k of candidates) {
      try {
        const { payload: bytes } = await jose.compactVerify(token, k.publicKey, { algorithms: ['RS256'] });
        payload = JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
        break;
      } catch {
        // try the next key
      }
    }
    if (!payload) return fail('square/go-jose: error in cryptographic primitive');
    const legacy = payload.iss === 'kubernetes/serviceaccount';
    if (!legacy && payload.iss !== this.issuer && !this.acceptedIssuers.has(String(payload.iss))) return fail();
    if (this.revokedTokens.has(token) || (typeof payload.jti === 'string' && this.revokedJtis.has(payload.jti))) {
      return fail('service account token has been invalidated');
    }
    let namespace: string;
    let saName: string;
    let saUid: string;
    let pod: { name?: string; uid?: string } | undefined;
    let node: { name?: string; uid?: string } | undefined;
    if (legacy) {
      namespace = String(payload['kubernetes.io/serviceaccount/namespace'] ?? '');
      saName = String(payload['kubernetes.io/serviceaccount/service-account.name'] ?? '');
      saUid = String(payload['kubernetes.io/serviceaccount/service-account.uid'] ?? '');
    } else {
      const now = nowSeconds();
      const skew = this.clockSkewSeconds;
      if (typeof payload.exp !== 'number') return fail('service account token has no expiration');
      if (now > payload.exp + skew) return fail('service account token has expired');
      if (typeof payload.nbf === 'number' && now < payload.nbf - skew) return fail('service account token is not valid yet');
      const k8s = isRecord(payload['kubernetes.io']) ? payload['kubernetes.io'] : {};
      namespace = String(k8s.namespace ?? '');
      const sa = isRecord(k8s.serviceaccount) ? k8s.serviceaccount : {};
      saName = String(sa.name ?? '');
      saUid = String(sa.uid ?? '');
      if (isRecord(k8s.pod)) pod = { name: k8s.pod.name as string, uid: k8s.pod.uid as string };
      if (isRecord(k8s.node)) node = { name: k8s.node.name as string, uid: k8s.node.uid as string };
    }
    if (!namespace || !saName) return fail('token lookup failed');
    const tokenAuds = legacy
      ? this.apiAudiences
      : Array.isArray(payload.aud)
        ? payload.aud.map(String)
        : payload.aud !== undefined
          ? [String(payload.aud)]
          : [];
    const target = specAudiences && specAudiences.length > 0 ? specAudiences : this.apiAudiences;
    const audiences = target.filter((a) => tokenAuds.includes(a));
    if (audiences.length === 0) {
      return fail(`token audiences ${goQuoteList(tokenAuds)} is invalid for the target audiences ${goQuoteList(target)}`);
    }
    if (this.validateBoundObjects) {
      const sa = this.get('serviceaccounts', namespace, saName);
      if (!sa || sa.metadata.uid !== saUid) return fail('service account token has been invalidated');
      if (pod) {
        const p = this.get('pods', namespace, pod.name ?? '');
        if (!p) return fail('service account token has been invalidated');
        if (p.metadata.uid !== pod.uid) {
          return fail(`pod UID (${String(p.metadata.uid)}) does not match service account pod ref claim (${String(pod.uid)})`);
        }
      }
    }
    const extra: Record<string, string[]> = {};
    if (pod?.name && pod.uid) {
      extra['authentication.kubernetes.io/pod-name'] = [pod.name];
      extra['authentication.kubernetes.io/pod-uid'] = [pod.uid];
    }
    if (node?.name) {
      extra['authentication.kubernetes.io/node-name'] = [node.name];
      if (node.uid) extra['authentication.kubernetes.io/node-uid'] = [node.uid];
    }
    if (!legacy && typeof payload.jti === 'string') extra['authentication.kubernetes.io/credential-id'] = [`JTI=${payload.jti}`];
    const user: UserInfo = {
      username: `system:serviceaccount:${namespace}:${saName}`,
      uid: saUid,
      groups: ['system:serviceaccounts', `system:serviceaccounts:${namespace}`, 'system:authenticated'],
    };
    if (Object.keys(extra).length > 0) user.extra = extra;
    return { authenticated: true, user, audiences };
  }

  /** @internal Username for an Authorization header, or undefined (⇒ 401). */
  async authenticate(authorization: string | undefined): Promise<string | undefined> {
    const m = authorization?.match(/^Bearer\s+(\S+)\s*$/i);
    if (!m) return undefined;
    const token = m[1]!;
    if (token === this.reviewerToken) return this.reviewerUser;
    const extra = this.bearerTokens.get(token);
    if (extra) return extra;
    if (token.split('.').length === 3) {
      const r = await this.review(token, this.apiAudiences);
      if (r.authenticated) return r.user.username;
    }
    return undefined;
  }

  // ---- internal object machinery ---------------------------------------------------------------------------

  private key(resource: ResourceName, namespace: string | undefined, name: string): string {
    return RESOURCES[resource].namespaced ? `${namespace ?? ''}/${name}` : name;
  }

  private withKind(resource: ResourceName, o: KubeObject): KubeObject {
    return { kind: RESOURCES[resource].kind, apiVersion: 'v1', ...clone(o) };
  }

  private stripKind(o: KubeObject): KubeObject {
    const c = clone(o);
    delete c.kind;
    delete c.apiVersion;
    return c;
  }

  /** @internal */
  checkNamespaceExists(namespace: string): void {
    if (!this.store.get('namespaces')!.has(namespace)) throw notFound('namespaces', namespace);
  }

  private normalize(resource: ResourceName, obj: KubeObject, old?: KubeObject): KubeObject {
    const kind = RESOURCES[resource].kind;
    const name = obj.metadata.name ?? '';
    if (resource === 'secrets') {
      const data: Record<string, string> = {};
      if (obj.data !== undefined && obj.data !== null) {
        if (!isRecord(obj.data)) throw badRequest(`Secret in version "v1" cannot be handled as a Secret: json: cannot unmarshal data`);
        for (const [k, v] of Object.entries(obj.data)) {
          if (typeof v !== 'string' || !BASE64_RE.test(v)) {
            throw badRequest(`Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 0`);
          }
          data[k] = v;
        }
      }
      if (isRecord(obj.stringData)) {
        for (const [k, v] of Object.entries(obj.stringData)) data[k] = Buffer.from(String(v), 'utf8').toString('base64');
      }
      delete obj.stringData;
      if (Object.keys(data).length > 0) obj.data = data;
      else delete obj.data;
      obj.type ??= 'Opaque';
      if (old && old.type !== obj.type) {
        throw invalid(kind, name, [{ field: 'type', message: `Invalid value: "${String(obj.type)}": field is immutable`, reason: 'FieldValueInvalid' }]);
      }
      if (obj.type === 'kubernetes.io/tls') {
        const missing = ['tls.crt', 'tls.key'].filter((k) => !(k in data));
        if (missing.length > 0) {
          throw invalid(kind, name, missing.map((k) => ({ field: `data[${k}]`, message: 'Required value', reason: 'FieldValueRequired' })));
        }
      }
    }
    if (resource === 'namespaces') {
      obj.metadata.labels = { ...obj.metadata.labels, 'kubernetes.io/metadata.name': name };
      obj.spec ??= { finalizers: ['kubernetes'] };
      obj.status = { phase: 'Active' };
    }
    if (resource === 'pods') obj.status ??= { phase: 'Pending' };
    if (obj.metadata.labels && Object.keys(obj.metadata.labels).length === 0) delete obj.metadata.labels;
    for (const k of Object.keys(obj.metadata)) if (obj.metadata[k] === undefined) delete obj.metadata[k];
    return obj;
  }

  private emit(resource: ResourceName, type: HistoryEvent['type'], object: KubeObject, old?: KubeObject): void {
    const ev: HistoryEvent = { rv: this.rv, resource, type, object: this.stripKind(object), old: old && this.stripKind(old) };
    this.history.push(ev);
    for (const w of this.watchers) this.deliver(w, ev);
  }

  private deliver(w: Watcher, ev: HistoryEvent): void {
    if (w.closed || ev.resource !== w.resource) return;
    if (w.namespace !== undefined && ev.object.metadata.namespace !== w.namespace) return;
    let type: HistoryEvent['type'] | undefined;
    const now = w.matches(ev.object);
    if (ev.type === 'MODIFIED') {
      const before = ev.old ? w.matches(ev.old) : false;
      type = before && now ? 'MODIFIED' : now ? 'ADDED' : before ? 'DELETED' : undefined;
    } else if (now) type = ev.type;
    if (!type) return;
    w.res.write(`${JSON.stringify({ type, object: this.withKind(ev.resource, ev.object) })}\n`);
  }

  /** @internal */
  doCreate(resource: ResourceName, namespace: string | undefined, body: KubeObject, strict = true): KubeObject {
    const info = RESOURCES[resource];
    if (!isRecord(body) || !isRecord(body.metadata)) body = { ...(isRecord(body) ? body : {}), metadata: {} };
    const obj = clone(body);
    delete obj.kind;
    delete obj.apiVersion;
    if (info.namespaced) {
      if (obj.metadata.namespace && obj.metadata.namespace !== namespace) {
        throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
      }
      obj.metadata.namespace = namespace;
    } else delete obj.metadata.namespace;
    if (strict && obj.metadata.resourceVersion) throw badRequest('resourceVersion should not be set on objects to be created');
    if (!obj.metadata.name && obj.metadata.generateName) obj.metadata.name = `${obj.metadata.generateName}${randomSuffix()}`;
    const name = obj.metadata.name;
    if (!name) {
      throw invalid(info.kind, '', [{ field: 'metadata.name', message: 'Required value: name or generateName is required', reason: 'FieldValueRequired' }]);
    }
    if (info.namespaced) this.checkNamespaceExists(namespace!);
    const k = this.key(resource, namespace, name);
    if (this.store.get(resource)!.has(k)) throw alreadyExists(resource, name);
    this.normalize(resource, obj);
    this.rv++;
    obj.metadata.uid = strict || !obj.metadata.uid ? randomUUID() : obj.metadata.uid;
    obj.metadata.resourceVersion = String(this.rv);
    obj.metadata.creationTimestamp = isoSeconds();
    this.store.get(resource)!.set(k, obj);
    this.emit(resource, 'ADDED', obj);
    return this.withKind(resource, obj);
  }

  /** @internal */
  doUpdate(
    resource: ResourceName,
    namespace: string | undefined,
    name: string,
    body: KubeObject,
  ): { object: KubeObject; changed: boolean } {
    const info = RESOURCES[resource];
    const k = this.key(resource, namespace, name);
    const cur = this.store.get(resource)!.get(k);
    if (!cur) throw notFound(resource, name);
    if (!isRecord(body) || !isRecord(body.metadata)) throw badRequest('metadata is required');
    const obj = clone(body);
    delete obj.kind;
    delete obj.apiVersion;
    if (obj.metadata.name !== undefined && obj.metadata.name !== name) {
      throw badRequest(`the name of the object (${String(obj.metadata.name)}) does not match the name on the URL (${name})`);
    }
    obj.metadata.name = name;
    if (info.namespaced) {
      if (obj.metadata.namespace && obj.metadata.namespace !== namespace) {
        throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
      }
      obj.metadata.namespace = namespace;
    }
    if (obj.metadata.resourceVersion && obj.metadata.resourceVersion !== cur.metadata.resourceVersion) {
      throw conflict(resource, name);
    }
    if (obj.metadata.uid && obj.metadata.uid !== cur.metadata.uid) {
      throw conflict(resource, name, `Precondition failed: UID in precondition: ${obj.metadata.uid}, UID in object meta: ${String(cur.metadata.uid)}`);
    }
    this.normalize(resource, obj, cur);
    obj.metadata.uid = cur.metadata.uid;
    obj.metadata.creationTimestamp = cur.metadata.creationTimestamp;
    obj.metadata.resourceVersion = cur.metadata.resourceVersion;
    if (JSON.stringify(sortKeys(obj)) === JSON.stringify(sortKeys(cur))) {
      return { object: this.withKind(resource, cur), changed: false };
    }
    this.rv++;
    obj.metadata.resourceVersion = String(this.rv);
    this.store.get(resource)!.set(k, obj);
    this.emit(resource, 'MODIFIED', obj, cur);
    return { object: this.withKind(resource, obj), changed: true };
  }

  /** @internal */
  doDelete(resource: ResourceName, namespace: string | undefined, name: string, options: unknown): KubeObject {
    const k = this.key(resource, RESOURCES[resource].namespaced ? namespace : undefined, name);
    const cur = this.store.get(resource)!.get(k);
    if (!cur) throw notFound(resource, name);
    const pre = isRecord(options) && isRecord(options.preconditions) ? options.preconditions : undefined;
    if (pre?.uid && pre.uid !== cur.metadata.uid) {
      throw conflict(resource, name, `Precondition failed: UID in precondition: ${String(pre.uid)}, UID in object meta: ${String(cur.metadata.uid)}`);
    }
    if (pre?.resourceVersion && pre.resourceVersion !== cur.metadata.resourceVersion) {
      throw conflict(
        resource,
        name,
        `Precondition failed: ResourceVersion in precondition: ${String(pre.resourceVersion)}, ResourceVersion in object meta: ${String(cur.metadata.resourceVersion)}`,
      );
    }
    if (resource === 'namespaces') {
      for (const r of Object.keys(RESOURCES) as ResourceName[]) {
        if (!RESOURCES[r].namespaced) continue;
        for (const o of this.list(r, name)) this.doDelete(r, name, o.metadata.name!, undefined);
      }
    }
    this.store.get(resource)!.delete(k);
    this.rv++;
    const last = clone(cur);
    last.metadata.resourceVersion = String(this.rv);
    this.emit(resource, 'DELETED', last);
    return this.withKind(resource, last);
  }

  /** @internal */
  listResponse(resource: ResourceName, namespace: string | undefined, matches: Predicate): Record<string, unknown> {
    const items = this.list(resource, namespace)
      .filter(matches)
      .map((o) => this.stripKind(o));
    return { kind: `${RESOURCES[resource].kind}List`, apiVersion: 'v1', metadata: { resourceVersion: this.resourceVersion }, items };
  }

  /** @internal */
  startWatch(
    resource: ResourceName,
    namespace: string | undefined,
    matches: Predicate,
    params: URLSearchParams,
    req: IncomingMessage,
    res: ServerResponse,
  ): void {
    const rvParam = params.get('resourceVersion') ?? '';
    const from = rvParam === '' ? 0 : Number(rvParam);
    if (!Number.isInteger(from) || from < 0) throw badRequest(`invalid resource version: ${rvParam}`);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    const w: Watcher = {
      resource,
      namespace,
      matches,
      res,
      closed: false,
      close: () => {
        if (w.closed) return;
        w.closed = true;
        this.watchers.delete(w);
        if (timer) clearTimeout(timer);
        res.end();
      },
    };
    let timer: NodeJS.Timeout | undefined;
    if (rvParam === '' || rvParam === '0') {
      for (const o of this.list(resource, namespace).filter(matches)) {
        res.write(`${JSON.stringify({ type: 'ADDED', object: o })}\n`);
      }
    } else {
      if (from < this.compactedRv) {
        const status = new StatusError(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedRv})`).toStatus();
        delete status.details;
        res.write(`${JSON.stringify({ type: 'ERROR', object: status })}\n`);
        res.end();
        return;
      }
      for (const ev of this.history) if (ev.rv > from) this.deliver(w, ev);
    }
    this.watchers.add(w);
    const timeout = Number(params.get('timeoutSeconds') ?? '0');
    if (timeout > 0) timer = setTimeout(() => w.close(), timeout * 1000);
    req.on('close', () => w.close());
    res.on('close', () => w.close());
  }
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (isRecord(v)) {
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, sortKeys(v[k])]),
    );
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP handling

async function parseJsonBody(req: IncomingMessage): Promise<unknown> {
  const buf = await readBody(req);
  if (buf.length === 0) return undefined;
  try {
    return JSON.parse(buf.toString('utf8')) as unknown;
  } catch (e) {
    throw badRequest(`the object provided is unrecognized: ${(e as Error).message}`);
  }
}

function checkForbidden(
  state: KubeStandinState,
  user: string,
  verb: string,
  resource: string,
  group: string,
  namespace?: string,
  name?: string,
): void {
  if (state.forbidden.has(`${verb} ${resource}`)) throw forbiddenError(user, verb, resource, group, namespace, name);
}

/** A SelfSubjectAccessReview answered from `state.forbidden` (no RBAC evaluation: everything else is allowed). */
function selfSubjectAccessReview(state: KubeStandinState, body: unknown): Record<string, unknown> {
  const spec = isRecord(body) && isRecord(body.spec) ? body.spec : undefined;
  const attributes = spec && isRecord(spec.resourceAttributes) ? spec.resourceAttributes : undefined;
  const nonResource = spec && isRecord(spec.nonResourceAttributes) ? spec.nonResourceAttributes : undefined;
  if (!spec || (attributes === undefined) === (nonResource === undefined)) {
    throw new StatusError(400, 'BadRequest', 'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified');
  }
  let key: string;
  if (attributes) {
    const resource = String(attributes.resource ?? '');
    key = `${String(attributes.verb ?? '')} ${resource}${attributes.subresource ? `/${String(attributes.subresource)}` : ''}`;
  } else {
    key = `${String(nonResource!.verb ?? '')} ${String(nonResource!.path ?? '')}`;
  }
  const allowed = !state.forbidden.has(key);
  return {
    kind: 'SelfSubjectAccessReview',
    apiVersion: 'authorization.k8s.io/v1',
    metadata: { creationTimestamp: null },
    spec,
    status: allowed ? { allowed: true, reason: 'allowed by the stand-in (nothing in state.forbidden)' } : { allowed: false, reason: `"${key}" is in the stand-in's forbidden set` },
  };
}

async function route(state: KubeStandinState, req: IncomingMessage, res: ServerResponse, url: URL, rec: KubeRequestRecord): Promise<void> {
  const method = (req.method ?? 'GET').toUpperCase();
  const path = url.pathname.replace(/\/+$/, '') || '/';
  const q = url.searchParams;

  if (method === 'GET' && ['/healthz', '/readyz', '/livez'].includes(path)) {
    sendRaw(res, 200, 'ok', 'text/plain; charset=utf-8');
    return;
  }
  if (method === 'GET' && path === '/version') {
    sendJson(res, 200, {
      major: '1',
      minor: '30',
      gitVersion: 'v1.30.0-standin',
      gitCommit: '0000000000000000000000000000000000000000',
      gitTreeState: 'clean',
      buildDate: '2024-04-17T17:27:03Z',
      goVersion: 'go1.22.2',
      compiler: 'gc',
      platform: 'linux/amd64',
    });
    return;
  }
  if (path === '/.well-known/openid-configuration' || path === '/openid/v1/jwks') {
    if (state.oidcRequiresAuth) {
      const user = await state.authenticate(req.headers.authorization);
      if (!user) throw unauthorized();
      rec.user = user;
    }
    if (method !== 'GET') throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    const cache = { 'Cache-Control': 'public, max-age=3600' };
    if (path === '/openid/v1/jwks') {
      const body = JSON.stringify(state.jwks);
      res.writeHead(200, { 'Content-Type': 'application/jwk-set+json', 'Content-Length': String(Buffer.byteLength(body)), ...cache });
      res.end(body);
    } else {
      sendJson(
        res,
        200,
        {
          issuer: state.issuer,
          jwks_uri: state.jwksUri ?? `${state.url}/openid/v1/jwks`,
          response_types_supported: ['id_token'],
          subject_types_supported: ['public'],
          id_token_signing_alg_values_supported: ['RS256'],
        },
        cache,
      );
    }
    return;
  }

  const isTokenReview = path === '/apis/authentication.k8s.io/v1/tokenreviews';
  if (isTokenReview && method === 'POST') state.tokenReviewCount++;

  const user = await state.authenticate(req.headers.authorization);
  if (!user) throw unauthorized();
  rec.user = user;

  if (isTokenReview) {
    if (method !== 'POST') throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    if (state.forbidReviews || state.forbidden.has('create tokenreviews')) {
      // Exact shape of kube-apiserver's RBAC denial (wire-contracts §4.1).
      sendJson(res, 403, {
        kind: 'Status',
        apiVersion: 'v1',
        metadata: {},
        status: 'Failure',
        message: `tokenreviews.authentication.k8s.io is forbidden: User "${user}" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope`,
        reason: 'Forbidden',
        details: { group: 'authentication.k8s.io', kind: 'tokenreviews' },
        code: 403,
      });
      return;
    }
    const body = await parseJsonBody(req);
    const spec = isRecord(body) && isRecord(body.spec) ? body.spec : {};
    const token = typeof spec.token === 'string' ? spec.token : '';
    if (!token) throw badRequest('token is required for TokenReview in authentication');
    const audiences = Array.isArray(spec.audiences) ? spec.audiences.map(String) : undefined;
    const status = await state.review(token, audiences);
    const outSpec: Record<string, unknown> = { token };
    if (audiences && audiences.length > 0) outSpec.audiences = audiences;
    sendJson(res, 201, {
      kind: 'TokenReview',
      apiVersion: 'authentication.k8s.io/v1',
      metadata: { creationTimestamp: null },
      spec: outSpec,
      status,
    });
    return;
  }

  if (path === '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews') {
    if (method !== 'POST') throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    sendJson(res, 201, selfSubjectAccessReview(state, await parseJsonBody(req)));
    return;
  }

  if (path.startsWith('/apis/certificates.k8s.io/') && (await state.csr.route(user, method, path, q, req, res))) return;
  if (await state.clusterTrustBundles.handle(req, res, path, q, user)) return;
  if (await routePodCertificateRequests(state, req, res, url, user)) return;
  let segs = path.split('/').filter(Boolean);
  if (segs[0] !== 'api' || segs[1] !== 'v1') {
    throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
  }
  segs = segs.slice(2);
  let watch = q.get('watch') === 'true' || q.get('watch') === '1';
  if (segs[0] === 'watch') {
    watch = true;
    segs = segs.slice(1);
  }

  // /api/v1/namespaces/{ns}/serviceaccounts/{name}/token
  if (segs.length === 5 && segs[0] === 'namespaces' && segs[2] === 'serviceaccounts' && segs[4] === 'token') {
    if (method !== 'POST') throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    const ns = segs[1]!;
    const saName = segs[3]!;
    checkForbidden(state, user, 'create', 'serviceaccounts/token', '', ns, saName);
    if (!state.get('serviceaccounts', ns, saName)) throw notFound('serviceaccounts', saName);
    const body = await parseJsonBody(req);
    const spec = isRecord(body) && isRecord(body.spec) ? body.spec : {};
    const audiences = Array.isArray(spec.audiences) && spec.audiences.length > 0 ? spec.audiences.map(String) : state.apiAudiences;
    const ttl = typeof spec.expirationSeconds === 'number' ? spec.expirationSeconds : 3600;
    const ref = isRecord(spec.boundObjectRef) ? spec.boundObjectRef : undefined;
    const opts: MintTokenOptions = { namespace: ns, serviceAccount: saName, audiences, ttlSeconds: ttl };
    if (ref?.kind === 'Pod') {
      const pod = state.get('pods', ns, String(ref.name));
      if (!pod) throw notFound('pods', String(ref.name));
      if (ref.uid && ref.uid !== pod.metadata.uid) throw conflict('pods', String(ref.name), 'the UID in the bound object reference does not match');
      opts.podName = String(ref.name);
      opts.podUid = pod.metadata.uid;
    } else if (ref?.kind === 'Secret') {
      const secret = state.get('secrets', ns, String(ref.name));
      if (!secret) throw notFound('secrets', String(ref.name));
      opts.secretName = String(ref.name);
      opts.secretUid = secret.metadata.uid;
    }
    const token = await state.mintToken(opts);
    sendJson(res, 201, {
      kind: 'TokenRequest',
      apiVersion: 'authentication.k8s.io/v1',
      metadata: { name: saName, namespace: ns, creationTimestamp: null },
      spec: { audiences, expirationSeconds: ttl, boundObjectRef: ref ?? null },
      status: { token, expirationTimestamp: isoSeconds(new Date(Date.now() + ttl * 1000)) },
    });
    return;
  }

  let resource: ResourceName | undefined;
  let namespace: string | undefined;
  let name: string | undefined;
  if (segs.length === 1 && isResource(segs[0])) {
    resource = segs[0];
  } else if (segs.length === 2 && segs[0] === 'namespaces') {
    resource = 'namespaces';
    name = segs[1];
  } else if (segs.length === 3 && segs[0] === 'namespaces' && isResource(segs[2]) && segs[2] !== 'namespaces') {
    resource = segs[2];
    namespace = segs[1];
  } else if (segs.length === 4 && segs[0] === 'namespaces' && isResource(segs[2]) && segs[2] !== 'namespaces') {
    resource = segs[2];
    namespace = segs[1];
    name = segs[3];
  }
  if (!resource) throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
  const info = RESOURCES[resource];

  if (name === undefined) {
    // collection
    if (method === 'GET') {
      const matches: Predicate = (() => {
        const l = parseLabelSelector(q.get('labelSelector'));
        const f = parseFieldSelector(resource, q.get('fieldSelector'));
        return (o: KubeObject) => l(o) && f(o);
      })();
      if (watch) {
        checkForbidden(state, user, 'watch', resource, '', namespace);
        state.startWatch(resource, namespace, matches, q, req, res);
        return;
      }
      checkForbidden(state, user, 'list', resource, '', namespace);
      sendJson(res, 200, state.listResponse(resource, namespace, matches));
      return;
    }
    if (method === 'POST' && (namespace !== undefined || !info.namespaced)) {
      checkForbidden(state, user, 'create', resource, '', namespace);
      const body = await parseJsonBody(req);
      const created = state.doCreate(resource, namespace, (isRecord(body) ? body : {}) as KubeObject);
      sendJson(res, 201, created);
      return;
    }
    throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
  }

  // single object
  switch (method) {
    case 'GET': {
      checkForbidden(state, user, 'get', resource, '', namespace, name);
      if (watch) {
        const byName: Predicate = (o) => o.metadata.name === name;
        state.startWatch(resource, namespace, byName, q, req, res);
        return;
      }
      const o = state.get(resource, namespace, name);
      if (!o) throw notFound(resource, name);
      sendJson(res, 200, o);
      return;
    }
    case 'PUT': {
      checkForbidden(state, user, 'update', resource, '', namespace, name);
      const body = await parseJsonBody(req);
      const { object } = state.doUpdate(resource, namespace, name, body as KubeObject);
      sendJson(res, 200, object);
      return;
    }
    case 'PATCH': {
      checkForbidden(state, user, 'patch', resource, '', namespace, name);
      const cur = state.get(resource, namespace, name);
      if (!cur) throw notFound(resource, name);
      const ct = String(req.headers['content-type'] ?? '').split(';')[0]!.trim();
      const body = await parseJsonBody(req);
      let patched: unknown;
      if (ct === 'application/json-patch+json') patched = applyJsonPatch(cur, body);
      else if (ct === 'application/merge-patch+json' || ct === 'application/strategic-merge-patch+json') {
        patched = applyMergePatch(cur, body);
      } else {
        throw new StatusError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`);
      }
      const { object } = state.doUpdate(resource, namespace, name, patched as KubeObject);
      sendJson(res, 200, object);
      return;
    }
    case 'DELETE': {
      checkForbidden(state, user, 'delete', resource, '', namespace, name);
      const body = await parseJsonBody(req);
      const last = state.doDelete(resource, namespace, name, body);
      if (info.returnsDeletedObject) sendJson(res, 200, last);
      else {
        sendJson(res, 200, {
          kind: 'Status',
          apiVersion: 'v1',
          metadata: {},
          status: 'Success',
          details: { name, kind: resource, uid: last.metadata.uid },
        });
      }
      return;
    }
    default:
      throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Server

export async function startKubeStandin(opts: KubeStandinOptions = {}): Promise<KubeStandin> {
  const state = new KubeStandinState(opts);
  state.signingKeys = [await newSigningKey()];
  state.foreignKey = await newSigningKey();
  const tls = await makeServerTls(['localhost'], ['127.0.0.1']);

  const server = createServer({ key: tls.keyPem, cert: tls.certPem });
  const tracker = new SocketTracker(server, () => state.down);
  state.onDown = () => tracker.destroyAll();
  server.on('secureConnection', () => state.connections++);

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (state.down) {
      req.socket.destroy();
      return;
    }
    const url = new URL(req.url ?? '/', 'https://standin.invalid');
    const rec: KubeRequestRecord = { method: (req.method ?? 'GET').toUpperCase(), path: url.pathname, query: url.search, time: Date.now() };
    state.requests.push(rec);
    void (async () => {
      try {
        if (state.delayMs > 0) await sleep(state.delayMs);
        if (state.down) {
          req.socket.destroy();
          return;
        }
        await route(state, req, res, url, rec);
      } catch (e) {
        if (res.headersSent) {
          res.end();
          return;
        }
        const err = e instanceof StatusError ? e : new StatusError(500, 'InternalError', `Internal error occurred: ${(e as Error).message}`);
        sendJson(res, err.code, err.toStatus());
      }
    })();
  });

  const port = await listen(server, '127.0.0.1');
  const url = `https://127.0.0.1:${port}`;
  state.url = url;
  if (opts.issuer === 'self') state.issuer = url;

  const dir = mkdtempSync(join(tmpdir(), 'kube-standin-'));
  const kubeconfigPath = join(dir, 'kubeconfig');
  const kubeconfigYaml = [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: standin',
    '  cluster:',
    `    server: ${url}`,
    `    certificate-authority-data: ${Buffer.from(tls.caPem).toString('base64')}`,
    'users:',
    '- name: reviewer',
    '  user:',
    `    token: ${state.reviewerToken}`,
    'contexts:',
    '- name: standin',
    '  context:',
    '    cluster: standin',
    '    user: reviewer',
    `    namespace: ${opts.contextNamespace ?? 'default'}`,
    'current-context: standin',
    '',
  ].join('\n');
  writeFileSync(kubeconfigPath, kubeconfigYaml, { mode: 0o600 });

  return {
    url,
    port,
    kubeconfigPath,
    kubeconfigYaml,
    caPem: tls.caPem,
    reviewerToken: state.reviewerToken,
    state,
    mintToken: (o) => state.mintToken(o),
    mintForeignToken: (o) => state.mintForeignToken(o),
    close: async () => {
      state.closeWatches();
      await closeServer(server, tracker);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
