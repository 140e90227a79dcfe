/**
 * Node impersonation (Istio's CA_TRUSTED_NODE_ACCOUNTS + `ImpersonatedIdentity` metadata, used by node agents such
 * as ztunnel): a trusted node agent may ask for another workload's certificate, but only for a service account that
 * has a pod on the agent's own node, so a compromised node cannot mint identities of workloads running elsewhere.
 */
import type { V1Pod } from '@kubernetes/client-node';
import { WorkloadId } from '../pki/index.js';
import { callWithDeadline, describeKubeError, type KubeClusters } from './kube-clusters.js';
import type { Caller } from './types.js';

export interface NodeAccount {
  namespace: string;
  serviceAccount: string;
}

export type ImpersonationVerdict =
  | { kind: 'ok'; identity: WorkloadId; node: string }
  | { kind: 'denied'; reason: string }
  | { kind: 'unavailable'; reason: string };

export interface NodeImpersonationOptions {
  clusters: KubeClusters;
  /** CA_TRUSTED_NODE_ACCOUNTS. */
  trustedNodeAccounts: readonly NodeAccount[];
  trustDomain: string;
  timeoutSeconds: number;
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

function serviceAccountOf(pod: V1Pod): string {
  return pod.spec?.serviceAccountName || 'default';
}

export class NodeImpersonation {
  constructor(private readonly options: NodeImpersonationOptions) {}

  get enabled(): boolean {
    return this.options.trustedNodeAccounts.length > 0;
  }

  async authorize(caller: Caller, impersonated: string): Promise<ImpersonationVerdict> {
    const k8s = caller.kubernetes;
    if (!k8s || !this.options.trustedNodeAccounts.some((a) => a.namespace === k8s.namespace && a.serviceAccount === k8s.serviceAccount)) {
      return { kind: 'denied', reason: `caller ${caller.identity.uri} is not a trusted node account (CA_TRUSTED_NODE_ACCOUNTS)` };
    }
    let target;
    try {
      target = WorkloadId.parse(impersonated);
    } catch (error) {
      return { kind: 'denied', reason: `ImpersonatedIdentity is not a valid workload identity: ${(error as Error).message}` };
    }
    if (target.trustDomain !== this.options.trustDomain) {
      return { kind: 'denied', reason: `ImpersonatedIdentity must be spiffe://${this.options.trustDomain}/ns/<namespace>/sa/<service account>` };
    }
    if (!k8s.podName || !k8s.podUid) return { kind: 'denied', reason: "the caller's token is not bound to a pod, so its node is unknown" };
    const resolved = this.options.clusters.resolve(k8s.clusterId);
    if ('error' in resolved) return { kind: 'denied', reason: resolved.error };
    const { cluster } = resolved;
    const timeoutMs = this.options.timeoutSeconds * 1000;

    let callerPod: V1Pod;
    try {
      const podName = k8s.podName;
      callerPod = await callWithDeadline((options) => cluster.core.readNamespacedPod({ name: podName, namespace: k8s.namespace }, options), timeoutMs);
    } catch (error) {
      const { status, detail } = describeKubeError(error);
      if (status === 404) return { kind: 'denied', reason: `the caller's pod ${k8s.namespace}/${k8s.podName} does not exist` };
      return { kind: 'unavailable', reason: `could not read the caller's pod from the Kubernetes API server of cluster "${cluster.id}": ${detail}` };
    }
    if (callerPod.metadata?.uid !== k8s.podUid || serviceAccountOf(callerPod) !== k8s.serviceAccount) {
      return { kind: 'denied', reason: `the caller's pod ${k8s.namespace}/${k8s.podName} does not match its token (UID or service account differ)` };
    }
    const node = callerPod.spec?.nodeName;
    if (!node) return { kind: 'denied', reason: `the caller's pod ${k8s.namespace}/${k8s.podName} is not scheduled on a node` };

    let pods: V1Pod[];
    try {
      const list = await callWithDeadline(
        (options) => cluster.core.listNamespacedPod({ namespace: target.namespace, fieldSelector: `spec.nodeName=${node}` }, options),
        timeoutMs,
      );
      pods = list.items;
    } catch (error) {
      const { detail } = describeKubeError(error);
      return { kind: 'unavailable', reason: `could not list pods from the Kubernetes API server of cluster "${cluster.id}": ${detail}` };
    }
    // Filter again locally: the field selector is an optimisation, not something to rely on for a security check.
    const match = pods.find((p) => p.spec?.nodeName === node && serviceAccountOf(p) === target.serviceAccount);
    if (!match) {
      return { kind: 'denied', reason: `no pod of service account ${target.namespace}/${target.serviceAccount} runs on node ${node}` };
    }
    return { kind: 'ok', identity: target, node };
  }
}
