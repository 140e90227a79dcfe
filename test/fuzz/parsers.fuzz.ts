/** Long fuzz run of the PEM, DER, CSR, certificate and SPIFFE ID parsers (see test/fuzz/properties.ts). */
import { longBudget } from './budget.js';
import { registerParserProperties } from './properties.js';

registerParserProperties(longBudget);
