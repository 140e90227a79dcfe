/**
 * ClusterTrustBundle publishing: one signer-linked bundle (spec.signerName = the configured signer, named
 * `<signer with "/" as ":">:roots`) holding every root of the CA's trust bundle, in the form the API accepts
 * (CERTIFICATE blocks only, no headers, no duplicates, CA certificates only). The version is discovered from the
 * API server (v1 on 1.37+, else v1beta1, else v1alpha1). Like root distribution's ConfigMaps, the bundle is
 * rewritten when the key source's trust bundle changes, repaired when someone edits or deletes it (a watch on
 * the object by name), and checked again at every resync.
 */
import type { CertificatesApi, CertificatesV1beta1Api, ConfigurationOptions, KubeConfig, RequestContext, V1beta1ClusterTrustBundle, Watch } from '@kubernetes/client-node';
import { kubeClient } from '../../../kube/client.js';
import { followResumable } from '../../../kube/config.js';
import type { Logger } from '../../../log.js';
import { certificateToPem, decodePem, isCaCertificate, parseCertificate } from '../../../pki/index.js';
import { kubeErrorMessage, kubeStatusCode } from '../../kube-store.js';
import type { TrustBundleSource } from '../../root-distribution.js';

export const CERTIFICATES_GROUP = 'certificates.k8s.io';
/** The versions that serve ClusterTrustBundle, most preferred first (v1 is 1.37's; v1alpha1 was removed in it). */
export const CLUSTER_TRUST_BUNDLE_VERSIONS = ['v1', 'v1beta1', 'v1alpha1'] as const;
export type ClusterTrustBundleVersion = (typeof CLUSTER_TRUST_BUNDLE_VERSIONS)[number];
/** The last part of the bundle's name, after the signer-name prefix. */
export const BUNDLE_NAME_SUFFIX = 'roots';
export const BUNDLE_LABELS: Readonly<Record<string, string>> = { 'app.kubernetes.io/managed-by': 'meshca' };
/** What admission (ClusterTrustBundleAttest) requires of whoever writes a signer-linked bundle, on the signer's name. */
export const ATTEST_PERMISSION = { group: 'certificates.k8s.io', resource: 'signers', verb: 'attest' } as const;

/** The name the API requires of a bundle linked to `signerName`: the signer with "/" as ":", then ":" and a suffix. */
export function clusterTrustBundleName(signerName: string): string {
  return `${signerName.replaceAll('/', ':')}:${BUNDLE_NAME_SUFFIX}`;
}

/**
 * The roots of a PEM bundle in the form spec.trustBundle must have: each distinct CA certificate once, as a bare
 * CERTIFICATE block (no headers, nothing between blocks), in the bundle's order. `skipped` tells what was left out.
 */
export function canonicalTrustBundle(pem: string): { pem: string; count: number; skipped: string[] } {
  const seen = new Set<string>();
  const out: string[] = [];
  const skipped: string[] = [];
  decodePem(pem).forEach((block, index) => {
    if (block.label !== 'CERTIFICATE') {
      skipped.push(`block ${index} is a ${block.label}, not a CERTIFICATE`);
      return;
    }
    const key = block.der.toString('base64');
    if (seen.has(key)) return;
    let isCa: boolean;
    try {
      isCa = isCaCertificate(parseCertificate(block.der));
    } catch {
      skipped.push(`block ${index} is not an X.509 certificate`);
      return;
    }
    if (!isCa) {
      skipped.push(`block ${index} is not a CA certificate (basicConstraints CA:true)`);
      return;
    }
    seen.add(key);
    out.push(certificateToPem(block.der));
  });
  return { pem: out.join(''), count: out.length, skipped };
}

export interface ClusterTrustBundlePublisherOptions {
  kubeConfig: KubeConfig;
  bundle: TrustBundleSource;
  signerName: string;
  logger: Logger;
  /** Rediscovery, re-read and repair (default 5 minutes). */
  resyncIntervalMs?: number;
  /** The first retry after a failed start-up attempt (default 500 ms, doubling to 30 s). */
  firstRetryMs?: number;
}

export interface ClusterTrustBundlePublisher {
  /** The version in use, once discovered. */
  readonly version: ClusterTrustBundleVersion | undefined;
  /** Discovers the version and writes the bundle now. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** The API server serves no ClusterTrustBundle version: a cluster setting the operator must change. */
export class ClusterTrustBundleNotServedError extends Error {}

interface WatchedBundle {
  metadata?: { name?: string; labels?: Record<string, string> };
  spec?: { signerName?: string; trustBundle?: string };
}

class Publisher implements ClusterTrustBundlePublisher {
  version: ClusterTrustBundleVersion | undefined;
  readonly name: string;
  private readonly api: CertificatesV1beta1Api;
  /** Options of every call of `api`: the rewrite to the served version. */
  private readonly served: ConfigurationOptions;
  private readonly group: CertificatesApi;
  /** The version calls go to while discovery probes one (else `version`). */
  private probing: ClusterTrustBundleVersion | undefined;
  private watchedVersion: ClusterTrustBundleVersion | undefined;
  private readonly watcher: Watch;
  private readonly stops: (() => void)[] = [];
  private stopWatch: (() => void) | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private lastError: string | undefined;

