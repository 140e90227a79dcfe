/**
 * How fast a PKCS#11 token signs through Pkcs11Key, against node:crypto with an in-memory key of the same type,
 * and how long the event loop waits meanwhile. A fresh SoftHSM2 token in a temp dir (as the tests make it).
 *   node --import tsx bench/pkcs11-sign.ts [seconds per row, default 2]
 * Rows: one signature at a time (latency-bound), 4 in flight over 4 sessions (libuv's default thread pool), and
 * node:crypto's sign() in a loop. "event-loop delay p99": how late a 1 ms timer ran while the row ran (node:crypto
 * signs on the event loop itself, in runs of 16 between yields here).
 */
import { createHash, sign, type KeyObject } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { generatePkcs11KeyPair } from '../src/ca/sources/pkcs11/keygen.js';
import { openPkcs11Key, type Pkcs11Key } from '../src/ca/sources/pkcs11/pkcs11-key.js';
import { initSoftHsmToken } from '../test/support/softhsm.js';
import { generateKeyPairFor } from '../src/pki/index.js';

const seconds = Number(process.argv[2] ?? 2);
const tbs = createHash('sha512').update('a TBSCertificate stand-in').digest().subarray(0, 48);
const data = Buffer.concat(Array.from({ length: 12 }, () => tbs)); // ~600 bytes, a leaf's TBS size

interface Row {
  row: string;
  opsPerSecond: number;
  loopP99Ms: number;
}

async function measure(row: string, inFlight: number, one: () => Promise<unknown> | unknown): Promise<Row> {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  histogram.enable();
  const until = performance.now() + seconds * 1000;
  let done = 0;
  const lane = async (): Promise<void> => {
    while (performance.now() < until) {
      await one();
      done++;
      // A synchronous signer would never yield: give the timer its turn so the histogram sees the stall.
      if (done % 16 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: inFlight }, lane));
  const elapsed = (performance.now() - started) / 1000;
  histogram.disable();
  return { row, opsPerSecond: Math.round(done / elapsed), loopP99Ms: Math.round((histogram.percentile(99) / 1e6) * 10) / 10 };
}

const token = initSoftHsmToken('meshca-bench');
const env = { MESHCA_BENCH_PIN: token.pin };
const rows: Row[] = [];
try {
  for (const [spec, label, memory] of [
    ['ec-p256', 'P-256', generateKeyPairFor('ec-p256').privateKey],
    ['rsa-2048', 'RSA-2048', generateKeyPairFor('rsa-2048').privateKey],
  ] as const satisfies readonly (readonly [string, string, KeyObject])[]) {
    const where = { modulePath: token.module, tokenLabel: token.label, pinEnv: 'MESHCA_BENCH_PIN', keyLabel: label };
    await generatePkcs11KeyPair({ ...where, keyIdHex: spec === 'ec-p256' ? '01' : '02', spec }, env);
    const key: Pkcs11Key = await openPkcs11Key({ ...where, maxSessions: 4 }, env);
    try {
      rows.push(await measure(`${label} SoftHSM2, 1 in flight`, 1, () => key.sign('sha256', data)));
      rows.push(await measure(`${label} SoftHSM2, 4 in flight`, 4, () => key.sign('sha256', data)));
      rows.push(await measure(`${label} node:crypto in memory`, 1, () => sign('sha256', data, memory)));
    } finally {
      key.close();
    }
  }
} finally {
  token.remove();
}
console.log(`${seconds} s per row, ${data.length}-byte message, ${process.version}`);
for (const { row, opsPerSecond, loopP99Ms } of rows) console.log(`${row.padEnd(32)} ${String(opsPerSecond).padStart(7)} signatures/s   event-loop delay p99 ${loopP99Ms} ms`);
