/**
 * Root distribution: keeps ConfigMap `istio-ca-root-cert` (key `root-cert.pem`, label `istio.io/config=true`)
 * holding the CA's trust bundle in every namespace, as istiod's namespace controller does. Watches on namespaces
 * (a new namespace gets the ConfigMap at once) and on the ConfigMaps themselves (an edited or deleted one is
 * repaired), a trust-bundle change rewrites them all, and a periodic resync covers anything a watch missed.
 */
import type { CoreV1Api, KubeConfig, V1ConfigMap, Watch } from '@kubernetes/client-node';
import { kubeClient } from '../kube/client.js';
import type { Logger } from '../log.js';
import { followResumable } from '../kube/config.js';
import { kubeErrorMessage, kubeStatusCode } from './kube-store.js';
import { CoalescingRunner } from '../util/coalescing-runner.js';

export const ROOT_CONFIGMAP_NAME = 'istio-ca-root-cert';
export const ROOT_CONFIGMAP_KEY = 'root-cert.pem';
export const ROOT_CONFIGMAP_LABELS: Readonly<Record<string, string>> = { 'istio.io/config': 'true' };

/** What the controller needs from a signer: the bundle and a change signal. */
export interface TrustBundleSource {
  trustBundlePem(): string;
  onChange(listener: () => void): () => void;
}

export interface RootDistributionOptions {
  kubeConfig: KubeConfig;
  bundle: TrustBundleSource;
  logger: Logger;
  /** Full relist and repair (default 5 minutes). */
  resyncIntervalMs?: number;
}

export interface RootDistribution {
  /** Resolves after the first pass over all namespaces (or rejects when it could not be made). */
  ready: Promise<void>;
  /** Reconciles every namespace now. */
  syncAll(): Promise<void>;
  close(): Promise<void>;
}

interface WatchedObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string> };
  status?: { phase?: string };
  data?: Record<string, string>;
}

function isCurrent(configMap: WatchedObject | V1ConfigMap, desired: string): boolean {
  if (configMap.data?.[ROOT_CONFIGMAP_KEY] !== desired) return false;
  return Object.entries(ROOT_CONFIGMAP_LABELS).every(([k, v]) => configMap.metadata?.labels?.[k] === v);
}

class RootDistributionController implements RootDistribution {
  readonly ready: Promise<void>;
  private readonly api: CoreV1Api;
  private readonly watcher: Watch;
  private readonly passes = new CoalescingRunner<string>((key) => this.reconcileOnce(key), () => this.closed);
  private readonly namespaces = new Set<string>();
  private readonly stops: (() => void)[] = [];
  private resyncTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private lastErrorLogged = new Map<string, string>();

  constructor(private readonly options: RootDistributionOptions) {
    const { CoreV1Api, Watch } = kubeClient();
    this.api = options.kubeConfig.makeApiClient(CoreV1Api);
    this.watcher = new Watch(options.kubeConfig);
    this.stops.push(options.bundle.onChange(() => void this.syncAll()));
    this.stops.push(this.follow('/api/v1/namespaces', {}, (type, obj) => this.onNamespace(type, obj)));
    this.stops.push(this.follow('/api/v1/configmaps', { fieldSelector: `metadata.name=${ROOT_CONFIGMAP_NAME}` }, (type, obj) => this.onConfigMap(type, obj)));
    this.ready = this.initialSync();
    this.ready.catch(() => undefined);
    this.resyncTimer = setInterval(() => void this.syncAll().catch(() => undefined), options.resyncIntervalMs ?? 300_000);
    this.resyncTimer.unref();
  }

