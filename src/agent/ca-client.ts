/**
 * The agent's only way to the CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS, verified
 * against the mesh root and by a DNS SAN (never the CN), with the workload's token as `authorization: Bearer`. Retrying is the caller's business
 * (see cache/identity-cache.ts); this module makes exactly one attempt per call.
 */
import * as grpc from '@grpc/grpc-js';
import type { AgentCaConfig } from '../config/agent.js';
import type { Logger } from '../log.js';
import { caChannelCredentials } from '../wire/ca-credentials.js';
import { diagnoseCaTls, isConnectionFailure } from '../wire/ca-tls-diagnosis.js';
import { IstioCaClient, objectToStruct, type IstioCertificateResponse } from '../wire/protos.js';
import { BACKOFF_INITIAL_MS, BACKOFF_MAX_MS, backoffDelayMs, sleep } from './backoff.js';
import type { CaClient, CertificateRequest } from './cache/ca.js';
import { CaCallError } from './errors.js';

export type { CaClient, CertificateRequest } from './cache/ca.js';

/** Per-attempt deadline; the retry loop above decides how long to keep trying overall. */
export const CA_REQUEST_TIMEOUT_MS = 10_000;

export class GrpcCaClient implements CaClient {
  readonly address: string;
  private client: IstioCaClient;
  private readonly retired = new Set<IstioCaClient>();
  private rootCertPem: Buffer;
  /** The TLS diagnosis in flight, shared by the calls that fail together. */
  private diagnosis: Promise<string | undefined> | undefined;

  constructor(
    private readonly config: AgentCaConfig,
    rootCertPem: Buffer,
    private readonly log: Logger,
  ) {
    this.address = config.address;
    this.rootCertPem = rootCertPem;
    this.client = this.connect(rootCertPem);
  }

  /**
   * After the channel failed: one line saying which TLS check the CA fails and what to set, or undefined when the
   * handshake itself is fine (or the CA cannot be reached at all).
   */
  diagnoseTls(): Promise<string | undefined> {
    this.diagnosis ??= diagnoseCaTls({
      address: this.address,
      ...(this.config.serverName ? { serverName: this.config.serverName } : {}),
      rootsPem: this.rootCertPem,
      rootsFile: this.config.rootCertPath,
      rootsSetting: 'CA_ROOT_CA/--ca-root-cert',
      serverNameSetting: 'ISTIOD_SAN/--istiod-san',
      addressSetting: 'CA_ADDR/--ca-addr',
    }).finally(() => (this.diagnosis = undefined));
    return this.diagnosis;
  }

  private connect(rootCertPem: Buffer): IstioCaClient {
    // grpc-js waits up to 120 s between reconnects by default; follow istio-agent's 100 ms -> 30 s instead, so a
    // restarted CA is found again quickly.
    const options: grpc.ClientOptions = {
      'grpc.initial_reconnect_backoff_ms': BACKOFF_INITIAL_MS,
      'grpc.max_reconnect_backoff_ms': BACKOFF_MAX_MS,
    };
    if (this.config.serverName) {
      options['grpc.ssl_target_name_override'] = this.config.serverName;
      options['grpc.default_authority'] = this.config.serverName;
    }
    // The CA is recognised by a DNS SAN only, never a CN: see wire/ca-credentials.ts.
    return new IstioCaClient(this.config.address, caChannelCredentials(rootCertPem), options);
  }

  /** The channel to the CA that new calls use (other services on the CA port share it, e.g. WatchTrustBundles). */
  channel(): grpc.Channel {
    return this.client.getChannel() as grpc.Channel;
  }

  /** The mesh root changed (CA root rotation): new connections verify against the new bundle. */
  updateRootCertificate(rootCertPem: Buffer): void {
    const old = this.client;
    this.rootCertPem = rootCertPem;
    this.client = this.connect(rootCertPem);
    // Calls in flight on the old channel may finish; it is closed a little later.
    this.retired.add(old);
    setTimeout(() => {
      this.retired.delete(old);
      old.close();
    }, CA_REQUEST_TIMEOUT_MS).unref();
  }

  createCertificate(request: CertificateRequest, signal?: AbortSignal): Promise<string[]> {
    const metadata = new grpc.Metadata();
    if (request.token !== undefined) metadata.set('authorization', `Bearer ${request.token}`);
    if (this.config.clusterId !== undefined) metadata.set('clusterid', this.config.clusterId);
    for (const [name, value] of Object.entries(this.config.extraHeaders)) metadata.set(name, value);
    return new Promise<string[]>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new CaCallError(grpc.status.CANCELLED, 'request abandoned'));
        return;
      }
      const call = this.client.CreateCertificate(
        {
          csr: request.csrPem,
          validity_duration: String(request.ttlSeconds),
          metadata: objectToStruct({ CertSigner: this.config.certSigner }),
        },
        metadata,
        { deadline: Date.now() + CA_REQUEST_TIMEOUT_MS },
        (error: grpc.ServiceError | null, response?: IstioCertificateResponse) => {
          signal?.removeEventListener('abort', onAbort);
          if (!error) resolve(response?.cert_chain ?? []);
          else if (error.code !== grpc.status.UNAVAILABLE || !isConnectionFailure(error.details || error.message)) {
            reject(new CaCallError(error.code, error.details || error.message));
          }
          else {
            const raw = error.details || error.message;
            void this.diagnoseTls().then((diagnosis) => reject(new CaCallError(error.code, diagnosis ?? raw)));
          }
        },
      );
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  async waitUntilReachable(signal: AbortSignal): Promise<void> {
    let reportedAt = -1;
    const report = async (attempt: number, fallback?: string): Promise<void> => {
      const diagnosis = await this.diagnoseTls();
      if (signal.aborted || reportedAt === attempt) return;
      reportedAt = attempt;
      if (diagnosis) this.log.error({ caAddress: this.address, err: diagnosis }, 'cannot connect to the CA over TLS; retrying with backoff');
      else if (fallback !== undefined) this.log.warn({ caAddress: this.address, err: fallback }, 'CA not reachable yet; retrying');
    };
    // Say what is wrong as soon as the first connection fails, not only when the first wait below times out.
    this.onFirstFailure(this.client, signal, () => void report(0));
    for (let attempt = 0; ; attempt++) {
      const client = this.client;
      const error = await new Promise<Error | undefined>((resolve) => {
        const onAbort = (): void => resolve(signal.reason as Error);
        signal.addEventListener('abort', onAbort, { once: true });
        client.waitForReady(Date.now() + 5000, (waitError) => {
          signal.removeEventListener('abort', onAbort);
          resolve(waitError);
        });
      });
      if (!error) return;
      if (signal.aborted) throw signal.reason as Error;
      if (attempt % 5 === 0) await report(attempt, error.message);
      await sleep(backoffDelayMs(attempt), signal);
    }
  }

  /** Calls `onFailure` once when the channel of `client` first enters TRANSIENT_FAILURE. */
  private onFirstFailure(client: IstioCaClient, signal: AbortSignal, onFailure: () => void): void {
    const channel = client.getChannel();
    const watch = (): void => {
      const state = channel.getConnectivityState(false);
      if (state === grpc.connectivityState.TRANSIENT_FAILURE) onFailure();
      else if (state !== grpc.connectivityState.READY && state !== grpc.connectivityState.SHUTDOWN && !signal.aborted) {
        channel.watchConnectivityState(state, Date.now() + 60_000, (error) => {
          if (!error) watch();
        });
      }
    };
    watch();
  }

  close(): void {
    this.client.close();
    for (const old of this.retired) old.close();
    this.retired.clear();
  }
}
