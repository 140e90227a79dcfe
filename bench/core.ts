/**
 * Part 2, the signing core in-process: CSR PEM in -> parsed -> verified -> leaf built -> signed -> PEM chain out,
 * through `CertificateAuthority.issue` with a `LocalSigner`, on one thread and on one worker thread per core.
 */
import { sign } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { CertificateAuthority } from '../src/ca/authority.js';
import { LocalSigner } from '../src/ca/local-signer.js';
import { children, readSingle } from '../src/pki/der.js';
import { certificateToPem, parseCsr, verifyCsr, WorkloadId } from '../src/pki/index.js';
import { assertIssuedChain } from './check.js';
import { authorityFromPems, CA_KINDS, DEFAULT_TTL_SECONDS, makeCaPems, makeWorkloadCsrs, type CaKind, type CaPems, type WorkloadCsr } from './fixtures.js';
import { nextMessage, startTsWorker } from './workers.js';

export interface CoreRun {
  threads: number;
  certs: number;
  seconds: number;
  certsPerSecond: number;
}

/** Microseconds per certificate spent in each step, measured one step at a time on one thread. */
export interface CoreSteps {
  parseCsr: number;
  verifyCsr: number;
  buildAndSign: number;
  /** `crypto.sign` of a TBSCertificate alone: the part OpenSSL's rate bounds. */
  signOnly: number;
  pemChain: number;
  /** The whole `CertificateAuthority.issue`. */
  issue: number;
}

export interface CoreKindResult {
  kind: CaKind;
  label: string;
  single: CoreRun;
  all: CoreRun;
  steps: CoreSteps;
}

export interface IssueLoopResult {
  certs: number;
  seconds: number;
}

/** Issues certificates back to back for `seconds`, cycling through `csrs`. Shared by the main thread and workers. */
export async function issueLoop(authority: CertificateAuthority, csrs: readonly WorkloadCsr[], seconds: number): Promise<IssueLoopResult> {
  // Parsed once, as an authenticator would: CSRs may have crossed to a worker thread as plain data.
  const ids = csrs.map((csr) => WorkloadId.parse(csr.identity));
  const start = performance.now();
  const deadline = start + seconds * 1000;
  let certs = 0;
  do {
    // Check the clock every few certificates: performance.now() is cheap but not free.
    for (let batch = 0; batch < 16; batch++) {
      const csr = csrs[certs % csrs.length]!;
      await authority.issue({ csrPem: csr.csrPem, identity: ids[certs % csrs.length]!, requestedTtlSeconds: DEFAULT_TTL_SECONDS });
      certs++;
    }
  } while (performance.now() < deadline);
  return { certs, seconds: (performance.now() - start) / 1000 };
}

export interface CoreWorkerData {
  pems: CaPems;
  csrs: WorkloadCsr[];
  seconds: number;
}

export type CoreWorkerMessage = { type: 'ready' } | ({ type: 'done' } & IssueLoopResult);

async function timeStep(seconds: number, step: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < 20; i++) await step(i);
  const start = performance.now();
  const deadline = start + seconds * 1000;
  let count = 0;
  do {
    for (let batch = 0; batch < 8; batch++) await step(count++);
  } while (performance.now() < deadline);
  return ((performance.now() - start) * 1000) / count;
}

async function measureSteps(authority: CertificateAuthority, csrs: readonly WorkloadCsr[], seconds: number): Promise<CoreSteps> {
  const signer = authority.signer;
  if (!(signer instanceof LocalSigner)) throw new Error('the core benchmark needs a LocalSigner');
  const issuer = signer.current().issuer;
  const parsed = csrs.map((c) => parseCsr(c.csrPem));
  const ids = csrs.map((c) => WorkloadId.parse(c.identity));
  const request = (i: number) => ({ spkiDer: parsed[i % parsed.length]!.spkiDer, uris: [csrs[i % csrs.length]!.identity], ttlSeconds: DEFAULT_TTL_SECONDS });
  const leafDer = issuer.issue(request(0)).der;
  const tbs = children(readSingle(leafDer, 'certificate'))[0]!.raw;
  const hash = 'sha256';
  return {
    parseCsr: await timeStep(seconds, (i) => parseCsr(csrs[i % csrs.length]!.csrPem)),
    verifyCsr: await timeStep(seconds, (i) => verifyCsr(parsed[i % parsed.length]!)),
    buildAndSign: await timeStep(seconds, (i) => issuer.issue(request(i))),
    signOnly: await timeStep(seconds, () => sign(hash, tbs, issuer.privateKey)),
    pemChain: await timeStep(seconds, () => certificateToPem(leafDer)),
    issue: await timeStep(seconds, (i) =>
      authority.issue({ csrPem: csrs[i % csrs.length]!.csrPem, identity: ids[i % ids.length]!, requestedTtlSeconds: DEFAULT_TTL_SECONDS }),
    ),
  };
}

async function runAllCores(pems: CaPems, csrs: WorkloadCsr[], seconds: number, threads: number): Promise<CoreRun> {
  const workers = Array.from({ length: threads }, () => startTsWorker(new URL('./core-worker.ts', import.meta.url), { pems, csrs, seconds } satisfies CoreWorkerData));
  try {
    const ready = await Promise.all(workers.map((w) => nextMessage<CoreWorkerMessage>(w)));
    if (ready.some((m) => m.type !== 'ready')) throw new Error('a core worker did not get ready');
    // All workers start together so that they really compete for the cores.
    const results = workers.map((w) => nextMessage<CoreWorkerMessage>(w));
    for (const worker of workers) worker.postMessage('go');
    let certs = 0;
    let certsPerSecond = 0;
    let longest = 0;
    for (const message of await Promise.all(results)) {
      if (message.type !== 'done') throw new Error('a core worker answered out of turn');
      certs += message.certs;
      certsPerSecond += message.certs / message.seconds;
      longest = Math.max(longest, message.seconds);
    }
    return { threads, certs, seconds: longest, certsPerSecond };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

export interface CoreOptions {
  seconds: number;
  stepSeconds: number;
  threads?: number;
  /** How many distinct RSA workload keys to make (0.26 s of CPU each). */
  rsaKeys: number;
  log: (line: string) => void;
}

export async function runCoreBench(kind: CaKind, options: CoreOptions): Promise<CoreKindResult> {
  const info = CA_KINDS[kind];
  const threads = options.threads ?? availableParallelism();
  const pems = await makeCaPems(kind);
  const csrs = await makeWorkloadCsrs(kind, { count: 256, workloads: 100, distinctKeys: kind === 'rsa' ? options.rsaKeys : 256 });
  const authority = authorityFromPems(pems);
  const sample = await authority.issue({ csrPem: csrs[0]!.csrPem, identity: WorkloadId.parse(csrs[0]!.identity), requestedTtlSeconds: 0 });
  assertIssuedChain(sample.chain, csrs[0]!.identity, csrs[0]!.csrPem);

  options.log(`core ${info.label}: step timings`);
  const steps = await measureSteps(authority, csrs, options.stepSeconds);
  options.log(`core ${info.label}: 1 thread for ${options.seconds}s`);
  await issueLoop(authority, csrs, Math.min(0.3, options.seconds / 4));
  const loop = await issueLoop(authority, csrs, options.seconds);
  const single: CoreRun = { threads: 1, certs: loop.certs, seconds: loop.seconds, certsPerSecond: loop.certs / loop.seconds };
  options.log(`core ${info.label}: ${threads} worker threads for ${options.seconds}s`);
  const all = await runAllCores(pems, csrs, options.seconds, threads);
  return { kind, label: info.label, single, all, steps };
}
