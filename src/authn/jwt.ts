/**
 * JWT / OIDC authentication (JWT_RULE): tokens from a trusted issuer are verified locally with `jose` against the
 * issuer's JWKS, from a URL (cached, refetched on an unknown `kid`) or a file (re-read when it changes).
 * The identity comes from `sub` = system:serviceaccount:<ns>:<sa>, or from the Kubernetes `kubernetes.io` claims.
 * Like Istio's verifier (go-oidc treats a missing `exp` as long expired), a token must carry `exp`; its lifetime
 * is also bounded (max_token_lifetime, default 366 days: Kubernetes' own "extended" projected tokens live exactly
 * 365 days), so a leaked token minted to live for decades is not a permanent credential.
 *
 * A verified token's caller is remembered by the token's SHA-256 (TokenCache) until the token's `exp`, for at
 * most 60 s: an agent renewing with the same token costs one signature verification a minute, not one per
 * request. Refusals are never remembered. A JWKS file is still checked for changes (at most once a second on the
 * remembered path) and a change forgets every remembered token, so a key removed from the file stops being
 * accepted as before.
 */
import { promises as fs } from 'node:fs';
import type { JSONWebKeySet, JWTPayload, JWTVerifyGetKey } from 'jose';
import { ConfigError, parseDurationSeconds } from '../config/env.js';
import { WorkloadId } from '../pki/index.js';
import { TokenCache } from './token-cache.js';
import {
  audienceMismatch,
  extractBearerToken,
  isServiceAccountUsername,
  parseServiceAccountUsername,
  type AuthOutcome,
  type AuthRequest,
  type Authenticator,
  type Caller,
} from './types.js';

type Jose = typeof import('jose');
let jose: Jose | undefined;

/** jose is loaded when the first JWT authenticator is made: a CA that has none (TokenReview only) never loads it. */
async function loadJose(): Promise<Jose> {
  jose ??= await import('jose');
  return jose;
}

/** jose, in code that only runs once an authenticator exists (so after loadJose). */
function joseLoaded(): Jose {
  if (!jose) throw new Error('jose is used before a JWT authenticator was made');
  return jose;
}

/**
 * The longest lifetime (exp - iat, and exp - now) a JWT may have unless its rule says otherwise. Kubernetes
 * extends kubelet's projected tokens to exactly 365 days (--service-account-extend-token-expiration, on by
 * default), and a cluster's OIDC issuer is a common JWT_RULE; one day of slack keeps those working.
 */
const DEFAULT_JWT_MAX_TOKEN_LIFETIME_SECONDS = 366 * 86400;
/** Leeway for exp/nbf/iat, as for the clock check jose does. */
const CLOCK_TOLERANCE_SECONDS = 5;
/** The longest a verified token is remembered (never past its exp): the TokenReview cache's default. */
export const JWT_CACHE_TTL_SECONDS = 60;
/** How often, at most, a JWKS file is checked for changes when every token is answered from the cache. */
const KEY_FILE_CHECK_MS = 1000;

