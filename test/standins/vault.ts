/**
 * HashiCorp Vault stand-in (test code only). Plain HTTP like `vault server -dev`, or HTTPS with a throw-away CA
 * when `opts.tls` (then hand `caPem` to the client).
 *
 * Implements:
 *  - Token auth: `X-Vault-Token` or `Authorization: Bearer`; 403 `{"errors":["permission denied"]}` for a
 *    missing/unknown/expired token or a path outside the token's policies (simple Vault-style path globs:
 *    trailing `*`, `+` segment). Tokens have TTLs (`state.expireToken()`), `auth/token/lookup-self`,
 *    `renew-self`, `revoke-self`, `create`. `X-Vault-Namespace` is recorded (not interpreted).
 *  - Kubernetes auth `POST /v1/auth/<mount>/login` (400 `missing role` / `missing jwt` /
 *    `invalid role name "x"`, 403 `permission denied` / `service account name not authorized` /
 *    `namespace not authorized`), JWTs accepted via `state.acceptLoginJwt()` or a `state.loginVerifier` hook
 *    (e.g. the kube stand-in's TokenReview); roles via `state.setK8sRole()` or `POST auth/<mount>/role/<name>`.
 *  - PKI mounts (default `pki` = self-signed root, `pki_int` = intermediate signed by it; RSA 2048 or EC P-256):
 *    roles (POST/PATCH/GET/DELETE `roles/<name>`, `?list=true`), `sign/<role>`, `issuer/<ref>/sign/<role>`,
 *    `issue/<role>`, `sign-verbatim[/<role>]`, `root/sign-intermediate` (Flow A; truncated to the signer),
 *    `intermediate/generate/{exported,internal}` + `intermediate/set-signed` (Flow B), `root/generate/*`,
 *    `issuer/default` (leaf_not_after_behavior), `ca_chain`, `ca/pem`, `ca`, `cert/ca`, `cert/ca_chain`,
 *    `cert/<serial>`, `issuer/<ref>/{json,pem,der}`; `sys/mounts/<path>` (type pki), `sys/health`.
 *    Role semantics: allowed_uri_sans globs (+ `allowed_uri_sans_template` with the login's SA metadata),
 *    use_csr_sans / use_csr_common_name (the CSR's CN wins over common_name; with the role default true a CSR's CN
 *    is certified), the subject serialNumber (from serial_number, else the CSR's), role organization/ou, require_cn, allowed_domains & friends, allow_ip_sans, key_type/key_bits,
 *    server/client flags, key_usage, ttl/max_ttl (with Vault's warning text), not_after, exclude_cn_from_sans,
 *    format pem|der|pem_bundle, remove_roots_from_chain, generate_lease, no_store, basic_constraints_valid_for_non_ca.
 *  - Fault knobs: `state.down`, `state.failWith500`, `state.corruptChain`, `state.delayMs`, `state.sealed`;
 *    `state.requests`, `state.counts` (per path), `state.issued`.
 *
 * Deliberately not implemented: the LIST HTTP verb (node:http cannot parse it — use `?list=true`, i.e. node-vault
 * `noCustomHTTPVerbs: true`), Enterprise namespaces semantics, response wrapping, leases/revocation/CRLs/OCSP,
 * multiple issuers per mount beyond "default", other secret engines and auth methods, policy capabilities
 * (a policy path grants every operation), entity/identity APIs, the real JWT/TokenReview check inside Kubernetes
 * login (tests decide through acceptLoginJwt/loginVerifier), exact error texts for rarely-hit validation branches.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import * as jose from 'jose';
import { closeServer, isRecord, listen, readBody, sendJson, sendRaw, sleep, SocketTracker } from './http-util.js';
import {
  CA_KEY_USAGE,
  type CaMaterial,
  certPem,
  colonHex,
  type CryptoKeyPair,
  describePublicKey,
  generateKeyPair,
  globMatch,
  goDuration,
  issueCert,
  type KeyAlg,
  makeIntermediateCa,
  makeSelfSignedCa,
  makeServerTls,
  parseDurationSeconds,
  privateKeyPem,
  randomSerialHex,
  signingAlgorithmFor,
  splitPem,
  wc,
  x509,
} from './pki.js';

// ---------------------------------------------------------------------------------------------------------------
// Types

export interface PkiRole {
  ttl: number;
  max_ttl: number;
  allow_localhost: boolean;
  allowed_domains: string[];
  allow_bare_domains: boolean;
  allow_subdomains: boolean;
  allow_glob_domains: boolean;
  allow_wildcard_certificates: boolean;
  allow_any_name: boolean;
  enforce_hostnames: boolean;
  allow_ip_sans: boolean;
  allowed_uri_sans: string[];
  allowed_uri_sans_template: boolean;
  server_flag: boolean;
  client_flag: boolean;
  code_signing_flag: boolean;
  email_protection_flag: boolean;
  key_type: 'rsa' | 'ec' | 'ed25519' | 'any';
  key_bits: number;
  key_usage: string[];
  ext_key_usage: string[];
  ext_key_usage_oids: string[];
  use_csr_common_name: boolean;
  use_csr_sans: boolean;
  require_cn: boolean;
  /** Subject fields the role writes into every certificate (Vault's role `organization` and `ou`). */
  organization: string[];
  ou: string[];
  cn_validations: string[];
  basic_constraints_valid_for_non_ca: boolean;
  not_before_duration: number;
  generate_lease: boolean;
  no_store: boolean;
  issuer_ref: string;
}

export const DEFAULT_ROLE: PkiRole = {
  ttl: 0,
  max_ttl: 0,
  allow_localhost: true,
  allowed_domains: [],
  allow_bare_domains: false,
  allow_subdomains: false,
  allow_glob_domains: false,
  allow_wildcard_certificates: true,
  allow_any_name: false,
  enforce_hostnames: true,
  allow_ip_sans: true,
  allowed_uri_sans: [],
  allowed_uri_sans_template: false,
  server_flag: true,
  client_flag: true,
  code_signing_flag: false,
  email_protection_flag: false,
  key_type: 'rsa',
  key_bits: 2048,
  key_usage: ['DigitalSignature', 'KeyAgreement', 'KeyEncipherment'],
  ext_key_usage: [],
  ext_key_usage_oids: [],
  use_csr_common_name: true,
  use_csr_sans: true,
  require_cn: true,
  organization: [],
  ou: [],
  cn_validations: ['email', 'hostname'],
  basic_constraints_valid_for_non_ca: false,
  not_before_duration: 30,
  generate_lease: false,
  no_store: false,
  issuer_ref: 'default',
};

/** Role fields may be given as Vault accepts them over the API (csv strings, "true", "24h", ...). */
export type PkiRoleInput = Partial<Record<keyof PkiRole, unknown>>;

export interface K8sAuthRole {
  bound_service_account_names: string[];
  bound_service_account_namespaces: string[];
  audience?: string;
  token_policies: string[];
  /** Seconds; 0 ⇒ state.loginTtlSeconds. */
  token_ttl: number;
  token_max_ttl: number;
  alias_name_source: string;
}

export interface LoginIdentity {
  namespace: string;
  serviceAccount: string;
  uid?: string;
  secretName?: string;
}

export type LoginVerifier = (
  jwt: string,
  role: { name: string } & K8sAuthRole,
) => LoginIdentity | null | undefined | Promise<LoginIdentity | null | undefined>;

export interface VaultToken {
  id: string;
  accessor: string;
  policies: string[];
  /** Unix ms, or null for non-expiring tokens (root). */
  expiresAt: number | null;
  creationTtl: number;
  maxTtl: number;
  createdAt: number;
  renewable: boolean;
  meta: Record<string, string>;
  displayName: string;
  entityId: string;
  path: string;
}

export interface PkiMountState {
  path: string;
  issuer?: CaMaterial;
  issuerId: string;
  keyId: string;
  /** PEMs above the issuer, nearest first (root last). */
  parents: string[];
  roles: Map<string, PkiRole>;
  leafNotAfterBehavior: 'err' | 'truncate' | 'permit';
  pendingKeys: Map<string, CryptoKeyPair>;
  /** Mount tuning (seconds): default lease TTL 768h, max lease TTL 87600h (as tuned in every PKI tutorial). */
  defaultLeaseTtl: number;
  maxLeaseTtl: number;
  impostorPem?: string;
}

export interface VaultRequestRecord {
  method: string;
  path: string;
  query: string;
  namespace?: string;
  token?: string;
  body?: unknown;
  time: number;
}

export interface IssuedCertRecord {
  mount: string;
  role?: string;
  serial: string;
  pem: string;
  notAfter: Date;
}

/**
 * The role meshca's tests sign workloads with (`pki_int/roles/istio`): workload SPIFFE IDs of namespace default and
 * the CA's own serving name are allowed, Istio CSRs carry no CN, and Vault writes the uri_sans meshca sends (the
 * authenticated identity), not the CSR's.
 */
export const ISTIO_WORKLOAD_ROLE = {
  allowed_uri_sans: ['spiffe://cluster.local/ns/default/*'],
  require_cn: false,
  key_type: 'any',
  allowed_domains: ['istio-system.svc'],
  allow_subdomains: true,
  use_csr_sans: false,
  ttl: '1h',
  max_ttl: '24h',
} as const;

