/**
 * Benchmark fixtures: CA material and pre-made workload CSRs. Everything is generated fresh in each run
 * (nothing is read from disk), so `npm run bench` works from a fresh clone.
 */
// Direct module imports: src/ca/index.js also loads every key source (Kubernetes client, Vault), which would
// cost each worker thread seconds of start-up.
import { CertificateAuthority } from '../src/ca/authority.js';
import { LocalSigner } from '../src/ca/local-signer.js';
import { buildCaMaterial } from '../src/ca/material.js';
import {
  certificatesFromPem,
  certificateToPem,
  createCaCertificate,
  createCsr,
  exportPrivateKeyPem,
  generateKeyPairForAsync,
  loadPrivateKey,
  parseCertificate,
  type KeySpec,
} from '../src/pki/index.js';

/** The servers of the transport-floor rows (bench/echo-ca.ts): grpc-js, or node:http2 with the gRPC framing by hand. */
export type EchoTransport = 'grpc-js' | 'http2';

/** The serverMode of the transport-floor rows, by the echo server's transport. */
export const TRANSPORT_FLOOR_MODES: Readonly<Record<EchoTransport, string>> = { 'grpc-js': 'transport floor', http2: 'transport floor, node:http2' };

export type CaKind = 'rsa' | 'ec';

export interface CaKindInfo {
  kind: CaKind;
  label: string;
  keySpec: KeySpec;
  /** The `openssl speed` algorithm that bounds this kind's signing rate. */
  opensslAlgorithm: 'rsa2048' | 'ecdsap256';
}

export const CA_KINDS: Record<CaKind, CaKindInfo> = {
  rsa: { kind: 'rsa', label: 'RSA-2048', keySpec: 'rsa-2048', opensslAlgorithm: 'rsa2048' },
  ec: { kind: 'ec', label: 'P-256', keySpec: 'ec-p256', opensslAlgorithm: 'ecdsap256' },
};

export const BENCH_TRUST_DOMAIN = 'cluster.local';
export const BENCH_NAMESPACE = 'bench';
export const DEFAULT_TTL_SECONDS = 86400;

/** The SPIFFE ID of bench workload number `index` (service account w<index> in namespace bench). */
export function workloadIdentity(index: number): string {
  return `spiffe://${BENCH_TRUST_DOMAIN}/ns/${BENCH_NAMESPACE}/sa/${workloadServiceAccount(index)}`;
}

export function workloadServiceAccount(index: number): string {
  return `w${index}`;
}

/** A self-signed root as PEM text (so it can be handed to worker threads and child processes). */
export interface CaPems {
  certPem: string;
  keyPem: string;
}

export async function makeCaPems(kind: CaKind): Promise<CaPems> {
  const keys = await generateKeyPairForAsync(CA_KINDS[kind].keySpec);
  const der = createCaCertificate({
    subject: { organization: BENCH_TRUST_DOMAIN },
    subjectKey: keys.privateKey,
    notAfter: new Date(Date.now() + 365 * 86400_000),
  });
  return { certPem: certificateToPem(der), keyPem: exportPrivateKeyPem(keys.privateKey) };
}

/** The CA exactly as `meshca ca` builds it for a local key: material -> LocalSigner -> CertificateAuthority. */
export function authorityFromPems(pems: CaPems): CertificateAuthority {
  const certificate = parseCertificate(certificatesFromPem(pems.certPem)[0]!);
  const material = buildCaMaterial({ signingCert: certificate, privateKey: loadPrivateKey(pems.keyPem), chain: [], roots: [certificate] });
  return new CertificateAuthority({
    signer: new LocalSigner('self-signed', material),
    defaultTtlSeconds: DEFAULT_TTL_SECONDS,
    maxTtlSeconds: 90 * 86400,
  });
}

export interface WorkloadCsr {
  /** Index of the workload (service account w<index>) this CSR belongs to. */
  workload: number;
  identity: string;
  csrPem: string;
}

/**
 * `count` CSRs for workloads 0..workloads-1 (round robin), each with the workload's SPIFFE ID as SAN like
 * istio-agent's. RSA keys cost ~0.26 s of CPU each, so at most `distinctKeys` keys are made and reused across
 * CSRs: the CA keeps no per-key state, so reuse does not flatter it.
 */
export async function makeWorkloadCsrs(kind: CaKind, options: { count: number; workloads: number; distinctKeys: number }): Promise<WorkloadCsr[]> {
  const keyCount = Math.max(1, Math.min(options.distinctKeys, options.count));
  const keys = await Promise.all(Array.from({ length: keyCount }, () => generateKeyPairForAsync(CA_KINDS[kind].keySpec)));
  return Array.from({ length: options.count }, (_, i) => {
    const workload = i % options.workloads;
    const identity = workloadIdentity(workload);
    return { workload, identity, csrPem: createCsr({ privateKey: keys[i % keyCount]!.privateKey, uris: [identity] }) };
  });
}
