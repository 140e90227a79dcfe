/**
 * Node impersonation (Istio's CA_TRUSTED_NODE_ACCOUNTS + `ImpersonatedIdentity` metadata, used by node agents such
 * as ztunnel): a trusted node agent may ask for another workload's certificate, but only for a service account that
 * has a pod on the agent's own node, so a compromised node cannot mint identities of workloads running elsewhere.
 */
import { WorkloadId } from '../pki/index.js';
import type { KubeClusters } from './kube-clusters.js';
import { TrustDomains } from './trust-domains.js';
import { kubePodSource, PodCache, podIsLive, whyPodIsNotLive, type Clock, type PodSource } from './pod-cache.js';
import type { Caller } from './types.js';

export interface NodeAccount {
  namespace: string;
  serviceAccount: string;
}

export type ImpersonationVerdict =
  /** `migratedFrom`: the identity asked for, when it was in a trust-domain alias and `identity` is its move to ours. */
  | { kind: 'ok'; identity: WorkloadId; node: string; migratedFrom?: string }
  | { kind: 'denied'; reason: string }
  | { kind: 'unavailable'; reason: string };

export interface NodeImpersonationOptions {
  clusters: KubeClusters;
  /** CA_TRUSTED_NODE_ACCOUNTS. */
  trustedNodeAccounts: readonly NodeAccount[];
  trustDomain: string;
  /** --trust-domain-aliases: an ImpersonatedIdentity in one of these is issued in `trustDomain`. */
  trustDomainAliases?: readonly string[];
  /** How long a request waits for a pod cache that has not synced yet before it is answered UNAVAILABLE. */
  timeoutSeconds: number;
  /**
   * Where the node check runs. Absent: here, on pod caches this object starts (when impersonation is enabled).
   * A `--workers` worker passes its primary's, so the caches exist once.
   */
  nodeCheck?: NodeCheck;
  /** For the pod caches: their clock, how long they answer without a watch, and where their errors go. */
  caches?: Omit<PodCachesOptions, 'syncWaitSeconds'>;
}

/** The node check of one impersonation request, in plain data (it crosses from a worker to the primary). */
export interface NodeCheckRequest {
  /** The cluster ID the caller's token was reviewed in ('' for the local cluster). */
  clusterId: string;
  caller: { namespace: string; serviceAccount: string; podName: string; podUid: string };
  target: { namespace: string; serviceAccount: string };
}

export type NodeCheckVerdict = { kind: 'ok'; node: string } | { kind: 'denied'; reason: string } | { kind: 'unavailable'; reason: string };

export type NodeCheck = (request: NodeCheckRequest) => Promise<NodeCheckVerdict>;

export interface PodCachesOptions {
  /** How long a check waits for a cache that is not ready (first sync, or back from a lost watch). */
  syncWaitSeconds: number;
  clock?: Clock;
  /** How long a cache whose watch was lost still answers (default 60 s). */
  maxStaleSeconds?: number;
  onError?: (clusterId: string, message: string) => void;
  /** Where a cluster's pods come from (default: its API server); tests may pass another. */
  source?: (cluster: { id: string }) => PodSource;
}

/**
 * One pod cache per trusted cluster, and the node check on them: the caller's own pod (by the UID its token is
 * bound to) must be live and match the token, and a live pod of the target service account must be on its node.
 */
export class PodCaches {
  private readonly caches = new Map<string, PodCache>();
  private readonly broken = new Map<string, string>();

  constructor(
    private readonly clusters: KubeClusters,
    private readonly options: PodCachesOptions,
  ) {
    for (const id of clusters.ids()) {
      const resolved = clusters.resolve(id);
      if (!('cluster' in resolved)) continue;
      const { cluster } = resolved;
      let source: PodSource;
      if (options.source) source = options.source(cluster);
      else if (cluster.kubeConfig && cluster.core) source = kubePodSource(cluster.core, cluster.kubeConfig);
      else {
        this.broken.set(id, `cluster "${id}" has no kubeconfig to watch pods with`);
        continue;
      }
      this.caches.set(
        id,
        new PodCache({
          source,
          clusterId: id,
          ...(options.clock ? { clock: options.clock } : {}),
          ...(options.maxStaleSeconds !== undefined ? { maxStaleMs: options.maxStaleSeconds * 1000 } : {}),
          ...(options.onError ? { onError: (message: string) => options.onError!(id, message) } : {}),
        }),
      );
    }
  }

  start(): this {
    for (const cache of this.caches.values()) cache.start();
    return this;
  }

  close(): void {
    for (const cache of this.caches.values()) cache.stop();
  }

  /** The cache of a cluster (by its ID as configured). */
  cache(clusterId: string): PodCache | undefined {
    return this.caches.get(clusterId);
  }

