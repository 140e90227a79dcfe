/**
 * The agent's only way to the CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS, verified
 * against the mesh root and by a DNS SAN (never the CN), with the workload's token as `authorization: Bearer`. Retrying is the caller's business
 * (see cache/identity-cache.ts); this module makes exactly one attempt per call.
 */
import * as grpc from '@grpc/grpc-js';
import type { AgentCaConfig } from '../config/agent.js';
import type { Logger } from '../log.js';
import { caChannelCredentials } from '../wire/ca-credentials.js';
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

  constructor(
    private readonly config: AgentCaConfig,
    rootCertPem: Buffer,
    private readonly log: Logger,
  ) {
    this.address = config.address;
    this.client = this.connect(rootCertPem);
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

  /** The mesh root changed (CA root rotation): new connections verify against the new bundle. */
  updateRootCertificate(rootCertPem: Buffer): void {
    const old = this.client;
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
          if (error) reject(new CaCallError(error.code, error.details || error.message));
          else resolve(response?.cert_chain ?? []);
        },
      );
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  async waitUntilReachable(signal: AbortSignal): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const client = this.client;
      const error = await new Promise<Error | undefined>((resolve) => client.waitForReady(Date.now() + 5000, resolve));
      if (!error) return;
      if (signal.aborted) throw signal.reason as Error;
      if (attempt % 5 === 0) this.log.warn({ caAddress: this.address, err: error.message }, 'CA not reachable yet; retrying');
      await sleep(backoffDelayMs(attempt), signal);
    }
  }

  close(): void {
    this.client.close();
    for (const old of this.retired) old.close();
    this.retired.clear();
  }
}