  constructor(private readonly options: ClusterTrustBundlePublisherOptions) {
    this.name = clusterTrustBundleName(options.signerName);
    const { CertificatesApi, CertificatesV1beta1Api, Observable, Watch } = kubeClient();
    // client-node 1.x has a typed client for v1alpha1 and v1beta1 only; ClusterTrustBundle has the same schema in
    // every version, so every call of the v1beta1 client is sent to the version the server serves. (A call's own
    // middleware: the client drops middleware given to its configuration when a call passes no options.)
    this.served = {
      middleware: [{ pre: (context) => new Observable(Promise.resolve(this.rewrite(context))), post: (response) => new Observable(Promise.resolve(response)) }],
      middlewareMergeStrategy: 'prepend',
    };
    this.api = options.kubeConfig.makeApiClient(CertificatesV1beta1Api);
    this.group = options.kubeConfig.makeApiClient(CertificatesApi);
    this.watcher = new Watch(options.kubeConfig);
    this.stops.push(options.bundle.onChange(() => void this.sync().catch(() => undefined)));
  }

  private rewrite(context: RequestContext): RequestContext {
    const group = '/apis/' + CERTIFICATES_GROUP;
    const to = this.probing ?? this.version;
    const url = context.getUrl();
    const at = url.indexOf(`${group}/v1beta1`);
    if (at !== -1 && to) context.setUrl(`${url.slice(0, at)}${group}/${to}${url.slice(at + group.length + '/v1beta1'.length)}`);
    return context;
  }

  /** The periodic resync, and (when the first attempt failed, e.g. the API server was unreachable) retries with backoff until one works. */
  start(retryInitialization: boolean): void {
    if (this.closed) return;
    if (!this.resyncTimer) {
      this.resyncTimer = setInterval(() => void this.resync(), this.options.resyncIntervalMs ?? 300_000);
      this.resyncTimer.unref();
    }
    if (retryInitialization) void this.retry(this.options.firstRetryMs ?? 500);
  }