export interface JwtRule {
  issuer: string;
  /** Exactly one of jwksUri / jwksFile. */
  jwksUri?: string;
  jwksFile?: string;
  /** Accepted `aud` values; empty means the CA's TOKEN_AUDIENCES. */
  audiences: string[];
  /** max_token_lifetime: tokens living longer (exp - iat, or exp - now) are refused; default 366 days. */
  maxTokenLifetimeSeconds?: number;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses JWT_RULE: one JSON object or a list of them, each
 * `{"issuer": "...", "jwks_uri": "https://..." | "jwks_file": "/path", "audiences": ["..."], "max_token_lifetime": "24h"}`.
 */
export function parseJwtRules(text: string, sourceName = 'JWT_RULE'): JwtRule[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`invalid ${sourceName}: not JSON (${(error as Error).message})`);
  }
  const items = Array.isArray(parsed) ? parsed : [parsed];
  return items.map((item, index) => {
    const where = items.length > 1 ? `${sourceName}[${index}]` : sourceName;
    if (!isRecord(item)) throw new ConfigError(`invalid ${where}: expected a JSON object with issuer, jwks_uri or jwks_file, audiences`);
    const issuer = item.issuer;
    if (typeof issuer !== 'string' || issuer === '') throw new ConfigError(`invalid ${where}: "issuer" must be a non-empty string`);
    const jwksUri = item.jwks_uri ?? item.jwksUri;
    const jwksFile = item.jwks_file ?? item.jwksFile;
    if (jwksUri !== undefined && typeof jwksUri !== 'string') throw new ConfigError(`invalid ${where}: "jwks_uri" must be a string`);
    if (jwksFile !== undefined && typeof jwksFile !== 'string') throw new ConfigError(`invalid ${where}: "jwks_file" must be a string`);
    if ((jwksUri === undefined) === (jwksFile === undefined)) {
      throw new ConfigError(`invalid ${where}: give exactly one of "jwks_uri" or "jwks_file" for issuer ${issuer}`);
    }
    if (jwksUri !== undefined) {
      let url: URL;
      try {
        url = new URL(jwksUri);
      } catch {
        throw new ConfigError(`invalid ${where}: "jwks_uri" ${jwksUri} is not a URL`);
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ConfigError(`invalid ${where}: "jwks_uri" must be http(s)`);
    }
    const audiences = item.audiences ?? [];
    if (!Array.isArray(audiences) || !audiences.every((a): a is string => typeof a === 'string')) {
      throw new ConfigError(`invalid ${where}: "audiences" must be a list of strings`);
    }
    const lifetime = item.max_token_lifetime ?? item.maxTokenLifetime;
    let maxTokenLifetimeSeconds: number | undefined;
    if (lifetime !== undefined) {
      const seconds = typeof lifetime === 'string' ? parseDurationSeconds(lifetime) : null;
      if (seconds === null || seconds < 60) {
        throw new ConfigError(`invalid ${where}: "max_token_lifetime" must be a duration of at least 60s such as "12h" or "366d"`);
      }
      maxTokenLifetimeSeconds = Math.floor(seconds);
    }
    return {
      issuer,
      ...(jwksUri !== undefined ? { jwksUri } : {}),
      ...(jwksFile !== undefined ? { jwksFile } : {}),
      audiences,
      ...(maxTokenLifetimeSeconds !== undefined ? { maxTokenLifetimeSeconds } : {}),
    };
  });
}

/** A JWKS file, re-read when its modification time changes so a rotated key is picked up without a restart. */
class FileKeySet {
  private keySet: JWTVerifyGetKey;
  private mtimeMs: number;

  private constructor(
    private readonly file: string,
    keySet: JWTVerifyGetKey,
    mtimeMs: number,
    private readonly onChange: () => void,
  ) {
    this.keySet = keySet;
    this.mtimeMs = mtimeMs;
  }

  /** `onChange` runs whenever a changed file has been read again. */
  static async open(file: string, onChange: () => void = () => {}): Promise<FileKeySet> {
    const { keySet, mtimeMs } = await FileKeySet.read(file);
    return new FileKeySet(file, keySet, mtimeMs, onChange);
  }

  private static async read(file: string): Promise<{ keySet: JWTVerifyGetKey; mtimeMs: number }> {
    let text: string;
    let mtimeMs: number;
    try {
      mtimeMs = (await fs.stat(file)).mtimeMs;
      text = await fs.readFile(file, 'utf8');
    } catch (error) {
      throw new ConfigError(`cannot read the JWKS file ${file}: ${(error as Error).message}`);
    }
    let jwks: unknown;
    try {
      jwks = JSON.parse(text);
    } catch {
      throw new ConfigError(`the JWKS file ${file} is not JSON`);
    }
    if (!isRecord(jwks) || !Array.isArray(jwks.keys)) throw new ConfigError(`the JWKS file ${file} has no "keys" list`);
    return { keySet: (await loadJose()).createLocalJWKSet(jwks as unknown as JSONWebKeySet), mtimeMs };
  }

