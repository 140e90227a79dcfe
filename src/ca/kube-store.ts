/**
 * Self-signed CA state shared by CA replicas through the Kubernetes Secret `istio-ca-secret` (type
 * `istio.io/ca-root`, keys ca-cert.pem, ca-key.pem, root-cert.pem), as istiod keeps it. Creation is
 * create-if-absent: on 409 AlreadyExists the winner's root is read and used, so replicas that start together end
 * with one root. Every later change is a replace carrying the resourceVersion that was read, so two replicas
 * never overwrite each other's rotation step.
 */
import type { CoreV1Api, KubeConfig, V1Secret } from '@kubernetes/client-node';
import { kubeClient, kubeClientIfLoaded } from '../kube/client.js';
import { watchWithBackoff } from '../kube/config.js';
import type { Logger } from '../log.js';
import { CaConfigError } from './errors.js';
import { CaStateConflictError, SELF_SIGNED_FILES, type CaStateStore, type StoredCaState } from './selfsigned.js';

export const CA_SECRET_NAME = 'istio-ca-secret';
export const CA_SECRET_TYPE = 'istio.io/ca-root';

/** HTTP status of a Kubernetes API failure, or undefined for transport errors. */
export function kubeStatusCode(error: unknown): number | undefined {
  const client = kubeClientIfLoaded();
  if (client && error instanceof client.ApiException) return error.code;
  const code = (error as { code?: unknown; statusCode?: unknown } | null)?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

/** The API server's own message (from the Status body) or the transport error's. */
export function kubeErrorMessage(error: unknown): string {
  const client = kubeClientIfLoaded();
  if (client && error instanceof client.ApiException) {
    const body: unknown = error.body;
    try {
      const parsed = (typeof body === 'string' ? JSON.parse(body) : body) as { message?: unknown };
      if (parsed && typeof parsed.message === 'string') return `${parsed.message} (HTTP ${error.code})`;
    } catch {
      // Not JSON: fall through to the generic text.
    }
    return `HTTP ${error.code}`;
  }
  return (error as Error)?.message ?? String(error);
}

function decode(secret: V1Secret, key: string): string | undefined {
  const value = secret.data?.[key];
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8');
}

const encode = (text: string): string => Buffer.from(text, 'utf8').toString('base64');

const OUR_KEYS: readonly string[] = Object.values(SELF_SIGNED_FILES);

export interface KubeSecretCaStoreOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name?: string;
  logger?: Logger;
}

export class KubeSecretCaStore implements CaStateStore {
  readonly description: string;
  readonly name: string;
  readonly namespace: string;
  private readonly api: CoreV1Api;
  /** The last Secret read or written, so a replace keeps keys that other tools put in it. */
  private lastSecret: V1Secret | undefined;

  constructor(private readonly options: KubeSecretCaStoreOptions) {
    this.name = options.name ?? CA_SECRET_NAME;
    this.namespace = options.namespace;
    this.description = `Secret ${this.namespace}/${this.name}`;
    this.api = options.kubeConfig.makeApiClient(kubeClient().CoreV1Api);
  }

  entry(name: string): string {
    return `${name} in ${this.description}`;
  }

  private failure(action: string, error: unknown): CaConfigError {
    const status = kubeStatusCode(error);
    const hint =
      status === 403
        ? ` (grant the CA's service account get, create and update on secrets in namespace ${this.namespace})`
        : status === 404 && action === 'create'
          ? ` (namespace ${this.namespace} does not exist: create it or set --ca-namespace)`
          : status === undefined
            ? ' (is the Kubernetes API server reachable? check --kubeconfig / KUBECONFIG)'
            : '';
    return new CaConfigError(`cannot ${action} ${this.description}: ${kubeErrorMessage(error)}${hint}`, { cause: error });
  }

  private stateFrom(secret: V1Secret): StoredCaState {
    const certPem = decode(secret, SELF_SIGNED_FILES.cert);
    const keyPem = decode(secret, SELF_SIGNED_FILES.key);
    const rootsPem = decode(secret, SELF_SIGNED_FILES.roots) || certPem;
    const missing = [
      [SELF_SIGNED_FILES.cert, certPem],
      [SELF_SIGNED_FILES.key, keyPem],
    ]
      .filter(([, v]) => !v)
      .map(([k]) => k);
    if (missing.length > 0 || !certPem || !keyPem || !rootsPem) {
      throw new CaConfigError(
        `${this.description} exists but lacks ${missing.join(' and ')}; fix or delete it (deleting makes a new root: every workload will then need new certificates)`,
      );
    }
    const state: StoredCaState = { certPem, keyPem, rootsPem };
    const nextCert = decode(secret, SELF_SIGNED_FILES.nextCert);
    const nextKey = decode(secret, SELF_SIGNED_FILES.nextKey);
    if (nextCert && nextKey) {
      state.next = { certPem: nextCert, keyPem: nextKey };
      const rotation = decode(secret, SELF_SIGNED_FILES.rotation);
      if (rotation) {
        try {
          const at = Date.parse(String((JSON.parse(rotation) as { nextPublishedAt?: unknown }).nextPublishedAt));
          if (Number.isFinite(at)) state.nextPublishedAt = at;
        } catch {
          // Unreadable: treated as not yet recorded, which restarts the overlap (the safe direction).
        }
      }
    }
    return state;
  }

