/**
 * The Kubernetes clusters this CA trusts for TokenReview and pod look-ups, keyed by cluster ID. The `clusterid`
 * request header picks one; an empty header means the local cluster (CLUSTER_ID, Istio's default "Kubernetes").
 */
import type { AuthenticationV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { ApiConnectionPool, DEFAULT_MAX_API_CONNECTIONS } from '../kube/api.js';
import { kubeClient } from '../kube/client.js';

export interface KubeCluster {
  id: string;
  /** API server URL, for messages. */
  server: string;
  /** The API clients; absent for a cluster known by ID only (`KubeClusters.idsOnly`). */
  authentication?: AuthenticationV1Api;
  core?: CoreV1Api;
  /** The kept-alive connections its API calls share (absent for clusters built by hand, e.g. in tests). */
  connections?: ApiConnectionPool;
  /** Its configuration, for watches (which stream outside the pool); absent for clusters built by hand. */
  kubeConfig?: KubeConfig;
}

export class KubeClusters {
  private readonly byId = new Map<string, KubeCluster>();

  constructor(
    readonly localClusterId: string,
    clusters: readonly KubeCluster[] = [],
  ) {
    for (const cluster of clusters) this.byId.set(cluster.id, cluster);
  }

  /**
   * Clusters known by their IDs only, without API clients (and without loading the Kubernetes client): for a
   * `--workers` worker, which resolves the clusterid header itself but has its primary make every TokenReview and
   * pod check.
   */
  static idsOnly(localClusterId: string, ids: readonly string[]): KubeClusters {
    return new KubeClusters(localClusterId, ids.map((id) => ({ id, server: 'the API server its primary calls' })));
  }

  static fromKubeConfigs(
    localClusterId: string,
    configs: readonly { clusterId: string; kubeConfig: KubeConfig }[],
    options: { maxConnectionsPerCluster?: number } = {},
  ): KubeClusters {
    return new KubeClusters(
      localClusterId,
      configs.map(({ clusterId, kubeConfig }) => {
        const server = kubeConfig.getCurrentCluster()?.server;
        // What makeApiClient does, plus the pool: one per cluster, shared by its TokenReview and pod clients.
        if (server === undefined) throw new Error('No active cluster!');
        const { AuthenticationV1Api, CoreV1Api, createConfiguration, ServerConfiguration } = kubeClient();
        const connections = new ApiConnectionPool(options.maxConnectionsPerCluster ?? DEFAULT_MAX_API_CONNECTIONS);
        const configuration = createConfiguration({
          baseServer: new ServerConfiguration(server, {}),
          authMethods: { default: kubeConfig },
          middleware: [connections.middleware],
        });
        return {
          id: clusterId,
          server,
          authentication: new AuthenticationV1Api(configuration),
          core: new CoreV1Api(configuration),
          connections,
          kubeConfig,
        };
      }),
    );
  }

  /** Closes every kept-alive API connection (calls still running finish or hit their deadline first). */
  close(): void {
    for (const cluster of this.byId.values()) cluster.connections?.close();
  }

  get size(): number {
    return this.byId.size;
  }

  ids(): string[] {
    return [...this.byId.keys()];
  }

  /** The cluster a request's `clusterid` header names, or an error line when it names none we know. */
  resolve(clusterIdHeader: string | undefined): { cluster: KubeCluster } | { error: string } {
    const id = clusterIdHeader === undefined || clusterIdHeader === '' ? this.localClusterId : clusterIdHeader;
    const cluster = this.byId.get(id);
    if (cluster) return { cluster };
    const known = this.ids();
    return {
      error: `unknown cluster ID "${truncate(id)}" in the clusterid header (this CA trusts ${known.length ? known.map((k) => `"${k}"`).join(', ') : 'no cluster'})`,
    };
  }
}

function truncate(text: string): string {
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}