  /** Reads the file again if it changed since the last read. */
  async refresh(): Promise<void> {
    try {
      const { mtimeMs } = await fs.stat(this.file);
      if (mtimeMs !== this.mtimeMs) {
        ({ keySet: this.keySet, mtimeMs: this.mtimeMs } = await FileKeySet.read(this.file));
        this.onChange();
      }
    } catch {
      // Keep verifying with the last good key set while the file is being replaced or is broken.
    }
  }

  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    await this.refresh();
    return this.keySet(header, token);
  };
}

interface PreparedRule {
  rule: JwtRule;
  getKey: JWTVerifyGetKey;
  audiences: string[];
}

export interface JwtAuthenticatorOptions {
  rules: readonly JwtRule[];
  /** TOKEN_AUDIENCES, used for rules without their own audiences. */
  defaultAudiences: readonly string[];
  trustDomain: string;
  /** The cluster a JWT caller's pod is looked up in (for node impersonation). */
  localClusterId: string;
  now?: () => number;
  /** How long a verified token is remembered at most (default JWT_CACHE_TTL_SECONDS; 0: never). */
  cacheTtlSeconds?: number;
  /** Called for each token answered from the cache (meshca_jwt_cache_hits_total). */
  onCacheHit?: () => void;
}

/** Whether a jose failure is the token's fault (denied) rather than the key source's (unavailable). */
function isTokenFault(error: unknown): boolean {
  return (
    error instanceof joseLoaded().errors.JWTExpired ||
    error instanceof joseLoaded().errors.JWTClaimValidationFailed ||
    error instanceof joseLoaded().errors.JWSSignatureVerificationFailed ||
    error instanceof joseLoaded().errors.JWSInvalid ||
    error instanceof joseLoaded().errors.JWTInvalid ||
    error instanceof joseLoaded().errors.JWKSNoMatchingKey ||
    error instanceof joseLoaded().errors.JWKSMultipleMatchingKeys ||
    error instanceof joseLoaded().errors.JOSEAlgNotAllowed ||
    error instanceof joseLoaded().errors.JOSENotSupported
  );
}

function describeJoseError(error: unknown): string {
  if (error instanceof joseLoaded().errors.JWTExpired) return 'the token has expired';
  if (error instanceof joseLoaded().errors.JWTClaimValidationFailed) return `claim "${error.claim}" is not acceptable: ${error.message}`;
  if (error instanceof joseLoaded().errors.JWKSNoMatchingKey) return "no key of the issuer's JWKS matches the token";
  if (error instanceof joseLoaded().errors.JWSSignatureVerificationFailed) return 'the token signature does not verify';
  return (error as Error).message;
}

function kubernetesClaims(payload: JWTPayload): { namespace?: string; serviceAccount?: string; podName?: string; podUid?: string } {
  const claims = payload['kubernetes.io'];
  if (!isRecord(claims)) return {};
  const out: { namespace?: string; serviceAccount?: string; podName?: string; podUid?: string } = {};
  if (typeof claims.namespace === 'string') out.namespace = claims.namespace;
  if (isRecord(claims.serviceaccount) && typeof claims.serviceaccount.name === 'string') out.serviceAccount = claims.serviceaccount.name;
  if (isRecord(claims.pod)) {
    if (typeof claims.pod.name === 'string') out.podName = claims.pod.name;
    if (typeof claims.pod.uid === 'string') out.podUid = claims.pod.uid;
  }
  return out;
}

/** A span of seconds for a message: whole days when it is long, seconds otherwise. */
function describeSpan(seconds: number): string {
  return seconds >= 86400 ? `${Math.floor(seconds / 86400)}d` : `${Math.floor(seconds)}s`;
}

export class JwtAuthenticator implements Authenticator {
  readonly name = 'jwt' as const;
  private readonly now: () => number;
  private readonly cache: TokenCache<Extract<AuthOutcome, { kind: 'ok' }>>;
  private readonly keyFiles: FileKeySet[] = [];
  private keyFilesCheckedAt = -Infinity;

  private constructor(
    private readonly rules: PreparedRule[],
    private readonly options: JwtAuthenticatorOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.cache = new TokenCache({ ttlMs: (options.cacheTtlSeconds ?? JWT_CACHE_TTL_SECONDS) * 1000, now: this.now });
  }