  private async retry(delayMs: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, delayMs).unref());
    if (this.closed || this.watchedVersion) return;
    try {
      await this.initialize();
    } catch (error) {
      this.report(error);
      void this.retry(Math.min(delayMs * 2, 30_000));
    }
  }

  /** The most preferred version whose resource list has clustertrustbundles. */
  private async discover(): Promise<ClusterTrustBundleVersion> {
    let served: string[];
    try {
      served = (await this.group.getAPIGroup()).versions.map((v) => v.version);
    } catch (error) {
      if (kubeStatusCode(error) === 404) served = [];
      else throw error;
    }
    for (const version of CLUSTER_TRUST_BUNDLE_VERSIONS.filter((v) => served.includes(v))) {
      this.probing = version;
      try {
        const resources = await this.api.getAPIResources({}, this.served).catch((error: unknown) => {
          if (kubeStatusCode(error) === 404) return { resources: [] };
          throw error;
        });
        if (resources.resources.some((r) => r.name === 'clustertrustbundles')) {
          if (this.version !== version) this.options.logger.info({ version: `${CERTIFICATES_GROUP}/${version}` }, 'ClusterTrustBundle: using the version the API server serves');
          this.version = version;
          return version;
        }
      } finally {
        this.probing = undefined;
      }
    }
    throw new ClusterTrustBundleNotServedError(
      `the API server serves no ClusterTrustBundle (${CERTIFICATES_GROUP} ${CLUSTER_TRUST_BUNDLE_VERSIONS.join(', ')}; served: ${served.join(', ') || 'none'}): ` +
        `turn on the ClusterTrustBundle feature gate and --runtime-config=${CERTIFICATES_GROUP}/v1beta1/clustertrustbundles=true (Kubernetes 1.33-1.36), or drop --cluster-trust-bundle`,
    );
  }

  /** Rediscovers the version (a cluster upgrade may move it) and follows the object at that version. */
  private async resync(): Promise<void> {
    try {
      await this.initialize();
    } catch (error) {
      this.report(error);
    }
  }

  private follow(version: ClusterTrustBundleVersion): void {
    if (this.closed || (this.stopWatch && this.watchedVersion === version)) return;
    this.stopWatch?.();
    this.watchedVersion = version;
    this.stopWatch = followResumable(
      this.watcher,
      `/apis/certificates.k8s.io/${version}/clustertrustbundles`,
      { fieldSelector: `metadata.name=${this.name}` },
      (type, obj) => {
        const bundle = obj as WatchedBundle;
        if (type === 'DELETED' || ((type === 'ADDED' || type === 'MODIFIED') && !this.isCurrent(bundle, this.desired().pem))) void this.sync().catch(() => undefined);
      },
      () => void this.sync().catch(() => undefined),
    );
  }

  /** Discovery, the watch at that version, and a write: throws when the cluster serves no ClusterTrustBundle. */
  async initialize(): Promise<void> {
    const version = await this.discover();
    this.follow(version);
    await this.sync();
  }

  private desired(): { pem: string; count: number; skipped: string[] } {
    return canonicalTrustBundle(this.options.bundle.trustBundlePem());
  }

  private isCurrent(bundle: WatchedBundle, desired: string): boolean {
    if (bundle.spec?.trustBundle !== desired || bundle.spec.signerName !== this.options.signerName) return false;
    return Object.entries(BUNDLE_LABELS).every(([k, v]) => bundle.metadata?.labels?.[k] === v);
  }

  /** One write at a time; a request during one causes one more pass. */
  sync(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.writeOnce();
      } while (this.again && !this.closed);
    })().finally(() => (this.running = undefined));
    return this.running;
  }

  private async writeOnce(): Promise<void> {
    for (let attempt = 0; attempt < 5 && !this.closed && this.version; attempt++) {
      const desired = this.desired();
      if (desired.count === 0) {
        this.report(new Error(`the CA's trust bundle has no CA certificate to publish${desired.skipped.length ? ` (${desired.skipped.join('; ')})` : ''}`));
        return;
      }
      try {
        let existing: V1beta1ClusterTrustBundle | undefined;
        try {
          existing = await this.api.readClusterTrustBundle({ name: this.name }, this.served);
        } catch (error) {
          if (kubeStatusCode(error) !== 404) throw error;
        }
        if (existing && this.isCurrent(existing, desired.pem)) return;
        const body: V1beta1ClusterTrustBundle = {
          apiVersion: `${CERTIFICATES_GROUP}/${this.version}`,
          kind: 'ClusterTrustBundle',
          metadata: {
            name: this.name,
            labels: { ...(existing?.metadata?.labels ?? {}), ...BUNDLE_LABELS },
            ...(existing?.metadata?.resourceVersion ? { resourceVersion: existing.metadata.resourceVersion } : {}),
          },
          spec: { signerName: this.options.signerName, trustBundle: desired.pem },
        };
        const fields = { bundle: this.name, version: this.version, roots: desired.count, ...(desired.skipped.length ? { skipped: desired.skipped } : {}) };
        if (existing) {
          await this.api.replaceClusterTrustBundle({ name: this.name, body }, this.served);
          this.options.logger.info(fields, `ClusterTrustBundle ${this.name} updated`);
        } else {
          await this.api.createClusterTrustBundle({ body }, this.served);
          this.options.logger.info(fields, `ClusterTrustBundle ${this.name} created`);
        }
        this.lastError = undefined;
        return;
      } catch (error) {
        if (kubeStatusCode(error) === 409) continue; // Raced with another write: read again.
        this.report(error);
        return;
      }
    }
  }

  report(error: unknown): void {
    const message = error instanceof Error && !kubeStatusCode(error) ? error.message : kubeErrorMessage(error);
    if (this.lastError === message) return;
    this.lastError = message;
    const { verb, resource } = ATTEST_PERMISSION;
    const hint = kubeStatusCode(error) === 403 ? ` (the CA needs create, get, update and watch on clustertrustbundles, and "${verb}" on ${resource} ${this.options.signerName})` : '';
    this.options.logger.error({ bundle: this.name, err: message }, `cannot publish ClusterTrustBundle ${this.name}${hint}; will retry at the next change or resync`);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.stopWatch?.();
    for (const stop of this.stops.splice(0)) stop();
    await this.running?.catch(() => undefined);
  }
}

/** How long start-up waits for the first discovery and write before going on and finishing them in the background. */
export const FIRST_SYNC_WAIT_MS = 10_000;

/**
 * Starts publishing: discovers the version and writes the bundle before resolving (waiting at most
 * FIRST_SYNC_WAIT_MS for an API server that does not answer). Rejects with ClusterTrustBundleNotServedError when
 * the cluster serves no ClusterTrustBundle; other first-attempt failures are logged and retried with backoff.
 */
export async function startClusterTrustBundlePublisher(options: ClusterTrustBundlePublisherOptions): Promise<ClusterTrustBundlePublisher> {
  const publisher = new Publisher(options);
  const first = publisher.initialize().then(
    () => 'done' as const,
    (error: unknown) => error,
  );
  let timer: NodeJS.Timeout | undefined;
  const slow = new Promise<'slow'>((resolve) => (timer = setTimeout(() => resolve('slow'), FIRST_SYNC_WAIT_MS)));
  const outcome = await Promise.race([first, slow]);
  clearTimeout(timer);
  if (outcome === 'slow') {
    options.logger.warn({ waitedMs: FIRST_SYNC_WAIT_MS }, 'ClusterTrustBundle: the API server has not answered yet; publishing goes on in the background');
    publisher.start(false);
    void first.then((late) => {
      if (late === 'done') return;
      publisher.report(late);
      publisher.start(true);
    });
    return publisher;
  }
  if (outcome instanceof ClusterTrustBundleNotServedError) {
    await publisher.close();
    throw outcome;
  }
  if (outcome !== 'done') publisher.report(outcome);
  publisher.start(outcome !== 'done');
  return publisher;
}
