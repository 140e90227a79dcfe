/**
 * What a Kubernetes plugin of the CA is: something that serves one of Kubernetes' own certificate APIs with the
 * CA's roots and issuance pipeline (signing CertificateSigningRequests, publishing ClusterTrustBundles, signing
 * PodCertificateRequests). Each lives in a folder of its own under kubernetes/ and is listed once in
 * kubernetes/index.ts; it is off unless its flag turns it on.
 */
import type { Option } from 'commander';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import type { Env } from '../../config/env.js';
import type { Logger } from '../../log.js';
import type { CertificateAuthority } from '../authority.js';
import type { WorkloadSigner } from '../signer.js';
import type { IssuanceRecord } from './audit.js';

/** A pod as a plugin sees it: who it runs as, where, and whether it still runs. */
export interface LookedUpPod {
  readonly uid: string;
  readonly serviceAccount: string;
  /** spec.nodeName; undefined while unscheduled. */
  readonly nodeName: string | undefined;
  /** Why the pod no longer counts (finished, being deleted); undefined when it is live. */
  readonly notLive: string | undefined;
}

/** The local cluster's pods, from a watched cache (no API call per look-up). */
export interface PodLookup {
  /** Waits up to `timeoutMs` for the cache to be current; says why not when it is not. */
  whenReady(timeoutMs: number): Promise<{ ready: true } | { ready: false; reason: string }>;
  lookup(namespace: string, name: string): LookedUpPod | undefined;
}

export interface KubernetesPluginContext {
  /** The local cluster's client configuration (--kubeconfig, else KUBECONFIG, else in-cluster). */
  kubeConfig: KubeConfig;
  /** The key source: its trust bundle (`trustBundlePem`) and change signal (`onChange`). */
  signer: WorkloadSigner;
  /** The issuance pipeline CreateCertificate uses: policy, the key source's signature, the final check. */
  authority: CertificateAuthority;
  trustDomain: string;
  logger: Logger;
  registry: Registry;
  /** The clock (epoch ms); default Date.now. */
  now?: () => number;
  /** The local cluster's pods (watched once, on first use), for plugins that check a pod's identity. */
  pods?: PodLookup;
  /** Called for every certificate a plugin wrote to the API: the CA's audit line and issuance metric. */
  recordIssued?: (record: IssuanceRecord) => void;
}

export interface RunningKubernetesPlugin {
  /** Stops its watches and timers; resolves when nothing of it runs. */
  close(): Promise<void>;
}

/** A configured plugin, ready to start once the CA's key source and authority exist. */
export type KubernetesPluginStarter = (context: KubernetesPluginContext) => Promise<RunningKubernetesPlugin>;

export interface KubernetesPlugin {
  /** For logs and errors. */
  readonly name: string;
  /** Its flags, registered on `meshca ca`. */
  options(): Option[];
  /**
   * Reads its settings from the flags (commander's camel-case names) and the environment: undefined when it is
   * off, else the function that starts it with these settings. A bad value throws ConfigError.
   */
  configure(flags: Readonly<Record<string, unknown>>, env: Env): KubernetesPluginStarter | undefined;
}
