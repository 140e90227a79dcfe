/**
 * Helpers for the CA server tests: start `meshca ca` for real, talk to it with a grpc-js client over TLS that
 * verifies the CA's serving certificate against its root, and make keys/CSRs with the OpenSSL command line
 * (independent of meshca's own PKI code).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startMeshca, type LogRecord, type MeshcaProcess } from './support/process.js';
import { IstioCaClient, objectToStruct, type JsonValue } from '../src/wire/protos.js';

export const SERVER_NAME = 'meshca.istio-system.svc';

/** Environment for a child CA: nothing from the developer's shell may change what the test sees. */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of [
    'KUBECONFIG',
    'KUBERNETES_SERVICE_HOST',
    'KUBERNETES_SERVICE_PORT',
    'JWT_RULE',
    'TOKEN_AUDIENCES',
    'TRUST_DOMAIN',
    'CLUSTER_ID',
    'CA_TRUSTED_NODE_ACCOUNTS',
    'DEFAULT_WORKLOAD_CERT_TTL',
    'MAX_WORKLOAD_CERT_TTL',
    'ISTIOD_CUSTOM_HOST',
    'POD_NAMESPACE',
    'MESHCA_CA_SOURCE',
    'ROOT_CA_DIR',
  ]) {
    delete env[name];
  }
  return { ...env, ...extra };
}

export interface RunningCa {
  proc: MeshcaProcess;
  ready: LogRecord;
  grpcAddress: string;
  monitoringUrl: string;
  rootPem: string;
  stateDir: string;
}

/** Starts `meshca ca` on ephemeral ports with an EC P-256 self-signed root in `stateDir`; waits for "CA server ready". */
export async function startCa(stateDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunningCa> {
  const proc = startMeshca(
    ['ca', '--grpc-addr', '127.0.0.1:0', '--monitoring-addr', '127.0.0.1:0', '--state-dir', stateDir, '--ca-key-type', 'ec-p256', ...args],
    { env: cleanEnv(env) },
  );
  let ready: LogRecord;
  try {
    ready = await proc.waitForLog(/^CA server ready$/, 30_000);
  } catch (error) {
    await proc.stop('SIGKILL');
    throw error;
  }
  return {
    proc,
    ready,
    grpcAddress: String(ready.grpcAddress),
    monitoringUrl: `http://${String(ready.monitoringAddress)}`,
    rootPem: readFileSync(path.join(stateDir, 'root-cert.pem'), 'utf8'),
    stateDir,
  };
}

/** Waits until the process has logged a record matching `predicate` (log lines may trail the gRPC response). */
export async function waitForRecord(proc: MeshcaProcess, predicate: (record: LogRecord) => boolean, timeoutMs = 5000): Promise<LogRecord> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = proc.records.find(predicate);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no matching log record; last lines:\n${proc.lines.slice(-10).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export function caClient(address: string, rootPem: string, clientCert?: { keyPem: string; certChainPem: string }, serverName = SERVER_NAME): IstioCaClient {
  const credentials = clientCert
    ? grpc.credentials.createSsl(Buffer.from(rootPem), Buffer.from(clientCert.keyPem), Buffer.from(clientCert.certChainPem))
    : grpc.credentials.createSsl(Buffer.from(rootPem));
  return new IstioCaClient(address, credentials, {
    'grpc.ssl_target_name_override': serverName,
    'grpc.default_authority': serverName,
  });
}

export type CallResult = { ok: true; chain: string[] } | { ok: false; code: grpc.status; details: string };

export interface CallOptions {
  csr: string;
  validitySeconds?: number;
  token?: string;
  headers?: Record<string, string>;
  metadata?: Record<string, JsonValue>;
}

/** One CreateCertificate call; resolves with the chain or the gRPC status (never rejects on a status). */
export function createCertificate(client: IstioCaClient, options: CallOptions): Promise<CallResult> {
  const md = new grpc.Metadata();
  if (options.token !== undefined) md.set('authorization', `Bearer ${options.token}`);
  for (const [key, value] of Object.entries(options.headers ?? {})) md.set(key, value);
  return new Promise((resolve) => {
    client.CreateCertificate(
      {
        csr: options.csr,
        validity_duration: String(options.validitySeconds ?? 0),
        ...(options.metadata ? { metadata: objectToStruct(options.metadata) } : {}),
      },
      md,
      { deadline: Date.now() + 20_000 },
      (error, response) => {
        if (error) resolve({ ok: false, code: error.code, details: error.details });
        else resolve({ ok: true, chain: response!.cert_chain });
      },
    );
  });
}

export interface KeyAndCsr {
  keyPem: string;
  csrPem: string;
}

/** A key and CSR made by OpenSSL the way istio-agent makes them: empty-ish subject, critical URI SAN. */
export function opensslKeyAndCsr(
  dir: string,
  name: string,
  options: { spiffeId?: string; keyType?: 'ec' | 'rsa'; requestCa?: boolean } = {},
): KeyAndCsr {
  const keyFile = path.join(dir, `${name}.key.pem`);
  const csrFile = path.join(dir, `${name}.csr.pem`);
  if (options.keyType === 'rsa') execFileSync('openssl', ['genrsa', '-out', keyFile, '2048'], { stdio: 'pipe' });
  else execFileSync('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyFile], { stdio: 'pipe' });
  const args = ['req', '-new', '-key', keyFile, '-out', csrFile, '-subj', '/O=meshca-test'];
  if (options.spiffeId) args.push('-addext', `subjectAltName=critical,URI:${options.spiffeId}`);
  if (options.requestCa) args.push('-addext', 'basicConstraints=critical,CA:TRUE');
  execFileSync('openssl', args, { stdio: 'pipe' });
  return { keyPem: readFileSync(keyFile, 'utf8'), csrPem: readFileSync(csrFile, 'utf8') };
}

/** `openssl x509` facts about a PEM certificate. */
export function opensslFacts(certPem: string): { text: string; notBefore: Date; notAfter: Date; publicKey: string } {
  const text = execFileSync('openssl', ['x509', '-noout', '-text'], { input: certPem, encoding: 'utf8' });
  const dates = execFileSync('openssl', ['x509', '-noout', '-startdate', '-enddate'], { input: certPem, encoding: 'utf8' });
  const notBefore = new Date(/notBefore=(.+)/.exec(dates)![1]!);
  const notAfter = new Date(/notAfter=(.+)/.exec(dates)![1]!);
  const publicKey = execFileSync('openssl', ['x509', '-noout', '-pubkey'], { input: certPem, encoding: 'utf8' });
  return { text, notBefore, notAfter, publicKey };
}

export function opensslPublicKeyOfKey(keyPem: string): string {
  return execFileSync('openssl', ['pkey', '-pubout'], { input: keyPem, encoding: 'utf8' });
}

export { metricValue } from './support/metrics.js';

export async function getText(url: string): Promise<{ status: number; body: string }> {
  const response = await fetch(url);
  return { status: response.status, body: await response.text() };
}

export function writeFile(dir: string, name: string, content: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, content);
  return file;
}
