/**
 * Fast property-based checks (fast-check, a few hundred cases each, seconds in total) of the CSR/PEM/DER parsers,
 * SPIFFE IDs, issuance and JWT handling; the same properties run for minutes in `npm run fuzz`
 * (test/fuzz/*.fuzz.ts). The properties themselves are in test/fuzz/properties.ts.
 */
import { registerIssuanceProperties, registerJwtProperties, registerParserProperties } from './fuzz/properties.js';

const budget = { numRuns: 200, testTimeoutMs: 30_000 };

registerParserProperties(budget);
registerIssuanceProperties({ ...budget, numRuns: 150 });
registerJwtProperties({ ...budget, numRuns: 150 });