export interface VaultStandinOptions {
  tls?: boolean;
  rootMount?: string;
  /** null ⇒ no intermediate mount. */
  intMount?: string | null;
  keyType?: KeyAlg;
  rootCommonName?: string;
  intCommonName?: string;
  rootTtlSeconds?: number;
  intTtlSeconds?: number;
  rootToken?: string;
  /** Kubernetes auth mount path(s) (default 'kubernetes'). */
  authMount?: string;
  /** Default lease_duration of login tokens when the role has no token_ttl (Vault's default is 768h). */
  loginTtlSeconds?: number;
  version?: string;
}

export interface VaultStandin {
  url: string;
  rootToken: string;
  /** PEM of the TLS CA (only with opts.tls). */
  caPem?: string;
  state: VaultStandinState;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------
// Errors and coercion

class VaultError extends Error {
  constructor(
    readonly status: number,
    readonly errors: string[],
  ) {
    super(errors.join('; '));
  }
}
const userError = (msg: string): VaultError => new VaultError(400, [msg]);
const permissionDenied = (): VaultError => new VaultError(403, ['permission denied']);

function toBool(v: unknown, def: boolean): boolean {
  if (v === undefined || v === null || v === '') return def;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  const s = String(v).toLowerCase();
  if (['true', '1', 't'].includes(s)) return true;
  if (['false', '0', 'f'].includes(s)) return false;
  throw userError(`cannot parse '${String(v)}' as bool`);
}

function toList(v: unknown): string[] {
  if (v === undefined || v === null || v === '') return [];
  if (Array.isArray(v)) return v.map((x) => String(x).trim()).filter((x) => x.length > 0);
  return String(v)
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}

function toInt(v: unknown, def: number): number {
  if (v === undefined || v === null || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n)) throw userError(`cannot parse '${String(v)}' as int`);
  return Math.trunc(n);
}

function toDuration(v: unknown, field: string): number | undefined {
  try {
    return parseDurationSeconds(v);
  } catch (e) {
    throw userError(`error converting input ${String(v)} for field "${field}": ${(e as Error).message}`);
  }
}

const rfc3339 = (d: Date): string => d.toISOString().replace(/\.\d{3}Z$/, 'Z');
const HOSTNAME_RE = /^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])\.)*([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])$/;
const isHostname = (name: string): boolean => HOSTNAME_RE.test(name.startsWith('*.') ? name.slice(2) : name);

const KEY_USAGE_BITS: Record<string, number> = {
  digitalsignature: x509.KeyUsageFlags.digitalSignature,
  contentcommitment: x509.KeyUsageFlags.nonRepudiation,
  keyencipherment: x509.KeyUsageFlags.keyEncipherment,
  dataencipherment: x509.KeyUsageFlags.dataEncipherment,
  keyagreement: x509.KeyUsageFlags.keyAgreement,
  certsign: x509.KeyUsageFlags.keyCertSign,
  crlsign: x509.KeyUsageFlags.cRLSign,
  encipheronly: x509.KeyUsageFlags.encipherOnly,
  decipheronly: x509.KeyUsageFlags.decipherOnly,
};
const EKU_OIDS: Record<string, string> = {
  serverauth: x509.ExtendedKeyUsage.serverAuth,
  clientauth: x509.ExtendedKeyUsage.clientAuth,
  codesigning: x509.ExtendedKeyUsage.codeSigning,
  emailprotection: x509.ExtendedKeyUsage.emailProtection,
  timestamping: x509.ExtendedKeyUsage.timeStamping,
  ocspsigning: x509.ExtendedKeyUsage.ocspSigning,
  any: '2.5.29.37.0',
};

function keyUsageFlags(names: string[]): number {
  let flags = 0;
  for (const n of names) {
    const bit = KEY_USAGE_BITS[n.toLowerCase().replace(/^keyusage/, '')];
    if (bit === undefined) throw userError(`unrecognized key usage: ${n}`);
    flags |= bit;
  }
  return flags;
}

function roleFromInput(input: PkiRoleInput, base: PkiRole = DEFAULT_ROLE): PkiRole {
  const r: PkiRole = { ...base, allowed_domains: [...base.allowed_domains] };
  const boolFields: (keyof PkiRole)[] = [
    'allow_localhost',
    'allow_bare_domains',
    'allow_subdomains',
    'allow_glob_domains',
    'allow_wildcard_certificates',
    'allow_any_name',
    'enforce_hostnames',
    'allow_ip_sans',
    'allowed_uri_sans_template',
    'server_flag',
    'client_flag',
    'code_signing_flag',
    'email_protection_flag',
    'use_csr_common_name',
    'use_csr_sans',
    'require_cn',
    'basic_constraints_valid_for_non_ca',
    'generate_lease',
    'no_store',
  ];
  const listFields: (keyof PkiRole)[] = ['allowed_domains', 'allowed_uri_sans', 'key_usage', 'ext_key_usage', 'ext_key_usage_oids', 'cn_validations', 'organization', 'ou'];
  const target = r as unknown as Record<string, unknown>;
  for (const f of boolFields) if (input[f] !== undefined) target[f] = toBool(input[f], base[f] as boolean);
  for (const f of listFields) if (input[f] !== undefined) target[f] = toList(input[f]);
  if (input.ttl !== undefined) r.ttl = toDuration(input.ttl, 'ttl') ?? 0;
  if (input.max_ttl !== undefined) r.max_ttl = toDuration(input.max_ttl, 'max_ttl') ?? 0;
  if (input.not_before_duration !== undefined) r.not_before_duration = toDuration(input.not_before_duration, 'not_before_duration') ?? 30;
  if (input.issuer_ref !== undefined) r.issuer_ref = String(input.issuer_ref);
  if (input.key_type !== undefined) {
    const kt = String(input.key_type);
    if (!['rsa', 'ec', 'ed25519', 'any'].includes(kt)) throw userError(`unknown key type ${kt}`);
    r.key_type = kt as PkiRole['key_type'];
    if (input.key_bits === undefined) r.key_bits = kt === 'rsa' ? 2048 : kt === 'ec' ? 256 : 0;
  }
  if (input.key_bits !== undefined) r.key_bits = toInt(input.key_bits, r.key_bits);
  keyUsageFlags(r.key_usage); // validate
  return r;
}

function roleToData(r: PkiRole): Record<string, unknown> {
  return { ...r, allowed_domains: [...r.allowed_domains] };
}

// ---------------------------------------------------------------------------------------------------------------
// State

const SYSTEM_DEFAULT_TTL = 768 * 3600;

export class VaultStandinState {
  /** Every request received while not down. */
  readonly requests: VaultRequestRecord[] = [];
  /** Request count per URL path (e.g. '/v1/pki_int/sign/istio'). */
  readonly counts = new Map<string, number>();
  /** Every certificate issued (recorded even when the role has no_store). */
  readonly issued: IssuedCertRecord[] = [];
  /** "<mount>|<serial>" → PEM, for `cert/<serial>` (honours no_store). */
  readonly storedCerts = new Map<string, string>();
  readonly mounts = new Map<string, PkiMountState>();
  readonly tokens = new Map<string, VaultToken>();
  /** policy name → path globs (a matching path grants every operation). 'root' is implicit. */
  readonly policies = new Map<string, string[]>([
    ['default', ['auth/token/lookup-self', 'auth/token/renew-self', 'auth/token/revoke-self', 'sys/capabilities-self']],
    ['meshca', ['*']],
  ]);
  readonly authMounts = new Map<string, { accessor: string; roles: Map<string, K8sAuthRole>; config: Record<string, unknown> }>();
  /** jwt → accepted identity (and optional role restriction). */
  readonly acceptedJwts = new Map<string, { role?: string; identity: LoginIdentity }>();
  /** Hook for JWTs not registered through acceptLoginJwt; return null to deny. */
  loginVerifier: LoginVerifier | undefined;
  /** lease_duration for login tokens when the role has no token_ttl. */
  loginTtlSeconds: number;
  delayMs = 0;
  /** The next n requests fail with 500 {"errors":["internal error"]}. */
  failWith500 = 0;
  /** Chains returned (sign responses and CA endpoints) contain an impostor issuer that does not verify. */
  corruptChain = false;
  /** 503 {"errors":["Vault is sealed"]} for everything but sys/health & sys/seal-status. */
  sealed = false;
  version: string;
  readonly rootToken: string;
  /** @internal */ onDown: () => void = () => undefined;
  private _down = false;

  constructor(opts: VaultStandinOptions) {
    this.loginTtlSeconds = opts.loginTtlSeconds ?? 2764800;
    this.version = opts.version ?? '1.17.2';
    this.rootToken = opts.rootToken ?? `hvs.${randomBytes(18).toString('base64url')}`;
    this.tokens.set(this.rootToken, {
      id: this.rootToken,
      accessor: randomBytes(12).toString('base64url'),
      policies: ['root'],
      expiresAt: null,
      creationTtl: 0,
      maxTtl: 0,
      createdAt: Date.now(),
      renewable: false,
      meta: {},
      displayName: 'root',
      entityId: '',
      path: 'auth/token/root',
    });
    this.addAuthMount(opts.authMount ?? 'kubernetes');
  }

