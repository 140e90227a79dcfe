/**
 * Long differential fuzz of CSR acceptance (see test/support/csr-differential.ts): MESHCA_FUZZ_CSR_INPUTS mutants
 * (default 100000); prints the input count and the number of wrong certificates, which must be zero.
 */
import assert from 'node:assert/strict';
import { after, it } from 'node:test';
import { createDifferential, formatStats, runDifferential } from '../support/csr-differential.js';

const inputs = Number(process.env.MESHCA_FUZZ_CSR_INPUTS ?? '100000');
if (!(inputs > 0)) throw new Error(`MESHCA_FUZZ_CSR_INPUTS must be a positive number, got "${process.env.MESHCA_FUZZ_CSR_INPUTS}"`);

const differential = createDifferential({ opensslSamples: 500, refusalSamples: 2000 });
after(() => differential.cleanup());

it(`CSR differential: ${inputs} mutants, every accepted one independently valid and certified with exactly its key`, { timeout: inputs * 20 + 120_000 }, async () => {
  const stats = await runDifferential(differential, inputs, 1206);
  console.log(`csr differential (fuzz): ${formatStats(stats)}`);
  for (const example of stats.stricterExamples) console.log(`  stricter than the independent checker: ${example}`);
  assert.equal(stats.inputs, inputs);
  assert.equal(stats.wrongCertificates, 0);
  assert.ok(stats.accepted > 0);
});
