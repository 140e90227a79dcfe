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