  /** true ⇒ all connections are destroyed (Vault unreachable). */
  get down(): boolean {
    return this._down;
  }

  set down(v: boolean) {
    this._down = v;
    if (v) this.onDown();
  }

  /** Number of requests seen for a path ('/v1/...' or relative 'pki_int/sign/istio'). */
  count(path: string): number {
    const p = path.startsWith('/') ? path : `/v1/${path}`;
    return this.counts.get(p) ?? 0;
  }

  // ---- tokens ----------------------------------------------------------------------------------------------

  createToken(opts: { ttlSeconds?: number; policies?: string[]; meta?: Record<string, string>; maxTtlSeconds?: number; path?: string; displayName?: string } = {}): string {
    const id = `hvs.${randomBytes(18).toString('base64url')}`;
    const ttl = opts.ttlSeconds ?? this.loginTtlSeconds;
    this.tokens.set(id, {
      id,
      accessor: randomBytes(12).toString('base64url'),
      policies: opts.policies ?? ['default', 'meshca'],
      expiresAt: ttl > 0 ? Date.now() + ttl * 1000 : null,
      creationTtl: ttl,
      maxTtl: opts.maxTtlSeconds ?? 0,
      createdAt: Date.now(),
      renewable: ttl > 0,
      meta: opts.meta ?? {},
      displayName: opts.displayName ?? 'token',
      entityId: randomUUID(),
      path: opts.path ?? 'auth/token/create',
    });
    return id;
  }

  /** Force a token to be expired (subsequent use ⇒ 403 permission denied). */
  expireToken(token: string): void {
    const t = this.tokens.get(token);
    if (t) t.expiresAt = Date.now() - 1000;
  }

  revokeToken(token: string): void {
    this.tokens.delete(token);
  }

  setPolicy(name: string, paths: string[]): void {
    this.policies.set(name, [...paths]);
  }

  /** @internal */
  lookupToken(id: string | undefined): VaultToken | undefined {
    if (!id) return undefined;
    const t = this.tokens.get(id);
    if (!t) return undefined;
    if (t.expiresAt !== null && t.expiresAt <= Date.now()) return undefined;
    return t;
  }

  /** @internal */
  allowed(token: VaultToken, path: string): boolean {
    if (token.policies.includes('root')) return true;
    for (const p of token.policies) {
      for (const glob of this.policies.get(p) ?? []) {
        const re = new RegExp(
          `^${glob
            .split('')
            .map((ch, i, arr) =>
              ch === '*' && i === arr.length - 1 ? '.*' : ch === '+' ? '[^/]+' : ch.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'),
            )
            .join('')}$`,
        );
        if (re.test(path)) return true;
      }
    }
    return false;
  }

  // ---- kubernetes auth --------------------------------------------------------------------------------------

  addAuthMount(mount: string): void {
    if (!this.authMounts.has(mount)) {
      this.authMounts.set(mount, { accessor: `auth_kubernetes_${randomBytes(4).toString('hex')}`, roles: new Map(), config: {} });
    }
  }

  /** Accessor of a Kubernetes auth mount (for allowed_uri_sans templates). */
  authAccessor(mount = 'kubernetes'): string {
    return this.authMounts.get(mount)!.accessor;
  }

  setK8sRole(
    name: string,
    cfg: Partial<K8sAuthRole> & { policies?: string[]; ttl?: number | string } = {},
    mount = 'kubernetes',
  ): void {
    this.addAuthMount(mount);
    this.authMounts.get(mount)!.roles.set(name, {
      bound_service_account_names: cfg.bound_service_account_names ?? ['*'],
      bound_service_account_namespaces: cfg.bound_service_account_namespaces ?? ['*'],
      audience: cfg.audience,
      token_policies: cfg.token_policies ?? cfg.policies ?? ['default', 'meshca'],
      token_ttl: cfg.token_ttl ?? toDuration(cfg.ttl, 'ttl') ?? 0,
      token_max_ttl: cfg.token_max_ttl ?? 0,
      alias_name_source: cfg.alias_name_source ?? 'serviceaccount_uid',
    });
  }

  /**
   * Accept `jwt` at login (optionally only for `role`). The identity defaults to what the JWT's (unverified)
   * Kubernetes claims say.
   */
  acceptLoginJwt(jwt: string, role?: string, identity?: LoginIdentity): void {
    this.acceptedJwts.set(jwt, { role, identity: identity ?? identityFromJwt(jwt) });
  }

  // ---- PKI --------------------------------------------------------------------------------------------------

  /** Create an empty PKI mount (no issuer yet; use root/generate or intermediate/generate + set-signed). */
  addPkiMount(path: string): PkiMountState {
    let m = this.mounts.get(path);
    if (!m) {
      m = {
        path,
        issuerId: randomUUID(),
        keyId: randomUUID(),
        parents: [],
        roles: new Map(),
        leafNotAfterBehavior: 'err',
        pendingKeys: new Map(),
        defaultLeaseTtl: SYSTEM_DEFAULT_TTL,
        maxLeaseTtl: 87600 * 3600,
      };
      this.mounts.set(path, m);
    }
    return m;
  }

  setRole(mount: string, name: string, role: PkiRoleInput = {}): PkiRole {
    const m = this.mounts.get(mount);
    if (!m) throw new Error(`no PKI mount ${mount}`);
    const r = roleFromInput(role);
    m.roles.set(name, r);
    return r;
  }

  setLeafNotAfterBehavior(mount: string, behavior: PkiMountState['leafNotAfterBehavior']): void {
    this.mounts.get(mount)!.leafNotAfterBehavior = behavior;
  }

  /** PEM of a mount's issuer certificate. */
  caPem(mount: string): string {
    const m = this.mounts.get(mount);
    if (!m?.issuer) throw new Error(`mount ${mount} has no issuer`);
    return m.issuer.pem;
  }

  /** [issuer, ...parents] of a mount (root last). */
  chain(mount: string): string[] {
    const m = this.mounts.get(mount);
    if (!m?.issuer) return [];
    return [m.issuer.pem, ...m.parents];
  }

  /** @internal chain as served, honouring corruptChain. */
  async servedChain(m: PkiMountState): Promise<string[]> {
    if (!m.issuer) return [];
    if (!this.corruptChain) return [m.issuer.pem, ...m.parents];
    return [await impostorOf(m), ...m.parents];
  }
}

function identityFromJwt(jwt: string): LoginIdentity {
  try {
    const c = jose.decodeJwt(jwt) as Record<string, unknown>;
    const k = c['kubernetes.io'];
    if (isRecord(k) && isRecord(k.serviceaccount)) {
      return { namespace: String(k.namespace ?? ''), serviceAccount: String(k.serviceaccount.name ?? ''), uid: String(k.serviceaccount.uid ?? '') };
    }
    if (typeof c['kubernetes.io/serviceaccount/namespace'] === 'string') {
      return {
        namespace: c['kubernetes.io/serviceaccount/namespace'],
        serviceAccount: String(c['kubernetes.io/serviceaccount/service-account.name'] ?? ''),
        uid: String(c['kubernetes.io/serviceaccount/service-account.uid'] ?? ''),
        secretName: String(c['kubernetes.io/serviceaccount/secret.name'] ?? ''),
      };
    }
  } catch {
    // not a JWT
  }
  return { namespace: 'default', serviceAccount: 'default', uid: randomUUID() };
}

async function impostorOf(m: PkiMountState): Promise<string> {
  if (m.impostorPem) return m.impostorPem;
  const real = m.issuer!;
  const keys = await generateKeyPair(real.keys.privateKey.algorithm.name === 'ECDSA' ? 'ec' : 'rsa');
  const ski = real.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  const aki = real.cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId;
  // Same subject, issuer and key identifiers as the real issuer, but a different key: chains that contain it
  // fail signature verification.
  const cert = await issueCert(
    {
      subject: real.cert.subject,
      issuerName: real.cert.issuerName,
      publicKey: keys.publicKey,
      notBefore: real.cert.notBefore,
      notAfter: real.cert.notAfter,
      ca: {},
      keyUsage: CA_KEY_USAGE,
      skiHex: ski,
      akiHex: aki,
    },
    undefined,
    keys,
  );
  m.impostorPem = certPem(cert);
  return m.impostorPem;
}

// ---------------------------------------------------------------------------------------------------------------
// PKI operations

interface Names {
  cn: string;
  dns: string[];
  emails: string[];
  ips: string[];
  uris: string[];
}

interface ParsedCsr {
  csr: x509.Pkcs10CertificateRequest;
  cn: string;
  /** The subject's serialNumber (2.5.4.5), which Vault copies unless `serial_number` is given. */
  serialNumber: string;
  sans: Omit<Names, 'cn'>;
}

