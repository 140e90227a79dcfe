/** Long fuzz run of issuance (SANs are always the caller's) and of the final issued-chain check. */
import { longBudget } from './budget.js';
import { registerIssuanceProperties } from './properties.js';

registerIssuanceProperties(longBudget);
