/**
 * A Vault session on top of node-vault: TLS trust (VAULT_TLS_ROOT_CERT), namespace, and authentication with a
 * token (VAULT_TOKEN or a token file) or Kubernetes auth (VAULT_AUTH_PATH, VAULT_ROLE, a service-account JWT file).
 * Kubernetes logins are renewed at 2/3 of the lease, and a 403 triggers one re-authentication and one retry,
 * because Vault answers an expired or revoked token with 403 and a fresh login is the cure.
 */
import { promises as fs } from 'node:fs';
import type nodeVault from 'node-vault';
import type { Logger } from '../../../log.js';
import { certificatesFromPem } from '../../../pki/index.js';
import { CaConfigError } from '../../errors.js';
import { MAX_TIMER_MS } from '../../../util/timers.js';

export type VaultAuthConfig =
  | { kind: 'token'; token?: string; tokenFile?: string }
  | { kind: 'kubernetes'; authPath: string; role: string; jwtFile: string };

export interface VaultSessionOptions {
  addr: string;
  namespace?: string;
  tlsRootCertFile?: string;
  auth: VaultAuthConfig;
  timeoutMs: number;
  logger: Logger;
}

/** A failed Vault call: HTTP status (undefined when Vault could not be reached) and Vault's error texts. */
export class VaultRequestError extends Error {
  constructor(
    readonly path: string,
    readonly status: number | undefined,
    readonly errors: readonly string[],
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'VaultRequestError';
  }

  /** Vault is down, sealed, or failing: worth retrying later, not the caller's fault. */
  get unavailable(): boolean {
    return this.status === undefined || this.status >= 500;
  }
}

interface ApiResponseErrorShape {
  message: string;
  response: { statusCode: number; body?: { errors?: unknown } };
}

function isApiResponseError(error: unknown): error is ApiResponseErrorShape {
  const response = (error as { response?: { statusCode?: unknown } } | null)?.response;
  return typeof response?.statusCode === 'number';
}

export function toVaultError(error: unknown, path: string): VaultRequestError {
  if (error instanceof VaultRequestError) return error;
  if (isApiResponseError(error)) {
    const status = error.response.statusCode;
    const raw = error.response.body?.errors;
    const errors = Array.isArray(raw) ? raw.map(String) : [];
    const text = errors.length > 0 ? errors.join('; ') : `HTTP ${status}`;
    return new VaultRequestError(path, status, errors, `${text} (HTTP ${status} from ${path})`, { cause: error });
  }
  const code = (error as { code?: unknown } | null)?.code;
  const detail = (error as Error)?.message ?? String(error);
  return new VaultRequestError(path, undefined, [], `${detail}${typeof code === 'string' && !detail.includes(code) ? ` (${code})` : ''}`, { cause: error });
}

/** `auth/<mount>/login` → `<mount>`; node-vault's kubernetesLogin needs the mount, else it posts to `auth//login`. */
export function kubernetesAuthMount(authPath: string): string | null {
  const match = /^\/?auth\/(.+?)\/login\/?$/.exec(authPath.trim());
  return match ? match[1]! : null;
}

async function readSecretFile(file: string, what: string, fix: string): Promise<string> {
  let text: string;
  try {
    text = (await fs.readFile(file, 'utf8')).trim();
  } catch (error) {
    throw new CaConfigError(`cannot read ${what} ${file}: ${(error as Error).message} (${fix})`, { cause: error });
  }
  if (!text) throw new CaConfigError(`${what} ${file} is empty (${fix})`);
  return text;
}