async function parseCsr(pem: unknown): Promise<ParsedCsr> {
  if (typeof pem !== 'string' || !/-----BEGIN (NEW )?CERTIFICATE REQUEST-----/.test(pem)) throw userError('csr contains no data');
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem.trim());
  } catch (e) {
    throw userError(`certificate request could not be parsed: ${(e as Error).message}`);
  }
  let ok = false;
  try {
    ok = await csr.verify(wc);
  } catch {
    ok = false;
  }
  if (!ok) throw userError('request signature invalid');
  const sans: Omit<Names, 'cn'> = { dns: [], emails: [], ips: [], uris: [] };
  const ext = csr.getExtension('2.5.29.17');
  if (ext instanceof x509.SubjectAlternativeNameExtension) {
    for (const n of ext.names.items) {
      if (n.type === 'dns') sans.dns.push(n.value);
      else if (n.type === 'email') sans.emails.push(n.value);
      else if (n.type === 'ip') sans.ips.push(n.value);
      else if (n.type === 'url') sans.uris.push(n.value);
    }
  }
  const cn = csr.subjectName.getField('CN')[0] ?? '';
  const serialNumber = csr.subjectName.getField('2.5.4.5')[0] ?? '';
  return { csr, cn, serialNumber, sans };
}

function checkKeyType(role: PkiRole, pk: x509.PublicKey): void {
  const info = describePublicKey(pk);
  const kt = role.key_type;
  if (kt === 'any') {
    if (info.type === 'rsa' && info.bits < 2048) throw userError(`RSA keys < 2048 bits are unsafe and not supported: got ${info.bits}`);
    if (!['rsa', 'ec', 'ed25519'].includes(info.type)) throw userError(`unsupported key type ${info.type}`);
    return;
  }
  if (info.type !== kt) throw userError(`role requires keys of type ${kt}`);
  if (kt === 'rsa' && info.bits < role.key_bits) throw userError(`role requires a minimum of ${role.key_bits}-bit RSA keys`);
  if (kt === 'ec' && info.bits < role.key_bits) throw userError(`role requires a minimum of ${role.key_bits}-bit EC keys`);
}

function nameAllowed(role: PkiRole, name: string): boolean {
  const isEmail = name.includes('@');
  const host = isEmail ? name.slice(name.indexOf('@') + 1) : name;
  if (role.enforce_hostnames && !isHostname(host)) return false;
  if (role.allow_any_name) return true;
  if (role.allow_localhost && (host === 'localhost' || host === 'localdomain' || host === 'localhost.localdomain')) return true;
  if (!role.allow_wildcard_certificates && host.includes('*')) return false;
  for (const d of role.allowed_domains) {
    if (role.allow_bare_domains && host === d) return true;
    if (role.allow_subdomains && host.endsWith(`.${d}`)) return true;
    if (role.allow_glob_domains && d.includes('*') && globMatch(d, host)) return true;
  }
  return false;
}

function templateUriPatterns(patterns: string[], token: VaultToken | undefined): string[] {
  const out: string[] = [];
  for (const p of patterns) {
    let ok = true;
    const v = p.replace(/\{\{\s*identity\.entity\.aliases\.[^.}]+\.metadata\.([\w]+)\s*\}\}/g, (_m, key: string) => {
      const val = token?.meta[key];
      if (val === undefined) ok = false;
      return val ?? '';
    });
    if (ok && !/\{\{.*\}\}/.test(v)) out.push(v);
  }
  return out;
}

interface LeafRequest {
  mount: PkiMountState;
  roleName?: string;
  role: PkiRole;
  params: Record<string, unknown>;
  token?: VaultToken;
  publicKey: x509.PublicKey | CryptoKeyPair['publicKey'];
  csr?: ParsedCsr;
  verbatim?: boolean;
}

interface LeafResult {
  data: Record<string, unknown>;
  warnings: string[];
  leaseDuration: number;
  leaseId: string;
}

