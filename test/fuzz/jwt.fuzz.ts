/** Long fuzz run of bearer-token handling and JWT verification. */
import { longBudget } from './budget.js';
import { registerJwtProperties } from './properties.js';

registerJwtProperties(longBudget);