export class VaultSession {
  private readonly client: nodeVault.client;
  private readonly loginClient: nodeVault.client;
  private reauthInFlight: Promise<void> | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    private readonly options: VaultSessionOptions,
    caPem: string | undefined,
    makeClient: typeof nodeVault,
  ) {
    const requestOptions = caPem ? { ca: caPem } : {};
    const base = {
      endpoint: options.addr,
      ...(options.namespace ? { namespace: options.namespace } : {}),
      requestOptions,
      rpDefaults: { timeout: options.timeoutMs },
      noCustomHTTPVerbs: true,
    };
    this.client = makeClient({ ...base, token: '' });
    // Logins go through a client without a token: a stale token must not ride along on the login call.
    this.loginClient = makeClient({ ...base, token: '' });
    this.client.token = '';
    this.loginClient.token = '';
  }

  /** Reads the TLS root and authenticates. Throws CaConfigError with one line on any start-up problem. */
  static async open(options: VaultSessionOptions): Promise<VaultSession> {
    let caPem: string | undefined;
    if (options.tlsRootCertFile) {
      caPem = await readSecretFile(options.tlsRootCertFile, 'the Vault TLS root certificate (VAULT_TLS_ROOT_CERT)', 'point VAULT_TLS_ROOT_CERT at a readable PEM file');
      let count = 0;
      try {
        count = certificatesFromPem(caPem).length;
      } catch {
        count = 0;
      }
      if (count === 0) throw new CaConfigError(`VAULT_TLS_ROOT_CERT ${options.tlsRootCertFile} holds no PEM certificate`);
    }
    // Imported here, not at the top: only a CA whose key source is Vault pays for loading node-vault (and axios).
    const { default: makeClient } = await import('node-vault');
    const session = new VaultSession(options, caPem, makeClient);
    try {
      await session.authenticate();
    } catch (error) {
      if (error instanceof CaConfigError) throw error;
      const failure = toVaultError(error, options.auth.kind === 'kubernetes' ? options.auth.authPath : 'token');
      throw new CaConfigError(`cannot log in to Vault at ${options.addr}: ${failure.message}${failure.status === undefined ? ' (check VAULT_ADDR and VAULT_TLS_ROOT_CERT)' : ''}`, {
        cause: error,
      });
    }
    return session;
  }

  get addr(): string {
    return this.options.addr;
  }

  private async authenticate(): Promise<void> {
    const auth = this.options.auth;
    if (auth.kind === 'token') {
      this.client.token = auth.tokenFile
        ? await readSecretFile(auth.tokenFile, 'the Vault token file', 'set --vault-token-file to a readable file holding the token')
        : (auth.token ?? '');
      return;
    }
    const jwt = await readSecretFile(auth.jwtFile, 'the service-account token for Vault Kubernetes auth', 'set --vault-jwt-file');
    const mount = kubernetesAuthMount(auth.authPath);
    if (!mount) throw new CaConfigError(`VAULT_AUTH_PATH=${auth.authPath} is not of the form auth/<mount>/login`);
    let response: unknown;
    try {
      response = await this.loginClient.kubernetesLogin({ mount_point: mount, role: auth.role, jwt });
    } catch (error) {
      throw toVaultError(error, auth.authPath);
    }
    const block = (response as { auth?: { client_token?: unknown; lease_duration?: unknown } } | null)?.auth;
    if (typeof block?.client_token !== 'string' || block.client_token === '') {
      throw new VaultRequestError(auth.authPath, 200, [], `Vault's login response at ${auth.authPath} holds no auth.client_token`);
    }
    this.client.token = block.client_token;
    const lease = typeof block.lease_duration === 'number' ? block.lease_duration : 0;
    this.options.logger.info({ vault: this.options.addr, authPath: auth.authPath, role: auth.role, leaseSeconds: lease }, 'logged in to Vault with Kubernetes auth');
    this.scheduleRelogin(lease > 0 ? (lease * 1000 * 2) / 3 : undefined);
  }

  private scheduleRelogin(afterMs: number | undefined): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    if (afterMs === undefined || this.closed) return;
    this.renewTimer = setTimeout(() => {
      void this.reauthenticate('the login lease is two-thirds through').catch((error: unknown) => {
        this.options.logger.warn({ vault: this.options.addr, err: (error as Error).message }, 'Vault re-login failed; retrying');
        this.scheduleRelogin(Math.min(30_000, Math.max(1000, afterMs / 4)));
      });
    }, Math.min(Math.max(afterMs, 1000), MAX_TIMER_MS));
    this.renewTimer.unref();
  }

  private canReauthenticate(): boolean {
    const auth = this.options.auth;
    return auth.kind === 'kubernetes' || auth.tokenFile !== undefined;
  }

  /** One re-authentication at a time; concurrent callers wait for the same one. */
  reauthenticate(reason: string): Promise<void> {
    if (!this.reauthInFlight) {
      this.options.logger.info({ vault: this.options.addr, reason }, 'authenticating to Vault again');
      this.reauthInFlight = this.authenticate().finally(() => {
        this.reauthInFlight = undefined;
      });
    }
    return this.reauthInFlight;
  }

  private async call<T>(path: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      const failure = toVaultError(error, path);
      if (failure.status !== 403 || !this.canReauthenticate() || this.closed) throw failure;
      try {
        await this.reauthenticate(`Vault answered 403 on ${path}`);
      } catch (loginError) {
        throw toVaultError(loginError, path);
      }
      try {
        return await run();
      } catch (retryError) {
        throw toVaultError(retryError, path);
      }
    }
  }

  /** GET /v1/<path>: a JSON envelope, or raw text for raw endpoints like `<mount>/ca_chain`. */
  read(path: string): Promise<unknown> {
    return this.call(path, () => this.client.read(path) as Promise<unknown>);
  }

  /** POST /v1/<path> with a JSON body; resolves with the envelope. */
  write(path: string, body: Record<string, unknown>): Promise<unknown> {
    return this.call(path, () => this.client.write(path, body) as Promise<unknown>);
  }

  close(): void {
    this.closed = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
  }
}