  private secretFor(state: StoredCaState, base: V1Secret | undefined): V1Secret {
    const data: Record<string, string> = {};
    for (const [key, value] of Object.entries(base?.data ?? {})) if (!OUR_KEYS.includes(key)) data[key] = value;
    data[SELF_SIGNED_FILES.cert] = encode(state.certPem);
    data[SELF_SIGNED_FILES.key] = encode(state.keyPem);
    data[SELF_SIGNED_FILES.roots] = encode(state.rootsPem);
    if (state.next) {
      data[SELF_SIGNED_FILES.nextCert] = encode(state.next.certPem);
      data[SELF_SIGNED_FILES.nextKey] = encode(state.next.keyPem);
      if (state.nextPublishedAt !== undefined) {
        data[SELF_SIGNED_FILES.rotation] = encode(JSON.stringify({ nextPublishedAt: new Date(state.nextPublishedAt).toISOString() }));
      }
    }
    return {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: {
        ...(base?.metadata ?? {}),
        name: this.name,
        namespace: this.namespace,
        ...(base?.metadata?.resourceVersion ? { resourceVersion: base.metadata.resourceVersion } : {}),
      },
      type: base?.type ?? CA_SECRET_TYPE,
      data,
    };
  }

  private remember(secret: V1Secret): { state: StoredCaState; version: string } {
    this.lastSecret = secret;
    return { state: this.stateFrom(secret), version: secret.metadata?.resourceVersion ?? '' };
  }

  async load(): Promise<{ state: StoredCaState; version: string } | null> {
    try {
      return this.remember(await this.api.readNamespacedSecret({ name: this.name, namespace: this.namespace }));
    } catch (error) {
      if (error instanceof CaConfigError) throw error;
      if (kubeStatusCode(error) === 404) return null;
      throw this.failure('read', error);
    }
  }

  async create(state: StoredCaState): Promise<{ state: StoredCaState; version: string; created: boolean }> {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const created = await this.api.createNamespacedSecret({ namespace: this.namespace, body: this.secretFor(state, undefined) });
        this.options.logger?.info({ secret: this.description }, 'stored the self-signed root in the Kubernetes Secret');
        return { ...this.remember(created), created: true };
      } catch (error) {
        if (kubeStatusCode(error) !== 409) throw this.failure('create', error);
      }
      // Another replica created it first: use theirs.
      const winner = await this.load();
      if (winner) {
        this.options.logger?.info({ secret: this.description }, 'another CA replica created the root first; using it');
        return { ...winner, created: false };
      }
    }
    throw new CaConfigError(`cannot create ${this.description}: it keeps appearing and disappearing`);
  }

  async update(state: StoredCaState, version: string): Promise<{ state: StoredCaState; version: string }> {
    const base = this.lastSecret?.metadata?.resourceVersion === version ? this.lastSecret : undefined;
    const body = this.secretFor(state, base);
    body.metadata = { ...body.metadata, resourceVersion: version };
    try {
      return this.remember(await this.api.replaceNamespacedSecret({ name: this.name, namespace: this.namespace, body }));
    } catch (error) {
      const status = kubeStatusCode(error);
      if (status === 409 || status === 404) throw new CaStateConflictError(`${this.description} changed since it was read (${kubeErrorMessage(error)})`);
      throw this.failure('update', error);
    }
  }

  /** Follows the Secret with a watch, re-established with backoff whenever the stream ends. */
  watch(onChange: () => void): () => void {
    const { Watch } = kubeClient();
    return watchWithBackoff(
      new Watch(this.options.kubeConfig),
      `/api/v1/namespaces/${encodeURIComponent(this.namespace)}/secrets`,
      () => ({ fieldSelector: `metadata.name=${this.name}` }),
      (type) => {
        if (type !== 'BOOKMARK') onChange();
      },
    );
  }
}
