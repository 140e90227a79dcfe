/**
 * Part 6: the CA key in a PKCS#11 token (SoftHSM2). Three `meshca ca` runs of the same P-256 workload load, same
 * concurrency, in this one run: the in-memory self-signed root (the reference), `--ca-source pkcs11` in
 * intermediate mode (the token signs one intermediate at start), and in direct mode (the token signs every
 * workload certificate). The token's time per signature comes from the CA's own
 * meshca_pkcs11_sign_duration_seconds; its share is that time over the server's CPU per certificate (SoftHSM2
 * signs on the server's own thread pool, so its work is inside the server's CPU).
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { KubeStandin } from '../test/standins/kube.js';
import { metricValue } from '../test/support/metrics.js';
import { initSoftHsmToken, makeTokenRoot } from '../test/support/softhsm.js';
import { assertIssuedChain } from './check.js';
import { loadgenAgainst, makeWorkloads, startCaProcess, WORKLOADS, type CaProcess } from './e2e.js';
import { PartUnavailable } from './report.js';

export type Pkcs11RowMode = 'in-memory' | 'pkcs11 intermediate' | 'pkcs11 direct';

export interface Pkcs11Row {
  mode: Pkcs11RowMode;
  certsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  serverCpuMsPerCert: number;
  errors: number;
  /** Signatures the token made during the measured window (null without the metric). */
  tokenSignatures: number | null;
  tokenMsPerSignature: number | null;
  /** Token time per certificate over server CPU per certificate. */
  tokenShareOfServerCpu: number | null;
}

export interface Pkcs11Result {
  concurrency: number;
  workers: number;
  rows: Pkcs11Row[];
  /** pkcs11 intermediate certs/s over in-memory certs/s. */
  intermediateRatio: number;
}

export interface Pkcs11BenchOptions {
  kube: KubeStandin;
  dir: string;
  concurrency: number;
  warmupSeconds: number;
  seconds: number;
  workers: number;
  log: (line: string) => void;
}

const TOKEN_LABEL = 'meshca-bench';
const KEY_LABEL = 'bench-root';

async function scrape(server: CaProcess): Promise<{ count: number; sum: number } | null> {
  if (!server.monitoringAddress) return null;
  const text = await (await fetch(`http://${server.monitoringAddress}/metrics`)).text();
  if (!text.includes('meshca_pkcs11_sign_duration_seconds')) return null;
  return {
    count: metricValue(text, 'meshca_pkcs11_sign_duration_seconds_count', { result: 'ok' }),
    sum: metricValue(text, 'meshca_pkcs11_sign_duration_seconds_sum', { result: 'ok' }),
  };
}

export async function runPkcs11Bench(options: Pkcs11BenchOptions): Promise<Pkcs11Result> {
  let token: ReturnType<typeof initSoftHsmToken>;
  try {
    token = initSoftHsmToken(TOKEN_LABEL);
  } catch (error) {
    throw new PartUnavailable(`SoftHSM2 is not available: ${(error as Error).message.split('\n')[0]}`);
  }
  try {
    const rootPem = await makeTokenRoot(token, KEY_LABEL, 'ec-p256');
    const rootFile = path.join(options.dir, 'pkcs11-root-cert.pem');
    writeFileSync(rootFile, rootPem);
    const workloads = await makeWorkloads(options.kube, 'ec', { workloads: WORKLOADS, csrs: 512, rsaKeys: 1 });
    const rows: Pkcs11Row[] = [];
    for (const mode of ['in-memory', 'pkcs11 intermediate', 'pkcs11 direct'] as const) {
      const keySource =
        mode === 'in-memory'
          ? undefined
          : {
              args: [
                '--ca-source', 'pkcs11',
                '--pkcs11-module', token.module,
                '--pkcs11-token-label', token.label,
                '--pkcs11-key-label', KEY_LABEL,
                '--pkcs11-cert', rootFile,
                '--pkcs11-mode', mode === 'pkcs11 direct' ? 'direct' : 'intermediate',
              ],
              env: { SOFTHSM2_CONF: token.conf, MESHCA_PKCS11_PIN: token.pin },
              rootCertFile: rootFile,
            };
      const server = await startCaProcess({ kind: 'ec', kubeconfigPath: options.kube.kubeconfigPath, dir: options.dir, workers: options.workers, ...(keySource ? { keySource } : {}) });
      const loadgen = await loadgenAgainst(server, workloads, options.dir);
      try {
        // Every workload's token reviewed and cached first, as in part 3.
        await loadgen.run({ concurrency: 16, warmupSeconds: 0, count: 2 * WORKLOADS });
        options.log(`pkcs11: ${mode}, P-256, concurrency ${options.concurrency} for ${options.seconds}s`);
        const before = await scrape(server);
        const result = await loadgen.run({ concurrency: options.concurrency, warmupSeconds: options.warmupSeconds, seconds: options.seconds });
        const after = await scrape(server);
        if (result.ok === 0) throw new Error(`${mode}: no certificate was issued: ${result.errorSamples.join('; ')}`);
        if (result.sample) {
          const csr = workloads.csrs[result.sample.requestIndex]!;
          assertIssuedChain(result.sample.chain, csr.identity, csr.csrPem);
        }
        const serverCpuMsPerCert = (result.serverCpuSeconds / result.ok) * 1000;
        // The window includes the warm-up; the token's count over it is set against the certificates of the same window.
        const signatures = before && after ? after.count - before.count : null;
        const tokenMs = before && after && signatures ? ((after.sum - before.sum) / signatures) * 1000 : null;
        rows.push({
          mode,
          certsPerSecond: result.certsPerSecond,
          p50Ms: result.p50Ms,
          p99Ms: result.p99Ms,
          serverCpuMsPerCert,
          errors: result.errors,
          tokenSignatures: signatures,
          tokenMsPerSignature: tokenMs,
          tokenShareOfServerCpu: mode === 'pkcs11 direct' && tokenMs !== null ? tokenMs / serverCpuMsPerCert : null,
        });
      } finally {
        await loadgen.close();
        await server.stop();
      }
    }
    const memory = rows.find((r) => r.mode === 'in-memory')!;
    const intermediate = rows.find((r) => r.mode === 'pkcs11 intermediate')!;
    return { concurrency: options.concurrency, workers: options.workers, rows, intermediateRatio: intermediate.certsPerSecond / memory.certsPerSecond };
  } finally {
    token.remove();
  }
}
