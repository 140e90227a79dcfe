/**
 * `node --import tsx bench/profile-core.ts`: CPU microseconds per step of the signing hot path, one thread.
 * CPU time (not wall time), best of several rounds, so that other load on a shared machine disturbs it less;
 * this is what bench/NOTES.md's before/after figures come from.
 */
import { createPublicKey, sign, verify } from 'node:crypto';
import { LocalSigner } from '../src/ca/local-signer.js';
import { children, readSingle } from '../src/pki/der.js';
import { csrPublicKey } from '../src/pki/csr.js';
import { certificateToPem, parseCsr, verifyCsr, WorkloadId } from '../src/pki/index.js';
import { authorityFromPems, DEFAULT_TTL_SECONDS, makeCaPems, makeWorkloadCsrs, type CaKind } from './fixtures.js';

const ROUNDS = Number(process.env.PROFILE_ROUNDS ?? 5);
const ROUND_MS = 200;

async function cpuMicros(step: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < 50; i++) await step(i);
  let best = Infinity;
  let i = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const wallEnd = performance.now() + ROUND_MS;
    const before = process.cpuUsage();
    let count = 0;
    do {
      for (let batch = 0; batch < 8; batch++, count++) await step(i++);
    } while (performance.now() < wallEnd);
    const used = process.cpuUsage(before);
    best = Math.min(best, (used.user + used.system) / count);
  }
  return best;
}

async function profile(kind: CaKind): Promise<void> {
  const pems = await makeCaPems(kind);
  const csrs = await makeWorkloadCsrs(kind, { count: 256, workloads: 100, distinctKeys: kind === 'rsa' ? 4 : 256 });
  const authority = authorityFromPems(pems);
  const signer = authority.signer as LocalSigner;
  const issuer = signer.current().issuer;
  const parsed = csrs.map((c) => parseCsr(c.csrPem));
  const keys = parsed.map((p) => csrPublicKey(p));
  const spkiKeys = parsed.map((p) => createPublicKey({ key: p.spkiDer, format: 'der', type: 'spki' }));
  const ids = csrs.map((c) => WorkloadId.parse(c.identity));
  const pick = <T>(list: readonly T[], i: number): T => list[i % list.length]!;
  const request = (i: number) => ({ spkiDer: pick(parsed, i).spkiDer, uris: [pick(csrs, i).identity], ttlSeconds: DEFAULT_TTL_SECONDS });
  const leaf = issuer.issue(request(0)).der;
  const tbs = children(readSingle(leaf, 'certificate'))[0]!.raw;
  const rows: [string, number][] = [
    ['parseCsr', await cpuMicros((i) => parseCsr(pick(csrs, i).csrPem))],
    ['csrPublicKey (import)', await cpuMicros((i) => csrPublicKey(pick(parsed, i)))],
    ['  SPKI DER import', await cpuMicros((i) => createPublicKey({ key: pick(parsed, i).spkiDer, format: 'der', type: 'spki' }))],
    ['verify, imported key', await cpuMicros((i) => verify('sha256', pick(parsed, i).info, pick(keys, i), pick(parsed, i).signature))],
    ['verify, SPKI key', await cpuMicros((i) => verify('sha256', pick(parsed, i).info, pick(spkiKeys, i), pick(parsed, i).signature))],
    ['verifyCsr (import + verify)', await cpuMicros((i) => verifyCsr(pick(parsed, i)))],
    ['issuer.issue (build + sign)', await cpuMicros((i) => issuer.issue(request(i)))],
    ['  crypto.sign of the TBS', await cpuMicros(() => sign('sha256', tbs, issuer.privateKey))],
    ['certificateToPem', await cpuMicros(() => certificateToPem(leaf))],
    ['signer.sign', await cpuMicros((i) => signer.sign({ csrPem: pick(csrs, i).csrPem, ...request(i) }))],
    ['authority.issue (all)', await cpuMicros((i) => authority.issue({ csrPem: pick(csrs, i).csrPem, identity: pick(ids, i), requestedTtlSeconds: 0 }))],
  ];
  console.log(`\n${kind === 'rsa' ? 'RSA-2048' : 'P-256'} CA, ${kind === 'rsa' ? 'RSA-2048' : 'P-256'} CSRs: CPU us per call (best of ${ROUNDS})`);
  for (const [name, micros] of rows) console.log(`  ${name.padEnd(30)} ${micros.toFixed(1).padStart(7)}`);
  const all = rows[rows.length - 1]![1];
  console.log(`  => ${Math.round(1e6 / all)} certs per CPU second`);
}

const kinds = (process.argv[2]?.split(',') ?? ['rsa', 'ec']) as CaKind[];
for (const kind of kinds) await profile(kind);