  /** Opens every rule's key source; a missing or broken JWKS file is a ConfigError at start-up. */
  static async create(options: JwtAuthenticatorOptions): Promise<JwtAuthenticator> {
    await loadJose();
    const prepared: PreparedRule[] = [];
    const keyFiles: FileKeySet[] = [];
    // A changed key file forgets every remembered token: it may have been verified with a key now gone.
    const forget = (): void => authenticator.cache.clear();
    for (const rule of options.rules) {
      let getKey: JWTVerifyGetKey;
      if (rule.jwksFile) {
        const keySet = await FileKeySet.open(rule.jwksFile, forget);
        keyFiles.push(keySet);
        getKey = keySet.getKey;
      } else {
        getKey = (await loadJose()).createRemoteJWKSet(new URL(rule.jwksUri!), { timeoutDuration: 5000, cooldownDuration: 30_000, cacheMaxAge: 600_000 });
      }
      prepared.push({ rule, getKey, audiences: rule.audiences.length > 0 ? rule.audiences : [...options.defaultAudiences] });
    }
    const authenticator = new JwtAuthenticator(prepared, options);
    authenticator.keyFiles.push(...keyFiles);
    return authenticator;
  }

  /** Verified tokens remembered (for tests and /debug). */
  get cacheSize(): number {
    return this.cache.size;
  }

  get issuers(): string[] {
    return this.rules.map((r) => r.rule.issuer);
  }

  async authenticate(request: AuthRequest): Promise<AuthOutcome> {
    const token = extractBearerToken(request.header('authorization'));
    if (!token) return { kind: 'skip', reason: 'no "authorization: Bearer <token>" header' };
    if (this.keyFiles.length > 0 && this.now() - this.keyFilesCheckedAt >= KEY_FILE_CHECK_MS) {
      this.keyFilesCheckedAt = this.now();
      for (const keyFile of this.keyFiles) await keyFile.refresh();
    }
    const key = TokenCache.keyOf(token);
    const cached = this.cache.get(key);
    if (cached) {
      this.options.onCacheHit?.();
      return cached;
    }
    const outcome = await this.verify(token);
    // Until the verified exp (jose accepts a few seconds past it; a later call simply verifies again).
    if (outcome.kind === 'ok') this.cache.set(key, outcome, outcome.expiresAtMs);
    return outcome.kind === 'ok' ? { kind: 'ok', caller: outcome.caller } : outcome;
  }

  private async verify(token: string): Promise<Exclude<AuthOutcome, { kind: 'ok' }> | { kind: 'ok'; caller: Caller; expiresAtMs: number }> {
    let unverified: JWTPayload;
    try {
      unverified = joseLoaded().decodeJwt(token);
    } catch {
      return { kind: 'denied', reason: 'the bearer token is not a JWT' };
    }
    const candidates = this.rules.filter((r) => r.rule.issuer === unverified.iss);
    if (candidates.length === 0) {
      const issuer = typeof unverified.iss === 'string' ? unverified.iss.slice(0, 200) : '(none)';
      return { kind: 'denied', reason: `issuer ${issuer} is not trusted (JWT_RULE trusts ${this.issuers.join(', ')})` };
    }
    let lastFailure: AuthOutcome = { kind: 'denied', reason: 'no rule accepted the token' };
    for (const candidate of candidates) {
      let payload: JWTPayload;
      try {
        ({ payload } = await joseLoaded().jwtVerify(token, candidate.getKey, {
          issuer: candidate.rule.issuer,
          audience: candidate.audiences,
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
          currentDate: new Date(this.now()),
        }));
      } catch (error) {
        // jose checks claims after the signature, so this aud is the issuer's.
        const reason =
          error instanceof joseLoaded().errors.JWTClaimValidationFailed && error.claim === 'aud'
            ? audienceMismatch(unverified.aud, candidate.audiences, candidate.rule.audiences.length > 0 ? `the "audiences" of JWT_RULE issuer ${candidate.rule.issuer}` : 'TOKEN_AUDIENCES')
            : describeJoseError(error);
        lastFailure = isTokenFault(error)
          ? { kind: 'denied', reason }
          : { kind: 'unavailable', reason: `could not get the signing keys of issuer ${candidate.rule.issuer}: ${reason}` };
        continue;
      }
      const lifetimeProblem = this.lifetimeProblem(payload, candidate.rule);
      if (lifetimeProblem) return { kind: 'denied', reason: lifetimeProblem };
      const outcome = this.callerFrom(payload);
      // lifetimeProblem refused a token without exp.
      return outcome.kind === 'ok' ? { ...outcome, expiresAtMs: payload.exp! * 1000 } : outcome;
    }
    return lastFailure;
  }

