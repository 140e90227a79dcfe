/**
 * Differential fuzz of CSR acceptance (quick run, fixed seed): every CSR meshca issues for is accepted byte for
 * byte by @peculiar/asn1-csr, verifies over the CertificationRequestInfo that parser located, passes
 * `openssl req -verify` (a sample), and its leaf certifies exactly the CSR's canonical key. The long run is
 * test/fuzz/csr-differential.fuzz.ts; the logic is in test/support/csr-differential.ts.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { buildMutant, createDifferential, formatStats, independentCheck, runDifferential } from './support/csr-differential.js';

const RUNS = 2000;
const differential = createDifferential({ opensslSamples: 50, refusalSamples: 200 });
after(() => differential.cleanup());

describe('CSR differential fuzz', () => {
  it('the unmutated seeds are accepted by meshca and by the independent checker', async () => {
    for (let seed = 0; seed < differential.seeds.length; seed++) {
      const { der } = buildMutant(differential.seeds, { seed, ops: [], resign: false, bytes: [] });
      assert.ok(independentCheck(der).ok, `seed ${differential.seeds[seed]!.name} fails the independent checker`);
      const before = differential.stats.accepted;
      await differential.check({ seed, ops: [], resign: false, bytes: [] });
      assert.equal(differential.stats.accepted, before + 1, `seed ${differential.seeds[seed]!.name} was refused`);
    }
  });

  it(`${RUNS} mutants: whatever meshca accepts, the independent checker accepts, and the leaf carries exactly the CSR key`, { timeout: 120_000 }, async () => {
    const stats = await runDifferential(differential, RUNS, 20261206);
    console.log(`csr differential: ${formatStats(stats)}`);
    for (const example of stats.stricterExamples) console.log(`  stricter than the independent checker: ${example}`);
    assert.ok(stats.inputs >= RUNS);
    assert.equal(stats.wrongCertificates, 0);
    // Not vacuous: some mutants (re-signed harmless edits) are accepted and checked, most are refused.
    assert.ok(stats.accepted >= 20, `only ${stats.accepted} mutants were accepted`);
    assert.ok(stats.opensslChecked >= 20, `openssl checked only ${stats.opensslChecked}`);
    assert.ok(stats.refused > stats.inputs / 2);
  });
});