  private async initialSync(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.syncAll();
        this.options.logger.info({ namespaces: this.namespaces.size, configMap: ROOT_CONFIGMAP_NAME }, 'root distribution: trust bundle published in every namespace');
        return;
      } catch (error) {
        if (this.closed) return;
        if (attempt === 0) this.options.logger.warn({ err: kubeErrorMessage(error) }, 'root distribution: cannot list namespaces yet; retrying');
        await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt, 30_000)).unref());
      }
    }
  }

  async syncAll(): Promise<void> {
    if (this.closed) return;
    const list = await this.api.listNamespace();
    for (const ns of list.items) {
      const name = ns.metadata?.name;
      if (!name) continue;
      if (ns.status?.phase === 'Terminating') {
        this.namespaces.delete(name);
        continue;
      }
      this.namespaces.add(name);
    }
    await Promise.all([...this.namespaces].map((ns) => this.reconcile(ns)));
  }

  private onNamespace(type: string, obj: WatchedObject): void {
    const name = obj.metadata?.name;
    if (!name) return;
    if (type === 'DELETED' || obj.status?.phase === 'Terminating') {
      this.namespaces.delete(name);
      return;
    }
    if (type === 'ADDED' || type === 'MODIFIED') {
      const known = this.namespaces.has(name);
      this.namespaces.add(name);
      if (!known) void this.reconcile(name);
    }
  }

  private onConfigMap(type: string, obj: WatchedObject): void {
    const ns = obj.metadata?.namespace;
    if (!ns || obj.metadata?.name !== ROOT_CONFIGMAP_NAME || !this.namespaces.has(ns)) return;
    if (type === 'DELETED' || ((type === 'ADDED' || type === 'MODIFIED') && !isCurrent(obj, this.options.bundle.trustBundlePem()))) {
      void this.reconcile(ns);
    }
  }

  /** One reconcile per namespace at a time; a request during one causes one more pass. */
  reconcile(ns: string): Promise<void> {
    return this.passes.run(ns);
  }

  private async reconcileOnce(ns: string): Promise<void> {
    for (let attempt = 0; attempt < 5 && !this.closed && this.namespaces.has(ns); attempt++) {
      const desired = this.options.bundle.trustBundlePem();
      try {
        let existing: V1ConfigMap | undefined;
        try {
          existing = await this.api.readNamespacedConfigMap({ name: ROOT_CONFIGMAP_NAME, namespace: ns });
        } catch (error) {
          if (kubeStatusCode(error) !== 404) throw error;
        }
        if (existing && isCurrent(existing, desired)) return;
        const body: V1ConfigMap = {
          apiVersion: 'v1',
          kind: 'ConfigMap',
          metadata: {
            name: ROOT_CONFIGMAP_NAME,
            namespace: ns,
            labels: { ...(existing?.metadata?.labels ?? {}), ...ROOT_CONFIGMAP_LABELS },
            ...(existing?.metadata?.resourceVersion ? { resourceVersion: existing.metadata.resourceVersion } : {}),
          },
          data: { [ROOT_CONFIGMAP_KEY]: desired },
        };
        if (existing) {
          await this.api.replaceNamespacedConfigMap({ name: ROOT_CONFIGMAP_NAME, namespace: ns, body });
          this.options.logger.info({ namespace: ns }, `root distribution: repaired ConfigMap ${ROOT_CONFIGMAP_NAME}`);
        } else {
          await this.api.createNamespacedConfigMap({ namespace: ns, body });
          this.options.logger.debug({ namespace: ns }, `root distribution: created ConfigMap ${ROOT_CONFIGMAP_NAME}`);
        }
        this.lastErrorLogged.delete(ns);
        return;
      } catch (error) {
        const status = kubeStatusCode(error);
        if (status === 409) continue; // Raced with someone else's write: read again.
        if (status === 404 || (status === 403 && /terminat/i.test(kubeErrorMessage(error)))) {
          // The namespace is gone or going away.
          this.namespaces.delete(ns);
          return;
        }
        const message = kubeErrorMessage(error);
        if (this.lastErrorLogged.get(ns) !== message) {
          this.lastErrorLogged.set(ns, message);
          this.options.logger.error({ namespace: ns, err: message }, `root distribution: cannot write ConfigMap ${ROOT_CONFIGMAP_NAME}; will retry at the next resync`);
        }
        return;
      }
    }
  }

  /** A watch that resumes from the last seen resourceVersion, and relists everything when that is too old. */
  private follow(path: string, query: Record<string, string>, onEvent: (type: string, obj: WatchedObject) => void): () => void {
    return followResumable(this.watcher, path, query, (type, obj) => onEvent(type, obj as WatchedObject), () => void this.syncAll().catch(() => undefined));
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    for (const stop of this.stops.splice(0)) stop();
    await this.passes.idle();
  }
}

/** Starts the controller. Call `close()` on shutdown. */
export function startRootDistribution(options: RootDistributionOptions): RootDistribution {
  return new RootDistributionController(options);
}
