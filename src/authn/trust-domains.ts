/**
 * The trust domains a CA accepts identities in: its own, and its aliases (Istio's meshConfig.trustDomainAliases),
 * the former trust domains of a mesh being migrated. An identity proven in an alias is accepted as the same
 * namespace and service account in the current trust domain (`inTrustDomain` in pki/spiffe.ts); any other trust
 * domain is refused with `foreignTrustDomain`'s reason.
 */
import { inTrustDomain, validateTrustDomain, type AcceptedIdentity, type WorkloadId } from '../pki/index.js';

/** The flag (and variable) that lists a CA's trust-domain aliases, named in refusals as the fix. */
export const TRUST_DOMAIN_ALIASES_SETTING = '--trust-domain-aliases (MESHCA_TRUST_DOMAIN_ALIASES)';

/** Why `alias` cannot be a trust-domain alias of `current` (an invalid trust domain, or `current` itself); undefined when it can. */
export function aliasProblem(alias: string, current: string): string | undefined {
  try {
    validateTrustDomain(alias);
  } catch (error) {
    return (error as Error).message;
  }
  // SPIFFE allows empty labels, but no mesh's trust domain has one (Istio's mesh config validation refuses them):
  // "old..td" is a typo, and an alias nobody can match would leave the migration silently broken.
  if (alias.split('.').includes('')) return `"${alias}" has an empty label: two dots in a row, or a dot at either end`;
  return alias === current ? `"${alias}" is the current trust domain, not a former one: remove it from the list` : undefined;
}

export class TrustDomains {
  readonly current: string;
  readonly aliases: readonly string[];

  /** Throws PkiError ERR_SPIFFE_ID for an invalid trust domain or alias. */
  constructor(current: string, aliases: readonly string[] = []) {
    this.current = validateTrustDomain(current);
    this.aliases = Object.freeze(aliases.map(validateTrustDomain).filter((alias) => alias !== current));
  }

  /** The identity as this CA issues it (moved from an alias to the current trust domain), or undefined when foreign. */
  accept(identity: WorkloadId): AcceptedIdentity | undefined {
    return inTrustDomain(identity, this.current, this.aliases);
  }

  /**
   * Why `identity`'s trust domain is refused, after `what` ("client certificate is for trust domain "x"; ..."):
   * what this CA accepts, and the fix when the domain is the mesh's former one.
   */
  foreignTrustDomain(what: string, identity: WorkloadId): string {
    const aliases = this.aliases.length > 0 ? ` (or its aliases ${this.aliases.map((a) => `"${a}"`).join(', ')})` : '';
    return (
      `${what} is for trust domain "${identity.trustDomain}"; this CA accepts only spiffe://${this.current}/ns/<namespace>/sa/<service account>${aliases}; ` +
      `if "${identity.trustDomain}" is this mesh's former trust domain, add it to ${TRUST_DOMAIN_ALIASES_SETTING}`
    );
  }
}