async function signLeaf(state: VaultStandinState, req: LeafRequest): Promise<LeafResult> {
  const { mount, role, params, csr } = req;
  if (!mount.issuer) throw userError('no default issuer currently configured');
  const warnings: string[] = [];
  const names: Names = { cn: '', dns: [], emails: [], ips: [], uris: [] };
  let subject: string;
  let keyUsage = keyUsageFlags(role.key_usage);
  const eku: string[] = [];

  if (req.verbatim && csr) {
    subject = csr.csr.subject;
    names.cn = csr.cn;
    Object.assign(names, { dns: csr.sans.dns, emails: csr.sans.emails, ips: csr.sans.ips, uris: csr.sans.uris });
    const ku = params.key_usage !== undefined ? toList(params.key_usage) : DEFAULT_ROLE.key_usage;
    keyUsage = keyUsageFlags(ku);
    for (const e of toList(params.ext_key_usage)) {
      const oid = EKU_OIDS[e.toLowerCase()];
      if (!oid) throw userError(`unrecognized extended key usage: ${e}`);
      eku.push(oid);
    }
    eku.push(...toList(params.ext_key_usage_oids));
  } else {
    // Common name: like Vault's generateCreationBundle, the CSR's CN wins over the common_name parameter when
    // use_csr_common_name is set (the default), and common_name is only read when the CSR has none.
    let cn = csr && role.use_csr_common_name ? csr.cn : '';
    if (!cn) cn = typeof params.common_name === 'string' ? params.common_name : '';
    if (!cn && role.require_cn) {
      throw userError(
        'the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false',
      );
    }
    names.cn = cn;
    // SANs
    const fromCsr = !!csr && role.use_csr_sans;
    if (fromCsr) {
      names.dns = [...csr.sans.dns];
      names.emails = [...csr.sans.emails];
      names.ips = [...csr.sans.ips];
      names.uris = [...csr.sans.uris];
    } else {
      for (const n of toList(params.alt_names)) (n.includes('@') ? names.emails : names.dns).push(n);
      names.ips = toList(params.ip_sans);
      names.uris = toList(params.uri_sans);
    }
    if (cn && !toBool(params.exclude_cn_from_sans, false)) {
      if (cn.includes('@')) {
        if (!names.emails.includes(cn)) names.emails.push(cn);
      } else if (isHostname(cn) && !names.dns.includes(cn)) names.dns.push(cn);
    }
    // Validation
    if (cn && !role.cn_validations.includes('disabled')) {
      const okFormat =
        (role.cn_validations.includes('email') && cn.includes('@')) || (role.cn_validations.includes('hostname') && isHostname(cn));
      if (!okFormat || !nameAllowed(role, cn)) throw userError(`common name ${cn} not allowed by this role`);
    }
    for (const n of [...names.dns, ...names.emails]) {
      if (n !== cn && !nameAllowed(role, n)) throw userError(`subject alternate name ${n} not allowed by this role`);
    }
    if (names.ips.length > 0 && !role.allow_ip_sans) {
      throw userError(`IP Subject Alternative Names are not allowed in this role, but was provided ${names.ips[0]!}`);
    }
    if (names.uris.length > 0) {
      const via = fromCsr ? 'via CSR' : 'via the API';
      if (role.allowed_uri_sans.length === 0) throw userError(`URI Subject Alternative Names are not allowed in this role, but were provided ${via}`);
      const patterns = role.allowed_uri_sans_template ? templateUriPatterns(role.allowed_uri_sans, req.token) : role.allowed_uri_sans;
      for (const u of names.uris) {
        if (!patterns.some((p) => globMatch(p, u))) {
          throw userError(`URI Subject Alternative Names were provided ${via} which are not valid for this role`);
        }
      }
    }
    // Vault takes the subject serialNumber from the serial_number parameter, else from the CSR (whatever the role).
    const ridSerialNumber = typeof params.serial_number === 'string' && params.serial_number ? params.serial_number : (csr?.serialNumber ?? '');
    const escape = (value: string): string => value.replace(/([,+"\\<>;=])/g, '\\$1');
    subject = [
      ...role.organization.map((o) => `O=${escape(o)}`),
      ...role.ou.map((o) => `OU=${escape(o)}`),
      ...(cn ? [`CN=${escape(cn)}`] : []),
      ...(ridSerialNumber ? [`2.5.4.5=${escape(ridSerialNumber)}`] : []),
    ].join(', ');
    if (role.server_flag) eku.push(x509.ExtendedKeyUsage.serverAuth);
    if (role.client_flag) eku.push(x509.ExtendedKeyUsage.clientAuth);
    if (role.code_signing_flag) eku.push(x509.ExtendedKeyUsage.codeSigning);
    if (role.email_protection_flag) eku.push(x509.ExtendedKeyUsage.emailProtection);
    for (const e of role.ext_key_usage) {
      const oid = EKU_OIDS[e.toLowerCase().replace(/^extkeyusage/, '')];
      if (!oid) throw userError(`unrecognized extended key usage: ${e}`);
      if (!eku.includes(oid)) eku.push(oid);
    }
    eku.push(...role.ext_key_usage_oids);
  }
  if (csr && !req.verbatim) checkKeyType(role, csr.csr.publicKey);
  if (csr && req.verbatim) checkKeyType({ ...role, key_type: 'any' }, csr.csr.publicKey);

  // Validity
  const now = Date.now();
  const hasTtl = params.ttl !== undefined && params.ttl !== '';
  const hasNotAfter = typeof params.not_after === 'string' && params.not_after !== '';
  if (hasTtl && hasNotAfter) throw userError('Either ttl or not_after should be provided. Both should not be provided in the same request.');
  let notAfter: Date;
  if (hasNotAfter) {
    notAfter = new Date(String(params.not_after));
    if (Number.isNaN(notAfter.getTime())) throw userError(`failed to parse not_after: ${String(params.not_after)}`);
  } else {
    let ttl = toDuration(params.ttl, 'ttl') ?? 0;
    if (ttl === 0 && role.ttl > 0) ttl = role.ttl;
    const maxTtl = role.max_ttl > 0 ? role.max_ttl : mount.maxLeaseTtl;
    if (ttl === 0) ttl = mount.defaultLeaseTtl;
    if (ttl > maxTtl) {
      warnings.push(`TTL "${goDuration(ttl)}" is longer than permitted maxTTL "${goDuration(maxTtl)}", so maxTTL is being used`);
      ttl = maxTtl;
    }
    notAfter = new Date(now + ttl * 1000);
  }
  notAfter = new Date(Math.floor(notAfter.getTime() / 1000) * 1000);
  const caNotAfter = mount.issuer.cert.notAfter;
  if (notAfter > caNotAfter) {
    if (mount.leafNotAfterBehavior === 'err') {
      throw userError(
        `cannot satisfy request, as TTL would result in notAfter of ${notAfter.toISOString()} that is beyond the expiration of the CA certificate at ${caNotAfter.toISOString()}`,
      );
    }
    if (mount.leafNotAfterBehavior === 'truncate') notAfter = new Date(caNotAfter.getTime());
  }
  const notBefore = new Date(Math.floor((now - role.not_before_duration * 1000) / 1000) * 1000);

  const sans: x509.JsonGeneralName[] = [
    ...names.dns.map((value) => ({ type: 'dns' as const, value })),
    ...names.emails.map((value) => ({ type: 'email' as const, value })),
    ...names.ips.map((value) => ({ type: 'ip' as const, value })),
    ...names.uris.map((value) => ({ type: 'url' as const, value })),
  ];
  const serialHex = randomSerialHex();
  const cert = await issueCert(
    {
      subject,
      publicKey: req.publicKey,
      notBefore,
      notAfter,
      serialHex,
      keyUsage,
      extKeyUsage: eku,
      sans,
      basicConstraintsForLeaf: role.basic_constraints_valid_for_non_ca,
    },
    mount.issuer,
  );
  const leafPem = certPem(cert);
  const serial = colonHex(serialHex);
  state.issued.push({ mount: mount.path, role: req.roleName, serial, pem: leafPem, notAfter });
  if (!role.no_store) state.storedCerts.set(`${mount.path}|${serial}`, leafPem);

  const data = await formatIssued(state, mount, leafPem, serial, cert, params);
  const leaseDuration = role.generate_lease ? Math.max(0, Math.floor((notAfter.getTime() - now) / 1000)) : 0;
  const leaseId = role.generate_lease ? `${mount.path}/sign/${req.roleName ?? ''}/${randomUUID()}` : '';
  return { data, warnings, leaseDuration, leaseId };
}

async function formatIssued(
  state: VaultStandinState,
  mount: PkiMountState,
  leafPem: string,
  serial: string,
  cert: x509.X509Certificate,
  params: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const format = typeof params.format === 'string' && params.format ? params.format : 'pem';
  if (!['pem', 'der', 'pem_bundle'].includes(format)) throw userError(`unsupported format argument: ${format}`);
  let chain = await state.servedChain(mount);
  if (toBool(params.remove_roots_from_chain, false)) chain = chain.filter((p) => !isSelfSigned(p));
  const issuingCa = chain[0] ?? '';
  const der = (pem: string): string => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64').toString('base64');
  const out: Record<string, unknown> = {};
  if (format === 'der') {
    out.certificate = der(leafPem);
    out.issuing_ca = der(issuingCa);
    out.ca_chain = chain.map(der);
  } else {
    out.certificate = format === 'pem_bundle' ? [leafPem, ...chain].join('\n') : leafPem;
    out.issuing_ca = issuingCa;
    out.ca_chain = chain;
  }
  if ((out.ca_chain as string[]).length === 0) delete out.ca_chain;
  out.serial_number = serial;
  out.expiration = Math.floor(cert.notAfter.getTime() / 1000);
  out.not_before = Math.floor(cert.notBefore.getTime() / 1000);
  return out;
}

function isSelfSigned(pem: string): boolean {
  try {
    const c = new x509.X509Certificate(pem);
    return c.subject === c.issuer;
  } catch {
    return false;
  }
}

function caNamesFromParams(params: Record<string, unknown>, cn: string): x509.JsonGeneralName[] {
  const sans: x509.JsonGeneralName[] = [];
  for (const n of toList(params.alt_names)) sans.push({ type: n.includes('@') ? 'email' : 'dns', value: n });
  if (cn && !toBool(params.exclude_cn_from_sans, false)) {
    if (cn.includes('@')) sans.push({ type: 'email', value: cn });
    else if (isHostname(cn)) sans.push({ type: 'dns', value: cn });
  }
  for (const ip of toList(params.ip_sans)) sans.push({ type: 'ip', value: ip });
  for (const u of toList(params.uri_sans)) sans.push({ type: 'url', value: u });
  return sans;
}

async function signIntermediate(state: VaultStandinState, mount: PkiMountState, params: Record<string, unknown>): Promise<LeafResult> {
  if (!mount.issuer) throw userError('no default issuer currently configured');
  const csr = await parseCsr(params.csr);
  const useCsrValues = toBool(params.use_csr_values, false);
  let cn = typeof params.common_name === 'string' ? params.common_name : '';
  if (!cn) cn = csr.cn;
  if (!cn && !useCsrValues) {
    throw userError(
      'the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false',
    );
  }
  const warnings: string[] = [];
  const hasTtl = params.ttl !== undefined && params.ttl !== '';
  const hasNotAfter = typeof params.not_after === 'string' && params.not_after !== '';
  if (hasTtl && hasNotAfter) throw userError('Either ttl or not_after should be provided. Both should not be provided in the same request.');
  const now = Date.now();
  let notAfter: Date;
  if (hasNotAfter) notAfter = new Date(String(params.not_after));
  else {
    let ttl = toDuration(params.ttl, 'ttl') ?? 0;
    if (ttl === 0) ttl = mount.defaultLeaseTtl;
    if (ttl > mount.maxLeaseTtl) {
      warnings.push(`TTL "${goDuration(ttl)}" is longer than permitted maxTTL "${goDuration(mount.maxLeaseTtl)}", so maxTTL is being used`);
      ttl = mount.maxLeaseTtl;
    }
    notAfter = new Date(now + ttl * 1000);
  }
  if (notAfter > mount.issuer.cert.notAfter) notAfter = new Date(mount.issuer.cert.notAfter.getTime());
  notAfter = new Date(Math.floor(notAfter.getTime() / 1000) * 1000);
  const notBefore = new Date(Math.floor((now - (toDuration(params.not_before_duration, 'not_before_duration') ?? 30) * 1000) / 1000) * 1000);

  let pathLen: number | undefined;
  const maxPath = toInt(params.max_path_length, -1);
  const parentBc = mount.issuer.cert.getExtension(x509.BasicConstraintsExtension);
  if (maxPath >= 0) pathLen = maxPath;
  else if (parentBc?.pathLength !== undefined) pathLen = Math.max(0, parentBc.pathLength - 1);

  const subject = useCsrValues ? csr.csr.subject : `CN=${cn.replace(/([,+"\\<>;=])/g, '\\$1')}`;
  const sans = useCsrValues
    ? [
        ...csr.sans.dns.map((value) => ({ type: 'dns' as const, value })),
        ...csr.sans.emails.map((value) => ({ type: 'email' as const, value })),
        ...csr.sans.ips.map((value) => ({ type: 'ip' as const, value })),
        ...csr.sans.uris.map((value) => ({ type: 'url' as const, value })),
      ]
    : caNamesFromParams(params, cn);
  const serialHex = randomSerialHex();
  const cert = await issueCert(
    {
      subject,
      publicKey: csr.csr.publicKey,
      notBefore,
      notAfter,
      serialHex,
      ca: { pathLen },
      keyUsage: CA_KEY_USAGE | keyUsageFlags(toList(params.key_usage)),
      sans,
    },
    mount.issuer,
  );
  const pem = certPem(cert);
  const serial = colonHex(serialHex);
  state.issued.push({ mount: mount.path, serial, pem, notAfter });
  state.storedCerts.set(`${mount.path}|${serial}`, pem);
  const data = await formatIssued(state, mount, pem, serial, cert, params);
  return { data, warnings, leaseDuration: 0, leaseId: '' };
}

async function generateCa(
  state: VaultStandinState,
  mount: PkiMountState,
  kind: 'root' | 'intermediate',
  type: string,
  params: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  if (!['exported', 'internal'].includes(type)) throw userError(`unsupported type "${type}" for this stand-in (use exported or internal)`);
  const cn = typeof params.common_name === 'string' ? params.common_name : '';
  if (!cn) throw userError('the common_name field is required');
  const kt = String(params.key_type ?? 'rsa');
  if (kt !== 'rsa' && kt !== 'ec') throw userError(`unsupported key_type ${kt}`);
  const keys = await generateKeyPair(kt, toInt(params.key_bits, 0) || 2048);
  const keyId = randomUUID();
  const out: Record<string, unknown> = { key_id: keyId };
  if (type === 'exported') {
    out.private_key = await privateKeyPem(keys.privateKey, 'traditional');
    out.private_key_type = kt;
  }
  if (kind === 'intermediate') {
    const extensions: x509.Extension[] = [];
    if (toBool(params.add_basic_constraints, false)) extensions.push(new x509.BasicConstraintsExtension(true, undefined, true));
    const sans = caNamesFromParams(params, cn);
    if (sans.length) extensions.push(new x509.SubjectAlternativeNameExtension(sans));
    const csr = await x509.Pkcs10CertificateRequestGenerator.create(
      { name: `CN=${cn}`, keys, signingAlgorithm: signingAlgorithmFor(keys.privateKey), extensions },
      wc,
    );
    mount.pendingKeys.set(keyId, keys);
    out.csr = csr.toString('pem').trim();
    return out;
  }
  const ttl = toDuration(params.ttl, 'ttl') ?? mount.defaultLeaseTtl;
  const now = Date.now();
  const ca = await makeSelfSignedCa(cn, kt, new Date(now - 30_000), new Date(now + ttl * 1000));
  mount.issuer = ca;
  mount.parents = [];
  mount.issuerId = randomUUID();
  mount.keyId = keyId;
  mount.impostorPem = undefined;
  // makeSelfSignedCa made its own key; report the one actually used.
  if (type === 'exported') out.private_key = await privateKeyPem(ca.keys.privateKey, 'traditional');
  const serial = colonHex(ca.cert.serialNumber);
  state.issued.push({ mount: mount.path, serial, pem: ca.pem, notAfter: ca.cert.notAfter });
  state.storedCerts.set(`${mount.path}|${serial}`, ca.pem);
  return {
    ...out,
    certificate: ca.pem,
    issuing_ca: ca.pem,
    serial_number: serial,
    expiration: Math.floor(ca.cert.notAfter.getTime() / 1000),
    issuer_id: mount.issuerId,
    issuer_name: '',
  };
}

async function setSigned(mount: PkiMountState, params: Record<string, unknown>): Promise<Record<string, unknown>> {
  const pems = splitPem(typeof params.certificate === 'string' ? params.certificate : '');
  if (pems.length === 0) throw userError('no data found in PEM block');
  const cert = new x509.X509Certificate(pems[0]!);
  const spki = Buffer.from(cert.publicKey.rawData).toString('hex');
  for (const [keyId, keys] of mount.pendingKeys) {
    const mine = Buffer.from(await wc.subtle.exportKey('spki', keys.publicKey)).toString('hex');
    if (mine !== spki) continue;
    mount.pendingKeys.delete(keyId);
    mount.issuer = { cert, pem: certPem(cert), keys };
    mount.parents = pems.slice(1).map((p) => p.trim());
    mount.issuerId = randomUUID();
    mount.keyId = keyId;
    mount.impostorPem = undefined;
    return {
      imported_issuers: [mount.issuerId],
      imported_keys: null,
      mapping: { [mount.issuerId]: keyId },
      existing_issuers: null,
      existing_keys: null,
    };
  }
  throw userError("no key in this mount matches the certificate's public key (key-less issuers are not supported by the stand-in)");
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP

function envelope(
  data: unknown,
  opts: { warnings?: string[]; auth?: unknown; leaseDuration?: number; leaseId?: string; renewable?: boolean; mountType?: string } = {},
): Record<string, unknown> {
  const body: Record<string, unknown> = {
    request_id: randomUUID(),
    lease_id: opts.leaseId ?? '',
    renewable: opts.renewable ?? false,
    lease_duration: opts.leaseDuration ?? 0,
    data,
    wrap_info: null,
    warnings: opts.warnings && opts.warnings.length > 0 ? opts.warnings : null,
    auth: opts.auth ?? null,
  };
  if (opts.mountType) body.mount_type = opts.mountType;
  return body;
}

function tokenAuthBlock(t: VaultToken, metadata: Record<string, string> | null): Record<string, unknown> {
  const ttl = t.expiresAt === null ? 0 : Math.max(0, Math.round((t.expiresAt - Date.now()) / 1000));
  return {
    client_token: t.id,
    accessor: t.accessor,
    policies: t.policies,
    token_policies: t.policies,
    metadata,
    lease_duration: ttl,
    renewable: t.renewable,
    entity_id: t.entityId,
    token_type: 'service',
    orphan: true,
    mfa_requirement: null,
    num_uses: 0,
  };
}

async function parseVaultBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const buf = await readBody(req);
  if (buf.length === 0) return {};
  try {
    const v = JSON.parse(buf.toString('utf8')) as unknown;
    return isRecord(v) ? v : {};
  } catch {
    throw userError('failed to parse JSON input: invalid character');
  }
}

const UNAUTH_PKI = [/^ca(\/pem)?$/, /^ca_chain$/, /^cert\/[^/]+$/, /^issuer\/[^/]+\/(json|pem|der)$/, /^crl(\/pem)?$/];

async function route(
  state: VaultStandinState,
  method: string,
  rel: string,
  query: URLSearchParams,
  body: Record<string, unknown>,
  tokenId: string | undefined,
  res: ServerResponse,
): Promise<void> {
  const isRead = method === 'GET' || method === 'HEAD';
  const isWrite = method === 'POST' || method === 'PUT';
  const isList = isRead && ['true', '1'].includes(query.get('list') ?? '');

  // ---- unauthenticated ----
  if (rel === 'sys/health' && isRead) {
    sendJson(res, 200, {
      initialized: true,
      sealed: state.sealed,
      standby: false,
      performance_standby: false,
      replication_performance_mode: 'disabled',
      replication_dr_mode: 'disabled',
      server_time_utc: Math.floor(Date.now() / 1000),
      version: state.version,
      cluster_name: 'vault-cluster-standin',
      cluster_id: '00000000-0000-0000-0000-000000000000',
    });
    return;
  }
  if (rel === 'sys/seal-status' && isRead) {
    sendJson(res, 200, { type: 'shamir', initialized: true, sealed: state.sealed, t: 1, n: 1, progress: 0, nonce: '', version: state.version, build_date: '2024-08-01T00:00:00Z', migration: false, recovery_seal: false, storage_type: 'inmem' });
    return;
  }
  if (state.sealed) throw new VaultError(503, ['Vault is sealed']);

  const loginMatch = rel.match(/^auth\/(.+)\/login$/);
  if (loginMatch && state.authMounts.has(loginMatch[1]!)) {
    if (!isWrite) throw new VaultError(405, ['1 error occurred:\n\t* unsupported operation\n\n']);
    await k8sLogin(state, loginMatch[1]!, body, res);
    return;
  }

  const segs = rel.split('/');
  const mount = state.mounts.get(segs[0]!);
  const sub = segs.slice(1).join('/');
  if (mount && isRead && UNAUTH_PKI.some((re) => re.test(sub))) {
    await pkiRead(state, mount, sub, res);
    return;
  }

  // ---- authenticated ----
  const token = state.lookupToken(tokenId);
  if (!token || !state.allowed(token, rel)) throw permissionDenied();

  if (rel === 'auth/token/lookup-self' && (isRead || isWrite)) {
    const ttl = token.expiresAt === null ? 0 : Math.max(0, Math.round((token.expiresAt - Date.now()) / 1000));
    sendJson(
      res,
      200,
      envelope({
        accessor: token.accessor,
        creation_time: Math.floor(token.createdAt / 1000),
        creation_ttl: token.creationTtl,
        display_name: token.displayName,
        entity_id: token.entityId,
        expire_time: token.expiresAt === null ? null : rfc3339(new Date(token.expiresAt)),
        explicit_max_ttl: token.maxTtl,
        id: token.id,
        issue_time: rfc3339(new Date(token.createdAt)),
        meta: Object.keys(token.meta).length ? token.meta : null,
        num_uses: 0,
        orphan: true,
        path: token.path,
        policies: token.policies,
        renewable: token.renewable,
        ttl,
        type: 'service',
      }),
    );
    return;
  }
  if (rel === 'auth/token/renew-self' && isWrite) {
    if (!token.renewable) throw userError('lease is not renewable');
    let inc = toDuration(body.increment, 'increment') ?? token.creationTtl;
    if (token.maxTtl > 0) inc = Math.min(inc, Math.floor((token.createdAt + token.maxTtl * 1000 - Date.now()) / 1000));
    token.expiresAt = Date.now() + inc * 1000;
    sendJson(res, 200, envelope(null, { auth: tokenAuthBlock(token, Object.keys(token.meta).length ? token.meta : null) }));
    return;
  }
  if (rel === 'auth/token/revoke-self' && isWrite) {
    state.revokeToken(token.id);
    res.writeHead(204).end();
    return;
  }
  if (rel === 'auth/token/create' && isWrite) {
    const id = state.createToken({
      ttlSeconds: toDuration(body.ttl, 'ttl'),
      policies: body.policies !== undefined ? toList(body.policies) : token.policies,
      meta: isRecord(body.meta) ? (body.meta as Record<string, string>) : {},
    });
    sendJson(res, 200, envelope(null, { auth: tokenAuthBlock(state.tokens.get(id)!, null) }));
    return;
  }
  const mountsMatch = rel.match(/^sys\/mounts\/(.+)$/);
  if (mountsMatch && isWrite) {
    if (body.type !== 'pki') throw userError(`plugin not found in the catalog: ${String(body.type)}`);
    if (state.mounts.has(mountsMatch[1]!)) throw userError(`path is already in use at ${mountsMatch[1]!}/`);
    state.addPkiMount(mountsMatch[1]!);
    res.writeHead(204).end();
    return;
  }
  if (rel === 'sys/mounts' && isRead) {
    const data: Record<string, unknown> = {};
    for (const m of state.mounts.keys()) data[`${m}/`] = { type: 'pki', description: '', config: {} };
    sendJson(res, 200, envelope(data));
    return;
  }
  const authCfg = rel.match(/^auth\/(.+?)\/(config|role\/([^/]+)|role)$/);
  if (authCfg && state.authMounts.has(authCfg[1]!)) {
    const am = state.authMounts.get(authCfg[1]!)!;
    if (authCfg[2] === 'config') {
      if (isWrite) {
        Object.assign(am.config, body);
        res.writeHead(204).end();
      } else sendJson(res, 200, envelope({ ...am.config, token_reviewer_jwt_set: !!am.config.token_reviewer_jwt }));
      return;
    }
    if (authCfg[2] === 'role') {
      if (!isList) throw new VaultError(405, ['1 error occurred:\n\t* unsupported operation\n\n']);
      if (am.roles.size === 0) throw new VaultError(404, []);
      sendJson(res, 200, envelope({ keys: [...am.roles.keys()] }));
      return;
    }
    const roleName = authCfg[3]!;
    if (isWrite) {
      state.setK8sRole(
        roleName,
        {
          bound_service_account_names: toList(body.bound_service_account_names),
          bound_service_account_namespaces: toList(body.bound_service_account_namespaces),
          audience: typeof body.audience === 'string' && body.audience ? body.audience : undefined,
          token_policies: body.token_policies !== undefined ? toList(body.token_policies) : body.policies !== undefined ? toList(body.policies) : undefined,
          token_ttl: toDuration(body.token_ttl ?? body.ttl, 'token_ttl'),
          token_max_ttl: toDuration(body.token_max_ttl ?? body.max_ttl, 'token_max_ttl'),
          alias_name_source: typeof body.alias_name_source === 'string' ? body.alias_name_source : undefined,
        },
        authCfg[1]!,
      );
      res.writeHead(204).end();
      return;
    }
    if (method === 'DELETE') {
      am.roles.delete(roleName);
      res.writeHead(204).end();
      return;
    }
    const r = am.roles.get(roleName);
    if (!r) throw new VaultError(404, []);
    sendJson(res, 200, envelope({ ...r, token_type: 'default' }));
    return;
  }

  if (mount) {
    await pkiRoute(state, mount, method, sub, query, body, token, res);
    return;
  }
  throw new VaultError(404, [`no handler for route "${rel}". route entry not found.`]);
}

async function k8sLogin(state: VaultStandinState, mountName: string, body: Record<string, unknown>, res: ServerResponse): Promise<void> {
  const roleName = typeof body.role === 'string' ? body.role : '';
  if (!roleName) throw userError('missing role');
  const jwt = typeof body.jwt === 'string' ? body.jwt : '';
  if (!jwt) throw userError('missing jwt');
  const am = state.authMounts.get(mountName)!;
  const role = am.roles.get(roleName);
  if (!role) throw userError(`invalid role name "${roleName}"`);
  let identity: LoginIdentity | null | undefined;
  const accepted = state.acceptedJwts.get(jwt);
  if (accepted) {
    if (accepted.role && accepted.role !== roleName) throw permissionDenied();
    if (role.audience) {
      let auds: string[] = [];
      try {
        const aud = jose.decodeJwt(jwt).aud;
        auds = Array.isArray(aud) ? aud : aud ? [aud] : [];
      } catch {
        auds = [];
      }
      if (!auds.includes(role.audience)) throw permissionDenied();
    }
    identity = accepted.identity;
  } else if (state.loginVerifier) {
    identity = await state.loginVerifier(jwt, { name: roleName, ...role });
  }
  if (!identity) throw permissionDenied();
  const names = role.bound_service_account_names;
  if (!names.includes('*') && !names.includes(identity.serviceAccount)) throw new VaultError(403, ['service account name not authorized']);
  const nss = role.bound_service_account_namespaces;
  if (!nss.includes('*') && !nss.includes(identity.namespace)) throw new VaultError(403, ['namespace not authorized']);
  const metadata: Record<string, string> = {
    role: roleName,
    service_account_name: identity.serviceAccount,
    service_account_namespace: identity.namespace,
    service_account_secret_name: identity.secretName ?? '',
    service_account_uid: identity.uid ?? '',
  };
  const ttl = role.token_ttl > 0 ? role.token_ttl : state.loginTtlSeconds;
  const id = state.createToken({
    ttlSeconds: ttl,
    policies: role.token_policies,
    meta: metadata,
    maxTtlSeconds: role.token_max_ttl,
    path: `auth/${mountName}/login`,
    displayName: `${mountName}-${identity.namespace}-${identity.serviceAccount}`,
  });
  const t = state.tokens.get(id)!;
  sendJson(res, 200, envelope(null, { auth: tokenAuthBlock(t, metadata) }));
}

async function pkiRead(state: VaultStandinState, mount: PkiMountState, sub: string, res: ServerResponse): Promise<void> {
  const chain = await state.servedChain(mount);
  const issuerPem = chain[0];
  const derOf = (pem: string): Buffer => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  switch (sub) {
    case 'ca_chain':
      if (chain.length === 0) {
        res.writeHead(204).end();
        return;
      }
      sendRaw(res, 200, chain.join('\n').trim(), 'application/pkix-cert');
      return;
    case 'ca/pem':
      if (!issuerPem) {
        res.writeHead(204).end();
        return;
      }
      sendRaw(res, 200, issuerPem, 'application/pem-certificate-chain');
      return;
    case 'ca':
      if (!issuerPem) {
        res.writeHead(204).end();
        return;
      }
      sendRaw(res, 200, derOf(issuerPem), 'application/pkix-cert');
      return;
    case 'cert/ca':
      sendJson(res, 200, envelope({ certificate: issuerPem ?? '', revocation_time: 0, revocation_time_rfc3339: '' }));
      return;
    case 'cert/ca_chain': {
      const joined = chain.join('\n');
      sendJson(res, 200, envelope({ certificate: joined, ca_chain: joined, revocation_time: 0, revocation_time_rfc3339: '' }));
      return;
    }
    case 'crl':
    case 'crl/pem':
      throw new VaultError(404, ['CRLs are not implemented by the stand-in']);
    default:
      break;
  }
  const issuerMatch = sub.match(/^issuer\/([^/]+)\/(json|pem|der)$/);
  if (issuerMatch) {
    if (!['default', mount.issuerId].includes(issuerMatch[1]!) || !issuerPem) throw userError(`unable to find PKI issuer for reference: ${issuerMatch[1]!}`);
    if (issuerMatch[2] === 'pem') sendRaw(res, 200, issuerPem, 'application/pem-certificate-chain');
    else if (issuerMatch[2] === 'der') sendRaw(res, 200, derOf(issuerPem), 'application/pkix-cert');
    else {
      sendJson(
        res,
        200,
        envelope({
          certificate: issuerPem,
          ca_chain: chain,
          issuer_id: mount.issuerId,
          issuer_name: '',
          key_id: mount.keyId,
          leaf_not_after_behavior: mount.leafNotAfterBehavior,
          manual_chain: null,
          usage: 'crl-signing,issuing-certificates,ocsp-signing,read-only',
        }),
      );
    }
    return;
  }
  const certMatch = sub.match(/^cert\/([^/]+)$/);
  if (certMatch) {
    const serial = certMatch[1]!.replace(/-/g, ':').toLowerCase();
    const pem = state.storedCerts.get(`${mount.path}|${serial}`);
    if (!pem) {
      sendJson(res, 200, envelope(null));
      return;
    }
    sendJson(res, 200, envelope({ certificate: pem, revocation_time: 0, revocation_time_rfc3339: '', issuer_id: mount.issuerId }));
    return;
  }
  throw new VaultError(404, [`no handler for route "${mount.path}/${sub}". route entry not found.`]);
}

async function pkiRoute(
  state: VaultStandinState,
  mount: PkiMountState,
  method: string,
  sub: string,
  query: URLSearchParams,
  body: Record<string, unknown>,
  token: VaultToken,
  res: ServerResponse,
): Promise<void> {
  const isWrite = method === 'POST' || method === 'PUT';
  const isList = method === 'GET' && ['true', '1'].includes(query.get('list') ?? '');
  const unsupported = (): VaultError => new VaultError(405, ['1 error occurred:\n\t* unsupported operation\n\n']);
  let m: RegExpMatchArray | null;

  if (sub === 'roles' || sub === 'roles/') {
    if (!isList) throw unsupported();
    if (mount.roles.size === 0) throw new VaultError(404, []);
    sendJson(res, 200, envelope({ keys: [...mount.roles.keys()].sort() }));
    return;
  }
  if ((m = sub.match(/^roles\/([^/]+)$/))) {
    const name = m[1]!;
    if (isWrite || method === 'PATCH') {
      const base = method === 'PATCH' ? mount.roles.get(name) : undefined;
      if (method === 'PATCH' && !base) throw new VaultError(404, []);
      const role = roleFromInput(body as PkiRoleInput, base ?? DEFAULT_ROLE);
      mount.roles.set(name, role);
      sendJson(res, 200, envelope(roleToData(role)));
      return;
    }
    if (method === 'DELETE') {
      mount.roles.delete(name);
      res.writeHead(204).end();
      return;
    }
    if (method === 'GET') {
      const r = mount.roles.get(name);
      if (!r) throw new VaultError(404, []);
      sendJson(res, 200, envelope(roleToData(r)));
      return;
    }
    throw unsupported();
  }
  if ((m = sub.match(/^(?:issuer\/[^/]+\/)?(sign|issue)\/([^/]+)$/))) {
    if (!isWrite) throw unsupported();
    const roleName = m[2]!;
    const role = mount.roles.get(roleName);
    if (!role) throw userError(`unknown role: ${roleName}`);
    let result: LeafResult;
    if (m[1] === 'sign') {
      const csr = await parseCsr(body.csr);
      result = await signLeaf(state, { mount, roleName, role, params: body, token, publicKey: csr.csr.publicKey, csr });
    } else {
      if (role.key_type === 'any') throw userError('role key type "any" not allowed for issuing certificates, only signing');
      const kt: KeyAlg = role.key_type === 'ec' ? 'ec' : 'rsa';
      const keys = await generateKeyPair(kt, kt === 'rsa' ? Math.max(2048, role.key_bits) : 2048);
      result = await signLeaf(state, { mount, roleName, role, params: body, token, publicKey: keys.publicKey });
      const pkcs8 = body.private_key_format === 'pkcs8';
      result.data.private_key = await privateKeyPem(keys.privateKey, pkcs8 ? 'pkcs8' : 'traditional');
      result.data.private_key_type = kt;
    }
    sendJson(
      res,
      200,
      envelope(result.data, { warnings: result.warnings, leaseDuration: result.leaseDuration, leaseId: result.leaseId }),
    );
    return;
  }
  if ((m = sub.match(/^(?:issuer\/[^/]+\/)?sign-verbatim(?:\/([^/]+))?$/))) {
    if (!isWrite) throw unsupported();
    let role: PkiRole = { ...DEFAULT_ROLE, key_type: 'any' };
    if (m[1]) {
      const r = mount.roles.get(m[1]);
      if (!r) throw userError(`unknown role: ${m[1]}`);
      role = { ...DEFAULT_ROLE, key_type: 'any', ttl: r.ttl, max_ttl: r.max_ttl, generate_lease: r.generate_lease, no_store: r.no_store, not_before_duration: r.not_before_duration };
    }
    const csr = await parseCsr(body.csr);
    const bc = csr.csr.getExtension('2.5.29.19');
    if (bc instanceof x509.BasicConstraintsExtension && bc.ca) throw userError('refusing to sign CSR with CA flag set; use sign-intermediate');
    const result = await signLeaf(state, { mount, roleName: m[1], role, params: body, token, publicKey: csr.csr.publicKey, csr, verbatim: true });
    sendJson(res, 200, envelope(result.data, { warnings: result.warnings }));
    return;
  }
  if (sub === 'root/sign-intermediate' || /^issuer\/[^/]+\/sign-intermediate$/.test(sub)) {
    if (!isWrite) throw unsupported();
    const result = await signIntermediate(state, mount, body);
    sendJson(res, 200, envelope(result.data, { warnings: result.warnings }));
    return;
  }
  if ((m = sub.match(/^(?:intermediate\/generate|issuers\/generate\/intermediate)\/([^/]+)$/))) {
    if (!isWrite) throw unsupported();
    sendJson(res, 200, envelope(await generateCa(state, mount, 'intermediate', m[1]!, body)));
    return;
  }
  if ((m = sub.match(/^(?:root\/generate|issuers\/generate\/root)\/([^/]+)$/))) {
    if (!isWrite) throw unsupported();
    sendJson(res, 200, envelope(await generateCa(state, mount, 'root', m[1]!, body)));
    return;
  }
  if (sub === 'intermediate/set-signed') {
    if (!isWrite) throw unsupported();
    sendJson(res, 200, envelope(await setSigned(mount, body)));
    return;
  }
  if ((m = sub.match(/^issuer\/([^/]+)$/))) {
    if (!['default', mount.issuerId].includes(m[1]!)) throw userError(`unable to find PKI issuer for reference: ${m[1]!}`);
    if (isWrite || method === 'PATCH') {
      const b = body.leaf_not_after_behavior;
      if (b !== undefined) {
        if (!['err', 'truncate', 'permit'].includes(String(b))) throw userError(`invalid value for leaf_not_after_behavior: ${String(b)}`);
        mount.leafNotAfterBehavior = b as PkiMountState['leafNotAfterBehavior'];
      }
    }
    const chain = await state.servedChain(mount);
    sendJson(
      res,
      200,
      envelope({ certificate: chain[0] ?? '', ca_chain: chain, issuer_id: mount.issuerId, issuer_name: '', key_id: mount.keyId, leaf_not_after_behavior: mount.leafNotAfterBehavior }),
    );
    return;
  }
  throw new VaultError(404, [`no handler for route "${mount.path}/${sub}". route entry not found.`]);
}

// ---------------------------------------------------------------------------------------------------------------
// Server

export async function startVaultStandin(opts: VaultStandinOptions = {}): Promise<VaultStandin> {
  const state = new VaultStandinState(opts);
  const keyType = opts.keyType ?? 'rsa';
  const now = Date.now();
  const rootMountName = opts.rootMount ?? 'pki';
  const rootMount = state.addPkiMount(rootMountName);
  rootMount.issuer = await makeSelfSignedCa(
    opts.rootCommonName ?? 'Vault Stand-in Root CA',
    keyType,
    new Date(now - 60_000),
    new Date(now + (opts.rootTtlSeconds ?? 10 * 365 * 86400) * 1000),
  );
  const intMountName = opts.intMount === undefined ? 'pki_int' : opts.intMount;
  if (intMountName) {
    const intMount = state.addPkiMount(intMountName);
    const intNotAfter = Math.min(now + (opts.intTtlSeconds ?? 5 * 365 * 86400) * 1000, rootMount.issuer.cert.notAfter.getTime());
    intMount.issuer = await makeIntermediateCa(
      opts.intCommonName ?? 'Vault Stand-in Intermediate CA',
      keyType,
      rootMount.issuer,
      new Date(now - 30_000),
      new Date(intNotAfter),
    );
    intMount.parents = [rootMount.issuer.pem];
  }

  let tlsCa: string | undefined;
  let server: HttpServer | HttpsServer;
  if (opts.tls) {
    const tls = await makeServerTls(['localhost'], ['127.0.0.1']);
    tlsCa = tls.caPem;
    server = createHttpsServer({ key: tls.keyPem, cert: tls.certPem });
  } else {
    server = createHttpServer();
  }
  const tracker = new SocketTracker(server, () => state.down);
  state.onDown = () => tracker.destroyAll();

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (state.down) {
      req.socket.destroy();
      return;
    }
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://standin.invalid');
      const method = (req.method ?? 'GET').toUpperCase();
      const ns = req.headers['x-vault-namespace'];
      const bearer = req.headers.authorization?.match(/^Bearer\s+(\S+)/i)?.[1];
      const headerToken = req.headers['x-vault-token'];
      const tokenId = (Array.isArray(headerToken) ? headerToken[0] : headerToken) ?? bearer;
      const rec: VaultRequestRecord = {
        method,
        path: url.pathname,
        query: url.search,
        namespace: Array.isArray(ns) ? ns[0] : ns,
        token: tokenId,
        time: Date.now(),
      };
      state.requests.push(rec);
      state.counts.set(url.pathname, (state.counts.get(url.pathname) ?? 0) + 1);
      try {
        const body = method === 'GET' || method === 'HEAD' ? {} : await parseVaultBody(req);
        if (Object.keys(body).length > 0) rec.body = body;
        if (state.delayMs > 0) await sleep(state.delayMs);
        if (state.down) {
          req.socket.destroy();
          return;
        }
        if (state.failWith500 > 0) {
          state.failWith500--;
          throw new VaultError(500, ['internal error']);
        }
        if (!url.pathname.startsWith('/v1/')) throw new VaultError(404, []);
        const rel = url.pathname.slice(4).replace(/\/+$/, '');
        await route(state, method, rel, url.searchParams, body, tokenId, res);
      } catch (e) {
        if (res.headersSent) {
          res.end();
          return;
        }
        const err = e instanceof VaultError ? e : new VaultError(500, [(e as Error).message]);
        sendJson(res, err.status, { errors: err.errors });
      }
    })();
  });

  const port = await listen(server, '127.0.0.1');
  const url = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  return {
    url,
    rootToken: state.rootToken,
    caPem: tlsCa,
    state,
    close: () => closeServer(server, tracker),
  };
}
