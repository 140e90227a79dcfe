/**
 * A start-up and reload check of the material: a signing certificate that names itself a CA of another trust domain
 * (`spiffe://<td>` in its URI SANs, as X.509-SVID advises and `meshca cacerts --trust-domain` writes) was most
 * likely made for another mesh or cluster, or with the wrong `--trust-domain`. The CA still signs with it (the
 * leaves are correct, and Istio's own intermediates carry other SANs), but says so once per certificate, with the
 * fix.
 */
import type { SignerStatus } from '../ca/index.js';
import type { Logger } from '../log.js';
import { parseSpiffeId } from '../pki/index.js';

/** The trust domains of the signing certificate's SPIFFE IDs that are neither `trustDomain` nor one of `aliases`. */
export function foreignSigningTrustDomains(uris: readonly string[], trustDomain: string, aliases: readonly string[]): string[] {
  const own = new Set([trustDomain, ...aliases]);
  const foreign = new Set<string>();
  for (const uri of uris) {
    let named: string;
    try {
      named = parseSpiffeId(uri).trustDomain;
    } catch {
      continue; // other URIs, and malformed SPIFFE IDs, name no trust domain
    }
    if (!own.has(named)) foreign.add(named);
  }
  return [...foreign];
}

/** Returns a function to call with the signer's status at start and after each material change. */
export function signingTrustDomainWarner(logger: Logger, trustDomain: string, aliases: readonly string[]): (status: SignerStatus) => void {
  let warnedSerial: string | undefined;
  return (status) => {
    const foreign = foreignSigningTrustDomains(status.signingCertUris ?? [], trustDomain, aliases);
    if (foreign.length === 0 || status.signingCertSerial === warnedSerial) return;
    warnedSerial = status.signingCertSerial;
    logger.warn(
      { signingCertSubject: status.signingCertSubject, signingCertSerial: status.signingCertSerial, signingCertTrustDomains: foreign, trustDomain },
      `the signing certificate is a CA of trust domain ${foreign.map((td) => `"${td}"`).join(', ')}, but this CA issues in "${trustDomain}": ` +
        `check that the CA material belongs to this mesh, or re-issue it with meshca cacerts intermediate --trust-domain ${trustDomain} ` +
        '(or add the other trust domain with --trust-domain-aliases)',
    );
  };
}