  readonly check: NodeCheck = async (request) => {
    const resolved = this.clusters.resolve(request.clusterId);
    if ('error' in resolved) return { kind: 'denied', reason: resolved.error };
    const id = resolved.cluster.id;
    const cache = this.caches.get(id);
    if (!cache) return { kind: 'unavailable', reason: this.broken.get(id) ?? `no pod cache for cluster "${id}"` };
    const readiness = await cache.whenReady(this.options.syncWaitSeconds * 1000);
    if (!readiness.ready) return { kind: 'unavailable', reason: `${readiness.reason}; retry later (the CA needs list and watch on pods)` };

    const { caller, target } = request;
    const callerPod = cache.byUid(caller.podUid);
    const callerName = `${caller.namespace}/${caller.podName}`;
    if (!callerPod) {
      return { kind: 'denied', reason: `the caller's pod ${callerName} does not match its token: no pod has UID ${caller.podUid} (deleted, or re-created under that name)` };
    }
    if (callerPod.namespace !== caller.namespace || callerPod.name !== caller.podName || callerPod.serviceAccount !== caller.serviceAccount) {
      return { kind: 'denied', reason: `the caller's pod ${callerName} does not match its token (UID or service account differ)` };
    }
    const callerNotLive = whyPodIsNotLive(callerPod);
    if (callerNotLive) return { kind: 'denied', reason: `the caller's pod ${callerName} ${callerNotLive}` };
    const node = callerPod.nodeName;
    if (!node) return { kind: 'denied', reason: `the caller's pod ${callerName} is not scheduled on a node` };

    for (const pod of cache.onNode(node)) {
      if (pod.namespace === target.namespace && pod.serviceAccount === target.serviceAccount && podIsLive(pod)) return { kind: 'ok', node };
    }
    return { kind: 'denied', reason: `no pod of service account ${target.namespace}/${target.serviceAccount} runs on node ${node} (finished pods and pods being deleted do not count)` };
  };
}

/** Parses CA_TRUSTED_NODE_ACCOUNTS entries `namespace/serviceaccount`; returns the bad entry's text on error. */
export function parseNodeAccounts(entries: readonly string[]): NodeAccount[] | { bad: string } {
  const accounts: NodeAccount[] = [];
  for (const entry of entries) {
    const match = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(entry);
    if (!match) return { bad: entry };
    accounts.push({ namespace: match[1]!, serviceAccount: match[3]! });
  }
  return accounts;
}

export class NodeImpersonation {
  private readonly caches: PodCaches | undefined;
  private readonly nodeCheck: NodeCheck;
  private readonly trustDomains: TrustDomains;

  constructor(private readonly options: NodeImpersonationOptions) {
    this.trustDomains = new TrustDomains(options.trustDomain, options.trustDomainAliases);
    if (options.nodeCheck) this.nodeCheck = options.nodeCheck;
    else {
      // Pods are watched only when impersonation can be used at all.
      this.caches = this.enabled ? new PodCaches(options.clusters, { ...options.caches, syncWaitSeconds: options.timeoutSeconds }).start() : undefined;
      const caches = this.caches;
      this.nodeCheck = caches ? caches.check : () => Promise.resolve({ kind: 'denied', reason: 'node impersonation is not enabled' });
    }
  }

  get enabled(): boolean {
    return this.options.trustedNodeAccounts.length > 0;
  }

  /** The pod caches this object runs (none when another process checks nodes, or impersonation is off). */
  get podCaches(): PodCaches | undefined {
    return this.caches;
  }

  close(): void {
    this.caches?.close();
  }

  async authorize(caller: Caller, impersonated: string): Promise<ImpersonationVerdict> {
    const k8s = caller.kubernetes;
    if (!k8s || !this.options.trustedNodeAccounts.some((a) => a.namespace === k8s.namespace && a.serviceAccount === k8s.serviceAccount)) {
      return { kind: 'denied', reason: `caller ${caller.identity.uri} is not a trusted node account (CA_TRUSTED_NODE_ACCOUNTS)` };
    }
    let requested;
    try {
      requested = WorkloadId.parse(impersonated);
    } catch (error) {
      return { kind: 'denied', reason: `ImpersonatedIdentity is not a valid workload identity: ${(error as Error).message}` };
    }
    const accepted = this.trustDomains.accept(requested);
    if (!accepted) return { kind: 'denied', reason: this.trustDomains.foreignTrustDomain('ImpersonatedIdentity', requested) };
    const target = accepted.identity;
    if (!k8s.podName || !k8s.podUid) return { kind: 'denied', reason: "the caller's token is not bound to a pod, so its node is unknown" };
    const resolved = this.options.clusters.resolve(k8s.clusterId);
    if ('error' in resolved) return { kind: 'denied', reason: resolved.error };
    const verdict = await this.nodeCheck({
      clusterId: resolved.cluster.id,
      caller: { namespace: k8s.namespace, serviceAccount: k8s.serviceAccount, podName: k8s.podName, podUid: k8s.podUid },
      target: { namespace: target.namespace, serviceAccount: target.serviceAccount },
    });
    if (verdict.kind !== 'ok') return verdict;
    return { kind: 'ok', identity: target, node: verdict.node, ...(accepted.migratedFrom ? { migratedFrom: accepted.migratedFrom } : {}) };
  }
}
