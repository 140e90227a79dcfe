/** The narrow interface the identity cache needs from a CA, whatever carries the request (gRPC in production). */

export interface CertificateRequest {
  csrPem: string;
  /** The workload's JWT; undefined sends no authorization header. */
  token: string | undefined;
  ttlSeconds: number;
}

export interface CaClient {
  /** For logs and error messages. */
  readonly address: string;
  /** One attempt. Resolves with the PEM chain (leaf first, root bundle last); rejects with a CaFailure. */
  createCertificate(request: CertificateRequest, signal?: AbortSignal): Promise<string[]>;
  /** Resolves once a connection to the CA succeeded. */
  waitUntilReachable(signal: AbortSignal): Promise<void>;
  close(): void;
}