  /** Why a verified token lives too long, if it does: no exp at all, or a lifetime beyond the rule's bound. */
  private lifetimeProblem(payload: JWTPayload, rule: JwtRule): string | undefined {
    if (payload.exp === undefined) return 'the token has no exp claim; tokens that never expire are not accepted';
    // jose has checked exp (and iat, when present) are numbers and exp is not in the past.
    const max = rule.maxTokenLifetimeSeconds ?? DEFAULT_JWT_MAX_TOKEN_LIFETIME_SECONDS;
    const bound = `at most ${describeSpan(max)} is accepted for issuer ${rule.issuer} (max_token_lifetime in JWT_RULE)`;
    if (typeof payload.iat === 'number' && payload.exp - payload.iat > max + CLOCK_TOLERANCE_SECONDS) {
      return `the token's lifetime (exp - iat) is ${describeSpan(payload.exp - payload.iat)}; ${bound}`;
    }
    const remaining = payload.exp - this.now() / 1000;
    if (remaining > max + CLOCK_TOLERANCE_SECONDS) return `the token is still valid for ${describeSpan(remaining)} (exp - now); ${bound}`;
    return undefined;
  }

  private callerFrom(payload: JWTPayload): AuthOutcome {
    const subject = typeof payload.sub === 'string' ? payload.sub : undefined;
    const fromSubject = subject === undefined ? null : parseServiceAccountUsername(subject);
    if (subject !== undefined && !fromSubject && isServiceAccountUsername(subject)) {
      // Claims to be a service account but is not one a cluster could issue: never fall back to other claims.
      return { kind: 'denied', reason: `sub "${subject.slice(0, 100)}" is not system:serviceaccount:<namespace>:<service account> with valid Kubernetes names` };
    }
    const claims = kubernetesClaims(payload);
    if (
      fromSubject &&
      ((claims.namespace !== undefined && claims.namespace !== fromSubject.namespace) ||
        (claims.serviceAccount !== undefined && claims.serviceAccount !== fromSubject.serviceAccount))
    ) {
      return { kind: 'denied', reason: 'sub and the kubernetes.io claims name different service accounts' };
    }
    const namespace = fromSubject?.namespace ?? claims.namespace;
    const serviceAccount = fromSubject?.serviceAccount ?? claims.serviceAccount;
    if (!namespace || !serviceAccount) {
      return { kind: 'denied', reason: 'the token names no service account (sub is not system:serviceaccount:<ns>:<sa> and there are no kubernetes.io claims)' };
    }
    let identity: WorkloadId;
    try {
      identity = WorkloadId.of({ trustDomain: this.options.trustDomain, namespace, serviceAccount });
    } catch (error) {
      return { kind: 'denied', reason: `the kubernetes.io claims name no valid service account: ${(error as Error).message}` };
    }
    return {
      kind: 'ok',
      caller: {
        authenticator: this.name,
        identity,
        subject: typeof payload.sub === 'string' ? payload.sub : `system:serviceaccount:${namespace}:${serviceAccount}`,
        kubernetes: {
          clusterId: this.options.localClusterId,
          namespace,
          serviceAccount,
          ...(claims.podName ? { podName: claims.podName } : {}),
          ...(claims.podUid ? { podUid: claims.podUid } : {}),
        },
      },
    };
  }
}
