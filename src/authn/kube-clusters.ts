/**
 * The Kubernetes clusters this CA trusts for TokenReview and pod look-ups, keyed by cluster ID. The `clusterid`
 * request header picks one; an empty header means the local cluster (CLUSTER_ID, Istio's default "Kubernetes").
 */
import type { Agent } from 'node:http';
import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  Observable,
  type ConfigurationOptions,
  type KubeConfig,
  type ObservableMiddleware,
} from '@kubernetes/client-node';

export interface KubeCluster {
  id: string;
  /** API server URL, for messages. */
  server: string;
  authentication: AuthenticationV1Api;
  core: CoreV1Api;
}

export class KubeClusters {
  private readonly byId = new Map<string, KubeCluster>();

  constructor(
    readonly localClusterId: string,
    clusters: readonly KubeCluster[] = [],
  ) {
    for (const cluster of clusters) this.byId.set(cluster.id, cluster);
  }

  static fromKubeConfigs(localClusterId: string, configs: readonly { clusterId: string; kubeConfig: KubeConfig }[]): KubeClusters {
    return new KubeClusters(
      localClusterId,
      configs.map(({ clusterId, kubeConfig }) => ({
        id: clusterId,
        server: kubeConfig.getCurrentCluster()?.server ?? '(unknown server)',
        authentication: kubeConfig.makeApiClient(AuthenticationV1Api),
        core: kubeConfig.makeApiClient(CoreV1Api),
      })),
    );
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

export class TimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs / 1000}s`);
    this.name = 'TimeoutError';
  }
}

/**
 * Runs one Kubernetes API call with a deadline that really ends it: when the deadline passes, the call's own
 * connection is destroyed, so an API server that hangs does not keep requests (and sockets) piling up behind
 * callers that have already been told UNAVAILABLE. `call` must pass the options it is given to the API method.
 * `onSettled` runs once the underlying call has finished, successfully or not (after the deadline at the latest,
 * give or take the time to tear the connection down).
 */
export function callWithDeadline<T>(
  call: (options: ConfigurationOptions) => Promise<T>,
  timeoutMs: number,
  onSettled?: () => void,
): Promise<T> {
  const agents: Agent[] = [];
  let expired = false;
  // Runs after the client has attached its per-request agent (TLS settings and credentials of the kubeconfig).
  const middleware: ObservableMiddleware = {
    pre: (context) => {
      if (expired) return new Observable(Promise.reject(new TimeoutError(timeoutMs)));
      const agent = context.getAgent();
      if (agent) agents.push(agent);
      return new Observable(Promise.resolve(context));
    },
    post: (response) => new Observable(Promise.resolve(response)),
  };
  let underlying: Promise<T>;
  try {
    underlying = call({ middleware: [middleware], middlewareMergeStrategy: 'append' });
  } catch (error) {
    onSettled?.();
    return Promise.reject(error);
  }
  void underlying.then(
    () => onSettled?.(),
    () => onSettled?.(),
  );
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      expired = true;
      for (const agent of agents) agent.destroy();
      reject(new TimeoutError(timeoutMs));
    }, timeoutMs);
    timer.unref();
  });
  return Promise.race([underlying, deadline]).finally(() => clearTimeout(timer));
}

/** A Kubernetes API failure in a form for messages: the HTTP status (0 when none arrived) and the server's reason. */
export function describeKubeError(error: unknown): { status: number; detail: string } {
  if (error instanceof TimeoutError) return { status: 0, detail: error.message };
  if (error instanceof ApiException) {
    const body: unknown = error.body;
    let detail = `HTTP ${error.code}`;
    const message = extractStatusMessage(body);
    if (message) detail += `: ${message}`;
    return { status: error.code, detail };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { status: 0, detail: message };
}

function extractStatusMessage(body: unknown): string | undefined {
  let value = body;
  if (typeof body === 'string') {
    try {
      value = JSON.parse(body) as unknown;
    } catch {
      return body.slice(0, 300) || undefined;
    }
  }
  if (value && typeof value === 'object' && 'message' in value && typeof value.message === 'string') return value.message.slice(0, 300);
  return undefined;
}
